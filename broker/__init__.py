"""Moorage's protocol-neutral core: vhosts, exchanges, queues, sessions, the daemon."""

__version__ = "0.1.0"
