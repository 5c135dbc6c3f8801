"""Kamailio 5.6.3's ``mqueue.*`` RPC commands, registered on an RPC server.

* ``mqueue.get_size NAME`` → ``{"name", "size"}``; no or empty name → ``400``, unknown →
  ``404 No such queue``;
* ``mqueue.get_sizes`` → one ``{"name", "size"}`` per queue, registry order (newest first);
* ``mqueue.fetch NAME`` → ``{"key", "val"}`` of the oldest item; unknown → ``500``, empty →
  ``404 Empty queue``;
* ``mqueue.stats [NAME]`` (a pymqueue extension) → the counters of one queue, or of all.

Values are bytes. A key, value or queue name that is valid UTF-8 comes out as a JSON string,
exactly Kamailio's shape (NUL and control characters JSON-escaped). One that is not valid UTF-8
(Kamailio prints the raw bytes, which is not JSON) comes out as text with U+FFFD replacing the
bad bytes **plus** a ``<field>_b64`` member holding the exact bytes in base64, so a fetched item
is never lost: ``{"key": "k", "val": "a\\ufffd", "val_b64": "YYA="}``. In a request, a queue name
is encoded as UTF-8 with ``surrogateescape`` (``"q\\udcff"`` names the queue ``b"q\\xff"``).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from pymqueue._text import display, json_bytes_fields, name_bytes
from pymqueue.errors import RpcError

__all__ = ["InstanceLike", "register_mqueue_rpc"]

log = logging.getLogger("pymqueue.rpc")


class _QueueLike(Protocol):
    """What the methods need from a :class:`pymqueue.Queue`."""

    @property
    def raw_name(self) -> bytes: ...

    def size(self) -> int: ...

    def fetch(self, timeout: float | None = 0) -> tuple[bytes, bytes] | None: ...

    def stats(self) -> Any: ...


class InstanceLike(Protocol):
    """What the methods need from a :class:`pymqueue.instance.Instance`."""

    @property
    def queues(self) -> Mapping[str, Any]: ...


class _RpcLike(Protocol):
    def register(self, name: str, func: Any, help: str) -> None: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return display(value)
    return value


class _MqueueMethods:
    """The methods, over the queues of one instance (``None``: no queues)."""

    def __init__(self, instance: InstanceLike | None) -> None:
        self.instance = instance

    def _queues(self) -> Iterator[_QueueLike]:
        if self.instance is None:
            return iter(())
        return iter(list(self.instance.queues.values()))

    def _find(self, args: tuple[Any, ...], code: int, not_found: int) -> _QueueLike:
        """The queue named by the first parameter, with Kamailio's error codes and texts."""
        if not args or not isinstance(args[0], str):
            raise RpcError(code, "No queue name")
        if not args[0]:
            raise RpcError(code, "Invalid queue name")
        try:
            wanted: bytes | None = name_bytes(args[0])
        except UnicodeEncodeError:
            wanted = None
        for queue in self._queues():
            if queue.raw_name == wanted:
                return queue
        log.info("mqueue RPC: no such mqueue %r", args[0])
        raise RpcError(not_found, "No such queue")

    def get_size(self, *args: Any) -> dict[str, Any]:
        queue = self._find(args, 400, 404)
        return {**json_bytes_fields("name", queue.raw_name), "size": queue.size()}

    def get_sizes(self, *_: Any) -> list[dict[str, Any]]:
        return [{**json_bytes_fields("name", q.raw_name), "size": q.size()} for q in self._queues()]

    def fetch(self, *args: Any) -> dict[str, Any]:
        queue = self._find(args, 500, 500)
        item = queue.fetch(timeout=0)
        if item is None:
            raise RpcError(404, "Empty queue")
        key, val = item
        # Divergence: Kamailio answers 500 "Unexpected error (result)" for an empty key or
        # value and loses the item; we return it ("" strings).
        return {**json_bytes_fields("key", key), **json_bytes_fields("val", val)}

    def stats(self, *args: Any) -> Any:
        if args:
            return self._queue_stats(self._find(args, 400, 404))
        return [self._queue_stats(q) for q in self._queues()]

    @staticmethod
    def _queue_stats(queue: _QueueLike) -> dict[str, Any]:
        stats = queue.stats()
        fields: dict[str, Any] = (
            dataclasses.asdict(stats)
            if dataclasses.is_dataclass(stats) and not isinstance(stats, type)
            else dict(vars(stats))
        )
        return {
            **json_bytes_fields("name", queue.raw_name),
            **{k: _jsonable(v) for k, v in fields.items()},
        }


def register_mqueue_rpc(server: _RpcLike, instance: InstanceLike | None) -> None:
    """Register ``mqueue.*`` on ``server``, answering for ``instance``'s queues."""
    m = _MqueueMethods(instance)
    server.register("mqueue.get_size", m.get_size, "Get size of mqueue.")
    server.register("mqueue.get_sizes", m.get_sizes, "Get sizes of all mqueues.")
    server.register("mqueue.fetch", m.fetch, "Fetch an element from the queue.")
    server.register(
        "mqueue.stats",
        m.stats,
        "Get the counters of one mqueue, or of all mqueues (pymqueue extension).",
    )
