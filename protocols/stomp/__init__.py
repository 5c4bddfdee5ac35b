"""STOMP 1.0/1.1/1.2: codec (sans-IO), adapter (state machine), selectors and asyncio shell."""
