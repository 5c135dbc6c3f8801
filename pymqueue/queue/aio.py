"""``pymqueue.AsyncQueue``: the queue for asyncio code.

A wait never blocks the event loop, and waiting never takes an item: the coroutine takes it
with a non-blocking call on the loop thread once the queue *looks* readable or writable, so a
cancelled ``get`` can never lose one.

* Waits for items use the handle's doorbell (:meth:`Queue.fileno`): one ``add_reader`` per
  handle and loop, however many coroutines wait on it; a ring wakes them all and each looks
  again. No thread is involved, so a thousand coroutines can await a thousand queues. Each
  wait also looks again every ``_RECHECK`` seconds (a producer killed between its add and
  its ring must not leave a waiter asleep for ever).
* When the queue's 64 doorbells are taken (or no socket can be made), and for waits for room
  (block policy), a worker thread waits in short slices in C without the GIL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from pymqueue._text import Key, to_bytes
from pymqueue.errors import Empty, Full
from pymqueue.queue._bell import Bell
from pymqueue.queue._engine import DUPLICATE as _DUPLICATE
from pymqueue.queue._engine import E_FULL as _E_FULL
from pymqueue.queue._engine import OK as _OK
from pymqueue.queue.batch import ItemBatch
from pymqueue.queue.mp import join_queue
from pymqueue.queue.sync import Queue
from pymqueue.queue.types import Overflow, QueueStats

__all__ = ["AsyncQueue"]

_SLICE = 0.05  # seconds a worker thread waits before the coroutine looks again
_RECHECK = 1.0  # seconds a doorbell wait lasts at most before the coroutine looks again
_BELL_RETRY = 1.0  # seconds before a handle without a doorbell tries to get one again


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
        self._no_bell_until = 0.0  # monotonic time before which waits use a thread

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

    def _bell(self, loop: asyncio.AbstractEventLoop) -> Bell | None:
        """The handle's doorbell, for waits on ``loop``; None: wait in a thread instead."""
        if self._no_bell_until and time.monotonic() < self._no_bell_until:
            return None
        try:
            bell = self._queue._bell_here()
        except OSError:  # BellTableFull, EMFILE …: fall back, try again later
            self._no_bell_until = time.monotonic() + _BELL_RETRY
            return None
        self._no_bell_until = 0.0
        if bell.loop is not loop:
            old = bell.loop
            if old is not None and not old.is_closed() and (bell.futures or bell.reading):
                return None  # coroutines of another loop wait on it
            bell.loop = loop
            bell.futures = set()
            bell.reading = False
            bell.armed = False
        return bell

    async def _wait_items(self, deadline: float | None) -> None:
        """Until the queue may have items, the deadline, or ``_RECHECK`` seconds."""
        loop = asyncio.get_running_loop()
        bell = self._bell(loop)
        if bell is None:
            await self._wait(True, deadline)
            return
        if not bell.armed:
            if bell.arm(self._queue._h()):
                bell.wake_all()  # items now (a ring it drained may have been theirs too)
                return
            bell.armed = True
        if not bell.reading:
            loop.add_reader(bell.fileno(), bell.on_ring)
            bell.reading = True
        fut: asyncio.Future[None] = loop.create_future()
        bell.futures.add(fut)
        delay = _RECHECK if deadline is None else min(_RECHECK, deadline - time.monotonic())
        timer = loop.call_later(max(delay, 0.0), _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            if fut in bell.futures:  # not woken by a ring (on_ring empties the set)
                bell.futures.discard(fut)
                if fut.done():
                    # The time was up: if a ring was lost (a producer killed between its
                    # add and its ring), the bell is not armed any more. Arm it again.
                    bell.armed = False
            bell.stop_reading()

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
            await self._wait_items(deadline)

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
            await self._wait_items(deadline)

    async def fetch_batch(self, max_items: int, timeout: float | None = None) -> ItemBatch:
        """Like :meth:`Queue.fetch_batch`; waits (per ``timeout``) for the first item
        without blocking the loop; an empty batch if none arrives."""
        deadline = self._deadline(timeout)
        while True:
            batch = self._queue.fetch_batch(max_items)
            if batch or max_items <= 0:
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                return batch
            await self._wait_items(deadline)

    async def get(self, timeout: float | None = None) -> Any:
        """The oldest object; :class:`pymqueue.Empty` if none arrives within ``timeout``."""
        item = await self.fetch(timeout)
        if item is None:
            raise Empty(f"queue {self._queue.name!r} is empty", self._queue.name)
        return self._queue._serializer.loads(item[1])

    async def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        batch = await self.fetch_batch(max_items, timeout)
        if not batch:
            raise Empty(f"queue {self._queue.name!r} is empty", self._queue.name)
        return list(map(self._queue._serializer.loads, batch.values()))

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

    def task_done(self) -> None:
        """Mark one item done, as ``asyncio.Queue.task_done`` (the count is the queue's, in
        shared memory: see :class:`~pymqueue.JoinableQueue`). :class:`~pymqueue.TaskDoneError`
        (also ``ValueError``) when called more times than items were added."""
        self._queue._h().task_done(1)

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until every item added (by any process) has been marked done, or dropped or
        replaced by the engine; False if some are still unfinished at ``timeout`` (None:
        for ever). A worker thread waits in short slices, so cancelling returns at once and
        leaves the thread at most one slice."""
        deadline = self._deadline(timeout)
        loop = asyncio.get_running_loop()
        while True:
            remaining = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if await loop.run_in_executor(None, join_queue, self._queue, max(remaining, 0.0)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

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
