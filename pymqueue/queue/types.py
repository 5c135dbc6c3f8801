"""The queue's vocabulary in pure Python: what configuration code may import without loading
the C engine.

:class:`Overflow` and :class:`AddMode` (the settings), :class:`QueueStats` (a snapshot of the
counters), :class:`Record` (an item with its id, from ``Queue.peek_records``),
:class:`Serializer` and the default :class:`PickleSerializer` (``put``/``get``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from pymqueue.errors import ConfigError

__all__ = [
    "DEFAULT_CAPACITY",
    "PICKLE",
    "AddMode",
    "Overflow",
    "PickleSerializer",
    "QueueStats",
    "Record",
    "Serializer",
]

DEFAULT_CAPACITY = 16 * 1024 * 1024


class Overflow(IntEnum):
    """What ``add`` does when the queue is full (``size`` items or its byte capacity)."""

    DROP_OLDEST = 0  #: remove the oldest items to make room (Kamailio's behaviour)
    REJECT = 1  #: raise :class:`pymqueue.Full`
    BLOCK = 2  #: wait for room, up to the timeout, then raise :class:`pymqueue.Full`

    @classmethod
    def parse(cls, value: Overflow | int | str) -> Overflow:
        if isinstance(value, str):
            try:
                return cls[value.strip().upper().replace("-", "_")]
            except KeyError:
                raise ConfigError(f"unknown overflow policy {value!r}") from None
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown overflow policy {value!r}") from None


class AddMode(IntEnum):
    """Kamailio's ``addmode``: how an item whose key is already queued is added."""

    APPEND = 0  #: duplicates allowed
    UNIQUE_KEEP_OLDEST = 1  #: the new item is ignored
    UNIQUE_KEEP_NEWEST = 2  #: the old item is removed; the new one goes to the tail

    @classmethod
    def parse(cls, value: AddMode | int | str) -> AddMode:
        try:
            if isinstance(value, str):
                return (
                    cls[value.strip().upper()] if not value.strip().isdigit() else cls(int(value))
                )
            return cls(value)
        except (KeyError, ValueError):
            raise ConfigError(f"unknown addmode {value!r} (0, 1 or 2)") from None


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of a queue's counters, read under its lock.

    ``added == fetched + items + dropped + replaced`` holds at every snapshot.
    """

    name: str
    items: int
    bytes: int
    ring_used: int
    max_items: int
    capacity: int
    added: int
    fetched: int
    dropped: int
    rejected: int
    replaced: int
    duplicates: int
    high_water: int
    recoveries: int
    getters_waiting: int
    putters_waiting: int
    bells: int  # doorbells registered (``Queue.fileno()``), dead owners' included
    bells_armed: int  # doorbells waiting for the next add
    held: int = 0  # items held back until a forwarder releases them (``Queue.hold``)
    hold: int = 0  # 1: items added now are held
    unfinished: int = 0  # added and not yet marked done (``task_done``), dropped or replaced


class Serializer(Protocol):
    """Turns objects into bytes and back (``put``/``get``)."""

    def dumps(self, obj: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


class PickleSerializer:
    """The default serializer: pickle at its highest protocol."""

    def dumps(self, obj: Any, /) -> bytes:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes, /) -> Any:
        return pickle.loads(data)

    def __reduce__(self) -> str:
        return "PICKLE"


PICKLE = PickleSerializer()


class Record(NamedTuple):
    """An item with its record id, as :meth:`Queue.peek_records <pymqueue.Queue.peek_records>`
    returns it. Ids are > 0 and grow in queue order; with :attr:`Queue.epoch
    <pymqueue.Queue.epoch>` they name the item for ever (a new segment has a new epoch)."""

    id: int
    key: bytes
    value: bytes
