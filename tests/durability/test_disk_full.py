"""A full disk: publishers get nacks (never a confirm for what was not written),
consumers keep being served, and publishing recovers once space is back."""

from __future__ import annotations

import pika
import pika.exceptions

from tests.helpers import make_config


def _set_page_limit(store, pages: int | None):
    """Cap the database file (SQLITE_FULL past it), as a full disk would."""

    def apply(conn):
        if pages is None:
            conn.execute("PRAGMA max_page_count = 1073741823")
        else:
            count = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {count + pages}")

    return store._submit(apply)


def test_full_disk_nacks_publishers_and_keeps_consumers_served(start_broker, tmp_path):
    config = make_config(tmp_path)
    config.storage.backend = "sqlite"
    broker = start_broker(config)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = connection.channel()
    ch.queue_declare("full", durable=True)
    ch.queue_declare("readable", durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "readable", b"r%d" % i, pika.BasicProperties(delivery_mode=2))

    broker.run(_set_page_limit(broker.core.store, 2))
    big = b"x" * 64 * 1024
    nacked = 0
    for _ in range(10):
        try:
            ch.basic_publish("", "full", big, pika.BasicProperties(delivery_mode=2))
        except pika.exceptions.NackError:
            nacked += 1
    assert nacked > 0, "a write that failed must not be confirmed"

    # consumers are still served from what is stored
    consumer = connection.channel()
    got = []
    for method, _p, body in consumer.consume("readable", inactivity_timeout=3):
        if method is None:
            break
        got.append(body)
        consumer.basic_ack(method.delivery_tag)
        if len(got) == 20:
            break
    consumer.cancel()
    assert got == [b"r%d" % i for i in range(20)]

    # space comes back: publishing is confirmed again
    broker.run(_set_page_limit(broker.core.store, None))
    ok = 0
    for _ in range(5):
        try:
            ch.basic_publish("", "full", b"small", pika.BasicProperties(delivery_mode=2))
            ok += 1
        except pika.exceptions.NackError:
            pass
    assert ok >= 4
    connection.close()
