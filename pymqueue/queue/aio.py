"""``pymqueue.AsyncQueue``: the queue for asyncio code.

A wait never runs on the event loop: a worker thread waits (in short slices, in C, without
the GIL) until the queue *looks* readable or writable, and the coroutine then takes the item
with a non-blocking call on the loop thread. Since the worker never takes an item, a
cancelled ``get`` can never lose one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from pymqueue._text import Key, to_bytes
from pymqueue.errors import Empty, Full
from pymqueue.queue._engine import DUPLICATE as _DUPLICATE
from pymqueue.queue._engine import E_FULL as _E_FULL
from pymqueue.queue._engine import OK as _OK
from pymqueue.queue.sync import Queue
from pymqueue.queue.types import Overflow, QueueStats

__all__ = ["AsyncQueue"]

_SLICE = 0.05  # seconds a worker thread waits before the coroutine looks again


class AsyncQueue:
    """An asyncio view of a :class:`pymqueue.Queue` (given, or opened by name with the same
    keyword arguments as ``Queue``). ``async with`` closes it if it opened it."""

    def __init__(self, queue: Queue | str | bytes, **kwargs: Any) -> None:
        if isinstance(queue, Queue):
            if kwargs:
                raise TypeError("keyword arguments only apply when opening by name")
            self._queue = queue
            self._owned = False
        else:
            self._queue = Queue(queue, **kwargs)
            self._owned = True

    @property
    def queue(self) -> Queue:
        """The underlying synchronous queue."""
        return self._queue

    async def _wait(self, readable: bool, deadline: float | None, need: int = 0) -> bool:
        loop = asyncio.get_running_loop()
        remaining = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
        if remaining <= 0:
            return False
        return await loop.run_in_executor(None, self._queue.wait, readable, remaining, need)

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or >= 0")
        return None if timeout is None else time.monotonic() + timeout

    async def fetch(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """The oldest ``(key, value)``, waiting up to ``timeout`` (None: forever)."""
        deadline = self._deadline(timeout)
        while True:
            item = self._queue.fetch()
            if item is not None:
                return item
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await self._wait(True, deadline)

    async def fetch_many(
        self, max_items: int, timeout: float | None = None
    ) -> list[tuple[bytes, bytes]]:
        deadline = self._deadline(timeout)
        while True:
            items = self._queue.fetch_many(max_items)
            if items or max_items <= 0:
                return items
            if deadline is not None and time.monotonic() >= deadline:
                return []
            await self._wait(True, deadline)

    async def get(self, timeout: float | None = None) -> Any:
        """The oldest object; :class:`pymqueue.Empty` if none arrives within ``timeout``."""
        item = await self.fetch(timeout)
        if item is None:
            raise Empty(f"queue {self._queue.name!r} is empty", self._queue.name)
        return self._queue._serializer.loads(item[1])

    async def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        items = await self.fetch_many(max_items, timeout)
        if not items:
            raise Empty(f"queue {self._queue.name!r} is empty", self._queue.name)
        loads = self._queue._serializer.loads
        return [loads(v) for _, v in items]

    async def add(self, key: Key, value: Key, timeout: float | None = None) -> bool:
        """Like :meth:`Queue.add`; with the block policy, waits for room without blocking
        the loop."""
        q = self._queue
        if q.policy is not Overflow.BLOCK:
            return q.add(key, value)
        k = to_bytes(key)
        v = to_bytes(value)
        deadline = self._deadline(timeout)
        while True:
            rc = q._add_once(k, v)
            if rc != _E_FULL:
                break
            if deadline is not None and time.monotonic() >= deadline:
                q._note_rejected(1)  # once per call, however many times it looked
                break
            # Wakes when an item of this size fits (not merely below the count limit).
            await self._wait(False, deadline, len(k) + len(v))
        if rc == _OK:
            return True
        if rc == _DUPLICATE:
            return False
        q._fail(rc, len(k), len(v))

    async def add_many(self, items: Iterable[tuple[Key, Key]], timeout: float | None = None) -> int:
        """Like :meth:`Queue.add_many`; with the block policy, waits for room between the
        items that do not fit."""
        pending = list(items)
        done = 0
        deadline = self._deadline(timeout)
        while True:
            try:
                return done + self._queue.add_many(pending[done:], timeout=0)
            except Full as exc:
                done += getattr(exc, "done", 0)
                if self._queue.policy is not Overflow.BLOCK or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    raise
            await self._wait(False, deadline)

    async def put(self, obj: Any, timeout: float | None = None) -> None:
        await self.add(b"", self._queue._serializer.dumps(obj), timeout)

    async def put_many(self, objs: Iterable[Any], timeout: float | None = None) -> int:
        dumps = self._queue._serializer.dumps
        return await self.add_many([(b"", dumps(o)) for o in objs], timeout)

    def size(self) -> int:
        return self._queue.size()

    def stats(self) -> QueueStats:
        return self._queue.stats()

    def close(self) -> None:
        if self._owned:
            self._queue.close()

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pymqueue.AsyncQueue of {self._queue!r}>"
