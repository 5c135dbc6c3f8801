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
    TaskDoneError,
    UntrustedSegment,
)

if TYPE_CHECKING:
    from pymqueue.instance import Instance
    from pymqueue.queue._engine import get_lock_timeout, set_default_spin, set_lock_timeout
    from pymqueue.queue.aio import AsyncQueue
    from pymqueue.queue.mp import JoinableQueue, SimpleQueue
    from pymqueue.queue.sync import Queue, list_queues, unlink
    from pymqueue.queue.types import AddMode, Overflow, QueueStats

__version__ = "0.1.0"

_LAZY = {
    "Queue": "pymqueue.queue.sync",
    "list_queues": "pymqueue.queue.sync",
    "unlink": "pymqueue.queue.sync",
    "QueueStats": "pymqueue.queue.types",
    "Overflow": "pymqueue.queue.types",
    "AddMode": "pymqueue.queue.types",
    "AsyncQueue": "pymqueue.queue.aio",
    "JoinableQueue": "pymqueue.queue.mp",
    "SimpleQueue": "pymqueue.queue.mp",
    "Instance": "pymqueue.instance",
    "set_lock_timeout": "pymqueue.queue._engine",
    "get_lock_timeout": "pymqueue.queue._engine",
    "set_default_spin": "pymqueue.queue._engine",
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
    "Instance",
    "InvalidSegment",
    "ItemTooLarge",
    "JoinableQueue",
    "LockTimeout",
    "Overflow",
    "Queue",
    "QueueClosed",
    "QueueError",
    "QueueExists",
    "QueueNotFound",
    "QueueStats",
    "RpcError",
    "SimpleQueue",
    "TaskDoneError",
    "UntrustedSegment",
    "get_lock_timeout",
    "list_queues",
    "set_default_spin",
    "set_lock_timeout",
    "unlink",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pymqueue' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
