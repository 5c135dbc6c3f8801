"""``multiprocessing``'s other queues over shared memory: :class:`JoinableQueue` and
:class:`SimpleQueue`.

Both are :class:`~pymqueue.queue.sync.Queue` s, private (no name: a unique one, unlinked by
their creator) or named. ``from pymqueue import Queue, JoinableQueue, SimpleQueue`` replaces
``from multiprocessing import …`` of the same names.
"""

from __future__ import annotations

from pymqueue.queue import _engine as E
from pymqueue.queue._engine import wait_loop
from pymqueue.queue.sync import Queue

__all__ = ["JoinableQueue", "SimpleQueue", "join_queue"]


def join_queue(queue: Queue, timeout: float | None = None) -> bool:
    """Wait until every item added to ``queue`` has been marked done (``task_done``), or
    dropped or replaced by the engine; False if some are still unfinished at ``timeout``
    (None: for ever, interruptible with Ctrl-C). Any queue keeps the count;
    :class:`JoinableQueue` and :class:`~pymqueue.AsyncQueue` expose it."""
    engine = queue._h()
    rc = wait_loop(engine.join, timeout, E.E_PENDING)
    if rc == E.OK:
        return True
    if rc == E.E_PENDING:
        return False
    queue._fail(rc)


class JoinableQueue(Queue):
    """A queue with ``task_done()`` and ``join()``, like ``multiprocessing.JoinableQueue``.

    The *unfinished count* is kept in the queue's shared memory: every item added (``put``,
    ``add``, batches, by any process and any handle) counts until a ``task_done()`` marks it
    done, or the engine drops it (drop-oldest) or replaces it (addmode 2). It is published
    together with the item it counts, so a process killed at any instant leaves it exact;
    a worker killed after ``get()`` and before ``task_done()`` leaves its item unfinished
    for ever (``join()`` then waits for ever, as with multiprocessing).
    """

    __slots__ = ()

    def task_done(self) -> None:
        """Mark one item done. :class:`~pymqueue.TaskDoneError` (also ``ValueError``) when
        called more times than items were put."""
        self._h().task_done(1)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put has been marked done (None: for ever, interruptible
        with Ctrl-C). Returns False if some are still unfinished at ``timeout``."""
        return join_queue(self, timeout)

    def unfinished(self) -> int:
        """Items put and not yet marked done (nor dropped or replaced), read under the lock."""
        return self._h().unfinished()


class SimpleQueue(Queue):
    """``multiprocessing.SimpleQueue``'s ``put(obj)``, ``get()``, ``empty()``, ``close()``:
    an unbounded private queue (or a named one). The rest of :class:`Queue` works too."""

    __slots__ = ()
