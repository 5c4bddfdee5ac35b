"""The AWS listener: one aiohttp application serving the SQS and SNS APIs.

Registered as the `sqs` protocol plug-in (`--sqs-port`, default 9324 like
ElasticMQ; `sqs_https` is its TLS twin). Like LocalStack and goaws, one
listener serves both services:

- `X-Amz-Target: AmazonSQS.<Action>` with a JSON body: the `sqs` service over
  AWS JSON 1.0 (what current SDKs send);
- otherwise a form body (or query string) with `Action=<Action>`: the Query
  protocol, for the service named by the SigV4 credential scope
  (`.../<region>/sqs|sns/aws4_request`).

Every request is authenticated first (`sigv4.verify`) against the broker
users' access keys; then the body is parsed, and the service answers. The one
exception is an unsigned GET of an SNS `SubscribeURL` (AWS allows it: the
subscription's token is the credential), handed to SNS's `confirm_by_token`. The
services registered in `SERVICES` are made once per broker as
`factory(broker)` (the `sqs` and `sqs_https` listeners share them: one
receipt-handle epoch, one set of queue attributes, one SNS delivery loop),
when the first listener starts, and started then (`start()`, when a service
has it) so that their background work resumes after a restart without
waiting for a request. A service module that is not installed is simply not
served (`InvalidAction`). Errors are rendered in the caller's wire format
(`errors.AwsError`).
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import json
import logging
import re
import ssl
import uuid
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from moorage.broker.broker import Broker
from moorage.protocols.aws import sigv4
from moorage.protocols.aws.errors import JSON_CONTENT_TYPE, AwsError, invalid_action
from moorage.protocols.aws.service import AwsCall, AwsReply, AwsService, Wire

log = logging.getLogger("moorage.aws")

SERVICES: dict[str, str] = {
    "sqs": "moorage.protocols.sqs.service:SqsService",
    "sns": "moorage.protocols.sns.service:SnsService",
}
"""Signing name -> `module:factory` of the service, made when the first AWS listener starts."""

JSON_TARGETS: dict[str, str] = {"AmazonSQS": "sqs"}
"""`X-Amz-Target` prefix -> the service that speaks AWS JSON 1.0."""

# SQS messages are at most 1 MiB (a batch too); the form encoding of a batch of
# binary attributes can double that.
MAX_BODY = 4 * 1024 * 1024


class AwsServices:
    """The AWS services of one broker: made and started with its first AWS listener,
    closed with its listeners (`broker.extension(EXTENSION, AwsServices)`)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._services: dict[str, AwsService | None] = {}
        self._starting: asyncio.Lock = asyncio.Lock()
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Make every registered service and await its `start()` when it has one (once).

        A service whose module is not installed is skipped; any other failure
        to make or start one is raised: the listener does not start half-served."""
        async with self._starting:
            if self._started or self._closed:
                return
            for name in SERVICES:
                service = self.get(name)
                start = getattr(service, "start", None)
                if start is not None:
                    await start()
            self._started = True

    def get(self, name: str) -> AwsService | None:
        """The service of signing name `name`, or None when it is not installed
        (or the services are closed: the broker is stopping)."""
        if self._closed:
            return None
        if name in self._services:
            return self._services[name]
        service: AwsService | None = None
        target = SERVICES.get(name)
        if target is not None:
            module_name, _, factory_name = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name is None or not module_name.startswith(e.name):
                    raise
                log.debug("AWS service %s is not installed", name)
            else:
                service = getattr(module, factory_name)(self.broker)
        self._services[name] = service
        return service

    async def close(self) -> None:
        """Close every service made (once, whichever listener asks first)."""
        if self._closed:
            return
        self._closed = True
        for service in self._services.values():
            if service is not None:
                await service.close()
        self._services.clear()


EXTENSION = "aws_services"
"""The broker extension holding the `AwsServices` its AWS listeners share."""

SERVICES_KEY = web.AppKey("aws_services", AwsServices)
BROKER_KEY = web.AppKey("aws_broker", Broker)


def _is_loopback(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


def _endpoint(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _authenticate(
    request: web.Request, body: bytes, broker: Broker
) -> tuple[sigv4.Credential, Any, str]:
    """Verify the signature; the credential, the user and the access key's vhost."""
    signed = sigv4.SignedRequest(
        method=request.method,
        path=request.raw_path.partition("?")[0],
        query=list(request.query.items()),
        headers=request.headers,
        body=body,
    )
    found: dict[str, Any] = {}

    def secret_of(key_id: str) -> str | None:
        hit = broker.users.find_access_key(key_id)
        if hit is None:
            return None
        found["user"] = hit[0]
        return hit[1]

    credential = sigv4.verify(signed, secret_of, broker.clock.wall())
    user = found["user"]
    if user.name in broker.users.loopback_users and not _is_loopback(request):
        # The guest's access key works from loopback only, as its password does.
        raise AwsError(
            "InvalidClientTokenId",
            f"The access key of user '{user.name}' can only be used via localhost.",
            status=403,
        )
    vhost = user.access_key_vhosts.get(credential.access_key_id, "/")
    return credential, user, vhost


