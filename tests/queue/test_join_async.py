"""The unfinished count from every side: ``stats().unfinished`` and ``AsyncQueue.task_done``
/ ``join`` (the asyncio counterpart of ``JoinableQueue``), with consumers in real processes
under fork and spawn."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

import pytest
from queue_helpers import fresh_queue, run_in

import pymqueue
from pymqueue import AsyncQueue, JoinableQueue


def test_stats_show_the_unfinished_count() -> None:
    q = JoinableQueue()
    try:
        for i in range(3):
            q.put(i)
        q.get()
        q.task_done()
        assert q.stats().unfinished == 2 == q.unfinished()
    finally:
        q.close()
    with fresh_queue(size=2) as bounded:  # drop-oldest: a dropped item counts as done
        for i in range(3):
            bounded.add(b"k", b"%d" % i)
        st = bounded.stats()
        assert (st.dropped, st.unfinished) == (1, 2)


def _work(q: pymqueue.Queue, n: int) -> None:
    for _ in range(n):
        item = q.fetch(timeout=60)
        assert item is not None
        q._h().task_done(1)  # what AsyncQueue.task_done does, from another process


def test_async_join_returns_once_other_processes_marked_every_item_done(
    ctx: mp.context.BaseContext,
) -> None:
    with fresh_queue() as q:
        aq = AsyncQueue(q)
        q.add_many([(b"k", b"%d" % i) for i in range(200)])
        assert asyncio.run(aq.join(timeout=0)) is False  # 200 unfinished
        workers = [run_in(ctx, _work, q, 100) for _ in range(2)]
        assert asyncio.run(aq.join(timeout=120)) is True
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        assert q.stats().unfinished == 0


def test_async_join_leaves_the_loop_free_and_task_done_in_the_loop_ends_it() -> None:
    async def main(aq: AsyncQueue) -> list[Any]:
        waiter = asyncio.ensure_future(aq.join())
        item = await aq.get(timeout=10)
        await asyncio.sleep(0)
        assert not waiter.done()  # one item still unfinished
        aq.task_done()
        return [item, await asyncio.wait_for(waiter, 60)]

    with fresh_queue() as q:
        q.put("job")
        assert asyncio.run(main(AsyncQueue(q))) == ["job", True]


def test_a_cancelled_join_ends_and_the_count_is_untouched() -> None:
    async def main(aq: AsyncQueue) -> None:
        waiter = asyncio.ensure_future(aq.join())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    with fresh_queue() as q:
        q.put("job")
        asyncio.run(main(AsyncQueue(q)))
        assert q.stats().unfinished == 1


def test_task_done_more_often_than_items_is_an_error() -> None:
    with fresh_queue() as q:
        q.put("job")
        aq = AsyncQueue(q)
        aq.task_done()
        with pytest.raises(pymqueue.TaskDoneError):
            aq.task_done()
        with pytest.raises(ValueError, match="task_done"):
            aq.task_done()
