"""The SNS engine of one broker: registry, API, dispatcher, endpoints and alerts, wired.

`Sns(broker)` is what the AWS listener's service (`protocols.sns.service`)
and tests drive: `await start()` reads the stored topics and subscriptions
and resumes every confirmed subscription's deliveries; `handle(action,
params, caller)` answers one API call (the XML of its Result, or SnsError);
`close()` stops the deliveries (unacked messages stay queued for the next
start). The `[sns]` configuration section comes from the daemon's
configuration (`broker.extension("config")`), defaults otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from moorage.broker.broker import Broker
from moorage.broker.config import Config, SnsConfig
from moorage.protocols.sns.alerts import Alerts
from moorage.protocols.sns.api import Action, Caller, SnsApi
from moorage.protocols.sns.dispatcher import DeliveryFailed, Dispatcher
from moorage.protocols.sns.endpoints import Endpoints
from moorage.protocols.sns.model import Subscription
from moorage.protocols.sns.publishing import Publishing
from moorage.protocols.sns.registry import Registry
from moorage.protocols.sns.retry import retry_delays
from moorage.protocols.sns.wire import SnsError

log = logging.getLogger("moorage.sns")


def sns_config(broker: Broker) -> SnsConfig:
    """The `[sns]` section of the configuration the broker was started with."""
    return broker.extension("config", lambda _b: Config()).sns


class Sns:
    """SNS on one broker."""

    def __init__(self, broker: Broker, config: SnsConfig | None = None) -> None:
        self.broker = broker
        self.config = config if config is not None else sns_config(broker)
        self.registry = Registry(broker)
        self.endpoints = Endpoints(broker, self.registry, self.config)
        self.dispatcher = Dispatcher(
            broker, self.registry, self.endpoints.deliver, self.endpoints.dead_letter
        )
        self.api = SnsApi(broker, self.registry)
        self.actions: dict[str, Action] = {
            **self.api.actions(),
            **Publishing(self.api).actions(),
        }
        self.alerts = Alerts(self, self.config)
        self.registry.on_confirmed = self.dispatcher.start
        self.registry.on_removed = self.dispatcher.stop
        self.api.request_confirmation = self._request_confirmation
        self._confirmations: set[asyncio.Task[None]] = set()
        self._starting: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        """Load what the store holds and resume deliveries (once; concurrent callers wait)."""
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await self.registry.load()
        for sub in list(self.registry.subscriptions.values()):
            vhost = self.broker.find_vhost(sub.vhost)
            if vhost is None or vhost.find_exchange(sub.topic) is None:
                continue
            if sub.confirmed:
                self.registry.confirm(sub)  # the queue and binding exist: this consumes
        await self.alerts.start()

    async def handle(self, action: str, params: Mapping[str, str], caller: Caller) -> str:
        """Answer one call: the XML inside `<{action}Result>`. Raises SnsError."""
        handler = self.actions.get(action)
        if handler is None:
            raise SnsError("InvalidAction", f"The action {action} is not valid for this endpoint.")
        if self.closed:
            raise SnsError("InternalError", "SNS is shutting down", 500)
        await self.start()
        self.endpoints.base_url = caller.endpoint or self.endpoints.base_url
        return await handler(params, caller)

    async def close(self) -> None:
        """Stop deliveries and alerts (idempotent); unacked messages stay queued."""
        if self.closed:
            return
        self.closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        await self.alerts.close()
        for task in list(self._confirmations):
            task.cancel()
        await asyncio.gather(*self._confirmations, return_exceptions=True)
        await self.dispatcher.close()
        await self.endpoints.close()
        self.registry.close()

    def _request_confirmation(self, sub: Subscription) -> None:
        task = asyncio.get_running_loop().create_task(self._confirm(sub))
        self._confirmations.add(task)
        task.add_done_callback(self._confirmations.discard)

    async def _confirm(self, sub: Subscription) -> None:
        """Send the confirmation request, retried like a delivery (the same policy)."""
        delays = retry_delays(self.dispatcher.retry_policy(sub))
        for attempt in range(len(delays) + 1):
            try:
                await self.endpoints.send_confirmation(sub)
                return
            except (DeliveryFailed, OSError, TimeoutError) as e:
                error = e
            if attempt == len(delays) or sub.arn not in self.registry.subscriptions:
                break
            await self.broker.clock.sleep(delays[attempt])
        log.warning("sns: could not ask %s to confirm %s: %s", sub.endpoint, sub.arn, error)
