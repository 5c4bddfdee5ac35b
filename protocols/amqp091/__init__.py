"""AMQP 0-9-1: codec (pamqp-based, sans-IO), adapter (state machine) and asyncio shell."""

from moorage.protocols.amqp091.server import AMQPPlugin

plugin = AMQPPlugin()

__all__ = ["plugin"]
