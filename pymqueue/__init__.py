"""pymqueue: Kamailio's mqueue and dmq for Python.

Named (key, value) queues in POSIX shared memory, shared by every process on the host, with
Kamailio's semantics and the standard library's ``queue`` vocabulary.

The C engine is imported on first use of a name that needs it, so the pure-Python parts
(``pymqueue.dmq``, ``pymqueue.config`` …) import without touching shared memory.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pymqueue.errors import (
    ConfigError,
    DatabaseError,
    DmqError,
    DmqProtocolError,
    DmqTimeout,
    Empty,
    Error,
    Full,
    InvalidSegment,
    ItemTooLarge,
    LockTimeout,
    QueueClosed,
    QueueError,
    QueueExists,
    QueueNotFound,
    RpcError,
)

if TYPE_CHECKING:
    from pymqueue._aio import AsyncQueue
    from pymqueue._queue import AddMode, Overflow, Queue, QueueStats, list_queues, unlink

__version__ = "0.1.0"

_LAZY = {
    "Queue": "pymqueue._queue",
    "QueueStats": "pymqueue._queue",
    "Overflow": "pymqueue._queue",
    "AddMode": "pymqueue._queue",
    "list_queues": "pymqueue._queue",
    "unlink": "pymqueue._queue",
    "AsyncQueue": "pymqueue._aio",
}

__all__ = [
    "AddMode",
    "AsyncQueue",
    "ConfigError",
    "DatabaseError",
    "DmqError",
    "DmqProtocolError",
    "DmqTimeout",
    "Empty",
    "Error",
    "Full",
    "InvalidSegment",
    "ItemTooLarge",
    "LockTimeout",
    "Overflow",
    "Queue",
    "QueueClosed",
    "QueueError",
    "QueueExists",
    "QueueNotFound",
    "QueueStats",
    "RpcError",
    "list_queues",
    "unlink",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pymqueue' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
