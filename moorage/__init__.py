"""Moorage, a persistent message broker: the one namespace every part installs under.

The repository keeps its top-level folders (`broker/`, `protocols/`,
`storage/`, `bench/`); this package reaches them through relative symbolic
links, so they install and import as `moorage.broker`, `moorage.protocols`,
`moorage.storage` and `moorage.bench`, and nothing generic lands on a user's
`sys.path`. (Why links rather than setuptools' `package-dir` mapping: the
README's development notes.)

The embedding API (`moorage.broker.embedded`) is also reachable from here:
`from moorage import EmbeddedBroker`.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moorage.broker.embedded import EmbeddedBroker, EmbeddedBrokerError, make_user

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "make_user"]

# `from moorage import EmbeddedBroker` works, but importing `moorage` (which every
# `moorage.*` import does first) must not load the core: a codec imported on its
# own stays free of it. So the embedding API is fetched on first use.
_EMBEDDING = frozenset(__all__)


def __getattr__(name: str) -> object:
    if name in _EMBEDDING:
        from moorage.broker import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module 'moorage' has no attribute {name!r}")