def _is_unsigned_confirmation(request: web.Request) -> bool:
    """An unsigned GET of an SNS `SubscribeURL` (`?Action=ConfirmSubscription&TopicArn=
    ...&Token=...`): AWS lets an endpoint confirm so, the token being its credential."""
    return (
        request.method == "GET"
        and "Authorization" not in request.headers
        and "X-Amz-Signature" not in request.query
        and request.query.get("Action") == "ConfirmSubscription"
    )


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        params = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise AwsError("SerializationException", "The request body is not valid JSON.") from None
    if not isinstance(params, dict):
        raise AwsError("SerializationException", "The request body must be a JSON object.")
    return params


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _parse_form(request: web.Request, body: bytes) -> dict[str, str]:
    """The Query parameters: the query string's (signature fields aside), then the form's."""
    try:
        text = body.decode("utf-8")
        if _BAD_ESCAPE.search(text):
            raise ValueError("bad percent escape")
        form = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise AwsError(
            "MalformedQueryString", "The query string contains a syntax error.", status=404
        ) from None
    params = {k: v for k, v in request.query.items() if not k.startswith("X-Amz-")}
    params.update(form)
    return params


def _render_error(error: AwsError, wire: Wire, service: str, request_id: str) -> web.Response:
    headers = {"x-amzn-RequestId": request_id}
    if wire == "json":
        headers.update(error.json_headers())
        return web.Response(
            body=error.json_body(service),
            status=error.status,
            content_type=JSON_CONTENT_TYPE,
            headers=headers,
        )
    return web.Response(
        body=error.xml_body(request_id),
        status=error.status,
        content_type="text/xml",
        headers=headers,
    )


async def _handle(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    broker = request.app[BROKER_KEY]
    target = request.headers.get("X-Amz-Target", "")
    wire: Wire = "json" if target else "query"
    service_name = JSON_TARGETS.get(target.partition(".")[0], "sqs")
    try:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise AwsError(
                "RequestEntityTooLarge", "The request body is too large.", status=413
            ) from None
        if _is_unsigned_confirmation(request):
            service_name = "sns"
            confirm = getattr(request.app[SERVICES_KEY].get("sns"), "confirm_by_token", None)
            if confirm is None:
                raise invalid_action("ConfirmSubscription")
            reply: AwsReply = await confirm(dict(request.query), request_id)
            return web.Response(
                body=reply.body,
                status=reply.status,
                headers={"Content-Type": reply.content_type, "x-amzn-RequestId": request_id},
            )
        credential, user, vhost = _authenticate(request, body, broker)
        if wire == "json":
            prefix, _, action = target.partition(".")
            if prefix not in JSON_TARGETS:
                raise invalid_action(target)
            params: Any = _parse_json(body)
        else:
            service_name = credential.service
            params = _parse_form(request, body)
            action = params.pop("Action", "")
            if not action:
                raise AwsError("MissingAction", "The request must contain an Action parameter.")
        service = request.app[SERVICES_KEY].get(service_name)
        if service is None:
            raise invalid_action(action)
        call = AwsCall(
            service=service_name,
            action=action,
            wire=wire,
            params=params,
            user=user,
            request_id=request_id,
            endpoint=_endpoint(request),
            path=request.path,
            vhost=vhost,
            region=credential.region,
        )
        reply = await service.call(call)
    except AwsError as e:
        return _render_error(e, wire, service_name, request_id)
    except Exception:
        log.exception("AWS %s request failed", service_name)
        error = AwsError(
            "InternalFailure", "The request processing has failed.", status=500, sender_fault=False
        )
        return _render_error(error, wire, service_name, request_id)
    return web.Response(
        body=reply.body,
        status=reply.status,
        headers={"Content-Type": reply.content_type, "x-amzn-RequestId": request_id},
    )


def build_app(broker: Broker, services: AwsServices | None = None) -> web.Application:
    """The AWS application for `broker` (also usable in an aiohttp test client), serving
    `services` (by default the broker's shared `AwsServices`)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[BROKER_KEY] = broker
    app[SERVICES_KEY] = (
        services if services is not None else broker.extension(EXTENSION, AwsServices)
    )
    app.router.add_route("POST", "/{path:.*}", _handle)
    app.router.add_route("GET", "/{path:.*}", _handle)
    return app


class AwsListener:
    """A running AWS listener (the daemon's `Listener` shape)."""

    def __init__(
        self, runner: web.AppRunner, server: asyncio.base_events.Server, services: AwsServices
    ) -> None:
        self.runner = runner
        self.server = server
        self.services = services
        self._closing: asyncio.Task[None] | None = None

    def _handlers(self) -> list[RequestHandler]:
        web_server = self.runner.server
        return list(web_server.connections) if web_server is not None else []

    def shutdown_connections(self, reason: str) -> None:
        """Close every HTTP connection (long polls end) and stop the services' work."""
        for handler in self._handlers():
            handler.force_close()
            if handler.transport is not None:
                handler.transport.close()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.services.close())

    def connection_count(self) -> int:
        # The services' close counts as one: the daemon waits for it as for a client.
        closing = int(self._closing is not None and not self._closing.done())
        return len(self._handlers()) + closing


class AwsPlugin:
    """The `sqs` listener of the daemon (SQS and SNS on one port)."""

    name = "sqs"

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> AwsListener:
        app = build_app(broker)
        await app[SERVICES_KEY].start()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(runner.server, host, port, ssl=ssl_context)
        return AwsListener(runner, server, app[SERVICES_KEY])


plugin = AwsPlugin()
