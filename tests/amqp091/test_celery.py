"""A Celery worker using the broker as its `amqp://` transport runs a task end to end."""

from __future__ import annotations

from celery import Celery
from celery.contrib.testing.worker import start_worker

from tests.helpers import RunningBroker


def test_celery_task_round_trip(broker: RunningBroker) -> None:
    app = Celery("moorage_it", broker=broker.url, backend="rpc://")
    app.conf.update(
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Without AMQP heartbeats the worker's event loop has no far-off timer, so it
        # polls at most 1 s at a time and notices the end of `start_worker` promptly.
        broker_heartbeat=0,
    )

    @app.task(name="moorage_it.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False):
            result = add.delay(2, 3)
            assert result.get(timeout=10) == 5
            assert result.successful()
    finally:
        # the client side's connections: the rpc:// result consumer and the pool
        app.backend.result_consumer.stop()
        app.pool.force_close_all()
        app.close()
    assert broker.wait_until(lambda: not broker.core.connections)
