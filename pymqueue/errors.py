"""The exception hierarchy of pymqueue.

Every exception pymqueue raises derives from :class:`Error`, which is never raised itself.
Leaves also derive from the builtin a user would catch anyway, so ``except queue.Empty``,
``except FileNotFoundError`` or ``except ValueError`` keep working.
"""

from __future__ import annotations

import queue as _stdqueue

__all__ = [
    "BellTableFull",
    "ConfigError",
    "DatabaseError",
    "DmqError",
    "DmqNodeNotFound",
    "DmqProtocolError",
    "DmqTimeout",
    "Empty",
    "Error",
    "Full",
    "HtableError",
    "HtableValueError",
    "InvalidSegment",
    "ItemTooLarge",
    "LockTimeout",
    "MqueueDecodeError",
    "QueueClosed",
    "QueueError",
    "QueueExists",
    "QueueNotFound",
    "RpcError",
    "TaskDoneError",
    "UntrustedSegment",
]


class Error(Exception):
    """Root of every pymqueue exception; never raised itself."""


class QueueError(Error):
    """An error about one queue; ``queue`` names it."""

    def __init__(self, message: str, queue: str | None = None) -> None:
        super().__init__(message)
        self.queue = queue


class Empty(QueueError, _stdqueue.Empty):
    """The queue had no item within the allowed time."""


class Full(QueueError, _stdqueue.Full):
    """The queue had no room within the allowed time (policy ``reject`` or ``block``)."""


class QueueNotFound(QueueError, FileNotFoundError):
    """No queue of that name exists (in that namespace) on this host."""


class QueueExists(QueueError, FileExistsError):
    """A queue of that name already exists and ``create=True`` was asked."""


class ItemTooLarge(QueueError, ValueError):
    """The item can never fit in the queue, whatever is removed from it."""


class InvalidSegment(QueueError, OSError):
    """The shared-memory object is not a pymqueue queue this version understands."""


class UntrustedSegment(QueueError, PermissionError):
    """The shared-memory object is owned by another user or writable by others; unused."""


class LockTimeout(QueueError, TimeoutError):
    """The queue's lock stayed held by a live process for longer than the lock timeout."""


class QueueClosed(QueueError, ValueError):
    """The handle was closed (like I/O on a closed file)."""


class BellTableFull(QueueError, OSError):
    """``Queue.fileno()``: the queue's doorbell table is full (64 live registrants); poll
    another way (``AsyncQueue`` falls back to waiting in a worker thread)."""


class TaskDoneError(QueueError, ValueError):
    """``JoinableQueue.task_done()`` was called more times than items were put."""


class ConfigError(Error, ValueError):
    """A queue definition or configuration is invalid; the message quotes the bad text."""


class DatabaseError(Error):
    """Loading or saving a queue from or to its database failed."""


class RpcError(Error):
    """An RPC call failed; ``code`` and ``message`` are the JSON-RPC error fields."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} - {message}")
        self.code = code
        self.message = message


class DmqError(Error):
    """Root of the DMQ bus errors."""


class DmqProtocolError(DmqError, ValueError):
    """A KDMQ message is malformed or breaks a protocol limit."""


class DmqTimeout(DmqError, TimeoutError):
    """A DMQ transaction got no final reply within ``fr_timer``."""


class DmqNodeNotFound(DmqError, LookupError):
    """The DMQ node named is not in the node list (or is the local node)."""


class HtableError(DmqError):
    """Root of the errors of a replicated htable (:mod:`pymqueue.dmq.htable`)."""


class HtableValueError(HtableError, ValueError):
    """A key, value, pattern or message that Kamailio's htable cannot carry (refused, never
    mangled): not UTF-8, a NUL character, an integer outside 32 bits, too large for a DMQ
    message, or a malformed htable body."""


class MqueueDecodeError(DmqProtocolError):
    """A body on the ``mqueue`` DMQ channel (queues across hosts) that is refused: not the
    JSON the wire format describes (:mod:`pymqueue.dmq.mqueue_codec`). ``code``/``reason``
    is the SIP reply it gets (400), ``detail`` says what is wrong."""

    def __init__(self, detail: str, code: int = 400, reason: str = "Bad Request") -> None:
        super().__init__(f"{code} {reason}: {detail}")
        self.code = code
        self.reason = reason
        self.detail = detail
