"""The witness's rules: one grant per epoch, leases, and no promotion past an ALONE primary."""

from __future__ import annotations

from moorage.broker.failover.witness import WitnessState


def report(w: WitnessState, node: str, epoch: int, now: float, mode: str = "sync") -> dict:
    return w.handle({"op": "report", "node": node, "epoch": epoch, "mode": mode}, now)


def promote(w: WitnessState, node: str, epoch: int, now: float) -> dict:
    return w.handle({"op": "promote", "node": node, "epoch": epoch}, now)


def test_a_standby_is_promoted_only_after_the_primary_lease_ran_out():
    w = WitnessState(lease=2.0)
    assert report(w, "a", 1, now=0.0)["ok"]
    assert report(w, "a", 1, now=4.0)["ok"]
    assert not promote(w, "b", 1, now=5.0)["ok"]  # heard from a recently
    granted = promote(w, "b", 1, now=6.5)
    assert granted == {"ok": True, "epoch": 2}
    # The old primary is told it is stale, with the new holder's address.
    answer = report(w, "a", 1, now=7.0)
    assert (answer["stale"], answer["holder"], answer["epoch"]) == (True, "b", 2)
    assert w.handle({"op": "alone", "node": "a", "epoch": 1}, 7.0)["stale"]
    # A repeated request of the winner (a lost answer) is granted again, not re-raised.
    assert promote(w, "b", 1, now=7.5) == {"ok": True, "epoch": 2}


def test_no_promotion_while_the_primary_confirms_alone():
    w = WitnessState(lease=1.0)
    report(w, "a", 1, now=0.0)
    assert w.handle({"op": "alone", "node": "a", "epoch": 1}, 2.5)["ok"]
    assert not promote(w, "b", 1, now=10.0)["ok"]
    report(w, "a", 1, now=11.0, mode="sync")  # the standby caught up again
    assert promote(w, "b", 1, now=20.0)["ok"]


def test_a_restarted_witness_listens_before_it_grants_anything():
    w = WitnessState(lease=1.0)
    report(w, "a", 1, now=100.0)  # a primary cut off while the witness was down
    assert not w.handle({"op": "alone", "node": "a", "epoch": 1}, 100.5)["ok"]
    report(w, "b", 2, now=101.0)  # the newer primary reports within the grace
    assert w.handle({"op": "alone", "node": "a", "epoch": 1}, 103.0)["stale"]
    assert w.handle({"op": "alone", "node": "b", "epoch": 2}, 103.0)["ok"]


def test_alone_and_promote_for_one_epoch_cannot_both_win():
    w = WitnessState(lease=1.0)
    report(w, "a", 1, now=0.0, mode="waiting")
    assert promote(w, "b", 1, now=5.0)["ok"]
    assert not w.handle({"op": "alone", "node": "a", "epoch": 1}, 5.1)["ok"]


def test_a_fresh_witness_vouches_for_nobody_and_stale_candidates_are_refused():
    w = WitnessState(lease=0.0)
    assert not promote(w, "b", 0, now=100.0)["ok"]  # never heard from a primary
    report(w, "a", 3, now=100.0)
    assert not promote(w, "b", 2, now=200.0)["ok"]  # follows an older epoch
    assert report(w, "c", 2, now=200.0)["stale"]  # an older primary
    assert w.handle({"op": "status"}, 200.0)["holder"] == "a"
    assert not w.handle({"op": "bogus"}, 200.0)["ok"]
    assert not w.handle({"op": "report", "epoch": "x"}, 200.0)["ok"]
