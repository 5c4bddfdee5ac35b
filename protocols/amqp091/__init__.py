"""AMQP 0-9-1: codec (pamqp-based, sans-IO), adapter (state machine) and asyncio shell."""
