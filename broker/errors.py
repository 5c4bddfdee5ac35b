"""Protocol-neutral errors raised by the core.

Each error has a reply code (RabbitMQ's AMQP 0-9-1 codes, which the other
adapters map onto their own wire answers) and a scope: a *soft* error closes
the session (AMQP channel) that caused it, a *hard* one the whole connection.
"""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    """Base of every error the core raises on purpose.

    Attributes:
        code: AMQP 0-9-1 reply code (404, 406, ...).
        name: the reply code's name, as RabbitMQ writes it in reply texts.
        hard: True when the error must close the connection, not just the channel.
        text: the human part of the reply text.
    """

    code: ClassVar[int] = 541
    name: ClassVar[str] = "INTERNAL_ERROR"
    hard: ClassVar[bool] = True

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply_text(self) -> str:
        """RabbitMQ's reply text form: `NOT_FOUND - no queue 'q' in vhost '/'`."""
        return f"{self.name} - {self.text}"


class NotFound(BrokerError):
    code, name, hard = 404, "NOT_FOUND", False


class AccessRefused(BrokerError):
    code, name, hard = 403, "ACCESS_REFUSED", False


class ResourceLocked(BrokerError):
    code, name, hard = 405, "RESOURCE_LOCKED", False


class PreconditionFailed(BrokerError):
    code, name, hard = 406, "PRECONDITION_FAILED", False


class ContentTooLarge(BrokerError):
    code, name, hard = 311, "CONTENT_TOO_LARGE", False


class ConnectionForced(BrokerError):
    code, name, hard = 320, "CONNECTION_FORCED", True


class NotServing(ConnectionForced):
    """This node serves no client (a standby): the client should go elsewhere.

    `server_reference` maps a protocol name ("amqp", "mqtt", "stomp", ...) to
    the HOST:PORT of the node that serves it, when known. Adapters answer with
    their protocol's "use another server" (AMQP connection.close 320 naming
    the primary, MQTT CONNACK 0x9C with Server Reference or 3.1.1 code 3,
    STOMP ERROR).
    """

    def __init__(self, text: str, server_reference: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.server_reference = dict(server_reference or {})


class InvalidPath(BrokerError):
    code, name, hard = 402, "INVALID_PATH", True


class FrameError(BrokerError):
    code, name, hard = 501, "FRAME_ERROR", True


class SyntaxError_(BrokerError):  # noqa: N801 - avoids shadowing the builtin
    code, name, hard = 502, "SYNTAX_ERROR", True


class CommandInvalid(BrokerError):
    code, name, hard = 503, "COMMAND_INVALID", True


class ChannelError(BrokerError):
    code, name, hard = 504, "CHANNEL_ERROR", True


class UnexpectedFrame(BrokerError):
    code, name, hard = 505, "UNEXPECTED_FRAME", True


class ResourceError(BrokerError):
    code, name, hard = 506, "RESOURCE_ERROR", True


class NotAllowed(BrokerError):
    code, name, hard = 530, "NOT_ALLOWED", True


class NotImplementedFeature(BrokerError):
    code, name, hard = 540, "NOT_IMPLEMENTED", True


class InternalError(BrokerError):
    code, name, hard = 541, "INTERNAL_ERROR", True
