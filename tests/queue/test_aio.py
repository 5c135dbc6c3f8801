"""AsyncQueue: waits never block the event loop; cancellation loses nothing."""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import pytest
from queue_helpers import fresh_queue

import pymqueue
from pymqueue import AsyncQueue


def _put_later(q: pymqueue.Queue, go: mp.synchronize.Event, obj: object) -> None:
    go.wait()
    q.put(obj)
    q.close()


def test_get_waits_for_another_process_while_the_loop_keeps_running() -> None:
    ctx = mp.get_context("spawn")
    with fresh_queue() as q:
        go = ctx.Event()
        p = ctx.Process(target=_put_later, args=(q, go, {"hello": 1}))
        p.start()

        async def main() -> tuple[object, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    if ticks == 20:
                        go.set()  # the loop kept running while get() waited
                    await asyncio.sleep(0)

            t = asyncio.create_task(ticker())
            value = await AsyncQueue(q).get(timeout=30)
            t.cancel()
            return value, ticks

        value, ticks = asyncio.run(main())
        p.join(30)
        assert value == {"hello": 1}
        assert ticks >= 20


def test_timeout_and_cancellation_lose_nothing() -> None:
    with fresh_queue() as q:

        async def main() -> None:
            aq = AsyncQueue(q)
            with pytest.raises(pymqueue.Empty):
                await aq.get(timeout=0.05)
            task = asyncio.create_task(aq.fetch())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await aq.put("kept")
            assert await aq.get(timeout=5) == "kept"
            assert await aq.fetch(timeout=0) is None

        asyncio.run(main())


def test_block_policy_add_waits_without_blocking_the_loop() -> None:
    with fresh_queue(size=1, policy="block") as q:

        async def main() -> None:
            aq = AsyncQueue(q)
            await aq.add("a", "1")
            adder = asyncio.create_task(aq.add("b", "2", timeout=30))
            await asyncio.sleep(0)
            assert not adder.done()
            assert await aq.fetch() == (b"a", b"1")  # the loop is free to consume
            assert await adder is True
            assert await aq.fetch_many(5) == [(b"b", b"2")]
            with pytest.raises(pymqueue.Full):
                await aq.add_many([("c", "3"), ("d", "4")], timeout=0.05)
            assert await aq.put_many([]) == 0

        asyncio.run(main())


def test_opens_by_name_and_closes() -> None:
    with fresh_queue() as q:

        async def main() -> None:
            async with AsyncQueue(q.name, create=False) as aq:
                await aq.put_many([1, 2, 3])
                assert await aq.get_many(10) == [1, 2, 3]
                assert aq.size() == 0
                assert aq.stats().added == 3
            assert aq.queue.closed

        asyncio.run(main())


def _add_batch_later(q: pymqueue.Queue, go: mp.synchronize.Event) -> None:
    go.wait()
    q.add_many([(b"a", b"1"), (b"b", b"2")])
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fetch_batch_waits_for_another_process_while_the_loop_keeps_running(
    method: str,
) -> None:
    ctx = mp.get_context(method)
    with fresh_queue() as q:
        go = ctx.Event()
        p = ctx.Process(target=_add_batch_later, args=(q, go))
        p.start()

        async def main() -> tuple[list[tuple[bytes, bytes]], int, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    if ticks == 20:
                        go.set()  # the loop kept running while fetch_batch() waited
                    await asyncio.sleep(0)

            t = asyncio.create_task(ticker())
            aq = AsyncQueue(q)
            got: list[tuple[bytes, bytes]] = []
            while len(got) < 2:  # the two items may come in one batch or two
                got += await aq.fetch_batch(10, timeout=30)
            t.cancel()
            empty = await aq.fetch_batch(10, timeout=0)
            return got, ticks, len(empty)

        got, ticks, empty = asyncio.run(main())
        p.join(30)
        assert p.exitcode == 0
        assert got == [(b"a", b"1"), (b"b", b"2")]
        assert ticks >= 20
        assert empty == 0
