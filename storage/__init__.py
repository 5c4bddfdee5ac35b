"""Storage behind one interface: the core talks to a `Store`, never to SQL."""

from moorage.storage.memory import MemoryStore
from moorage.storage.store import (
    BindingRecord,
    DurabilityCallback,
    ExchangeRecord,
    QueueRecord,
    Store,
    StoredEntry,
    StoreError,
    Topology,
)

__all__ = [
    "BindingRecord",
    "DurabilityCallback",
    "ExchangeRecord",
    "MemoryStore",
    "QueueRecord",
    "Store",
    "StoreError",
    "StoredEntry",
    "Topology",
]
