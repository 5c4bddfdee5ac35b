"""Storage behind one interface: the core talks to a `Store`, never to SQL."""

from storage.memory import MemoryStore
from storage.store import (
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
