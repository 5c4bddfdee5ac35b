"""A Celery task that keeps failing is retried, then dead-lettered (x-dead-letter-exchange)."""

from __future__ import annotations

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Exchange, Queue

from tests.helpers import RunningBroker
from tests.queues.helpers import wait_get


def test_celery_task_retried_then_dead_lettered(broker: RunningBroker, connect) -> None:
    ch = connect().channel()
    ch.exchange_declare("celery-dlx", "direct", durable=True)
    ch.queue_declare("celery-dead", durable=True)
    ch.queue_bind("celery-dead", "celery-dlx", "dead")

    app = Celery("moorage_dlx", broker=broker.url)
    app.conf.update(
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        broker_heartbeat=0,
        task_acks_late=True,
        # a task that finally fails is rejected (requeue=False), not acked: dead-lettered
        task_acks_on_failure_or_timeout=False,
        task_default_queue="work",
        task_queues=[
            Queue(
                "work",
                Exchange("work", type="direct"),
                routing_key="work",
                queue_arguments={
                    "x-dead-letter-exchange": "celery-dlx",
                    "x-dead-letter-routing-key": "dead",
                },
            )
        ],
    )
    attempts: list[int] = []

    @app.task(name="moorage_dlx.flaky", bind=True, max_retries=2, default_retry_delay=0)
    def flaky(self, order: int) -> None:
        attempts.append(self.request.retries)
        raise self.retry(exc=RuntimeError(f"order {order} failed"), countdown=0)

    try:
        with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False):
            flaky.delay(42)
            method, props, body = wait_get(ch, "celery-dead", timeout=20)
    finally:
        app.pool.force_close_all()
        app.close()
    assert attempts == [0, 1, 2]  # the first run and two retries
    assert props.headers["task"] == "moorage_dlx.flaky"
    assert props.headers["retries"] == 2
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["queue"] == "work"
    assert method.routing_key == "dead"
    assert b"42" in body
