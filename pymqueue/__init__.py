"""pymqueue: Kamailio's mqueue and dmq for Python.

Named (key, value) queues in POSIX shared memory, shared by every process on the host, with
Kamailio's semantics and the standard library's ``queue`` vocabulary.

The C engine is imported on first use of a name that needs it, so the pure-Python parts
(``pymqueue.dmq``, ``pymqueue.config`` …) import without touching shared memory.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pymqueue.errors import (
    BellTableFull,
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
    from pymqueue.queue.batch import ItemBatch
    from pymqueue.queue.mp import JoinableQueue, SimpleQueue
    from pymqueue.queue.sync import Queue, list_queues, unlink
    from pymqueue.queue.types import AddMode, Overflow, QueueStats, Record

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

_EXTENSION = "pymqueue._pmq_c"


class _MissingExtension(importlib.abc.MetaPathFinder):
    """Consulted after every other finder, so only when ``pymqueue._pmq_c`` was not found: turns
    the bare ``ModuleNotFoundError`` into one sentence that says what to do."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _EXTENSION:
            return None
        here = os.path.dirname(os.path.abspath(__file__))
        source_tree = os.path.exists(os.path.join(os.path.dirname(here), "csrc", "pmq_build.py"))
        if source_tree:
            fix = (
                f"{here} is a source checkout without its compiled engine ({_EXTENSION}): "
                "build it in place "
                "(`python3 setup.py build_ext --inplace`, or `python3 -m pip install -e .`), or "
                "run the installed package from outside this directory (after "
                "`python3 -m pip install .`, the `pymqueue` command works from anywhere)"
            )
        else:
            fix = (
                f"the compiled engine {_EXTENSION} is missing from {here}: reinstall pymqueue "
                "(`python3 -m pip install --force-reinstall pymqueue`)"
            )
        raise ModuleNotFoundError(f"pymqueue: {fix}.", name=fullname)


if not any(isinstance(f, _MissingExtension) for f in sys.meta_path):
    sys.meta_path.append(_MissingExtension())

_LAZY = {
    "Queue": "pymqueue.queue.sync",
    "list_queues": "pymqueue.queue.sync",
    "unlink": "pymqueue.queue.sync",
    "QueueStats": "pymqueue.queue.types",
    "Record": "pymqueue.queue.types",
    "Overflow": "pymqueue.queue.types",
    "AddMode": "pymqueue.queue.types",
    "AsyncQueue": "pymqueue.queue.aio",
    "ItemBatch": "pymqueue.queue.batch",
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
    "BellTableFull",
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
    "ItemBatch",
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
    "Record",
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
