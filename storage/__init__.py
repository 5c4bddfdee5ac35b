"""Storage behind one interface: the core talks to a `Store`, never to SQL."""

from moorage.storage.memory import MemoryStore
from moorage.storage.store import (
    BindingRecord,
    DurabilityCallback,
    ExchangeRecord,
    PermissionRecord,
    QueueRecord,
    Store,
    StoredEntry,
    StoreError,
    TopicPermissionRecord,
    Topology,
    UserRecord,
    UserTables,
)

__all__ = [
    "BindingRecord",
    "DurabilityCallback",
    "ExchangeRecord",
    "MemoryStore",
    "PermissionRecord",
    "QueueRecord",
    "Store",
    "StoreError",
    "StoredEntry",
    "TopicPermissionRecord",
    "Topology",
    "UserRecord",
    "UserTables",
]
