"""Replication of the SQLite store to a standby, at the store's batch level.

The primary's writer thread hands every committed `Batch` to a tap
(`SQLiteStore.replicate`); `source.py` numbers and ships it to the standby,
whose `replica.py` applies it with the very code the primary ran
(`statements.execute_ops`, through a `Writer` of its own: one transaction per
batch, in order) and acknowledges the number. `gate.py` holds every
`when_durable` callback (publisher confirms, PUBACKs, RECEIPTs, declare-oks)
until the standby acknowledged its batch. `codec.py` is the sans-IO framing
of the replication port.

Nothing here knows which kinds of operations exist: a new kind of store
operation replicates as long as its parameters are plain values (None, bool,
int, float, str, bytes, tuples and lists of them).

Roles, epochs, the witness and promotion are the core's
(`moorage.broker.failover`); this package only moves batches and reports
what happened through callbacks.
"""
