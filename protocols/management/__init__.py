"""RabbitMQ-compatible management HTTP API (aiohttp): routes, rendering and the listener."""
