"""Doorbells: ``Queue.fileno()`` for selectors, ``multiprocessing.connection.wait`` and
asyncio, and ``AsyncQueue`` waiting without threads (issue 9).

Real processes under fork and spawn; every wait is bounded only to turn a hang into a
failure, never used as synchronisation.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import resource
import selectors
import signal
import struct
import threading
from contextlib import ExitStack
from typing import Any

import pytest
from engine_helpers import kill_and_reap, mapped
from pymqueue._pmq_c import lib
from queue_helpers import fresh_queue

import pymqueue
from pymqueue import AsyncQueue, BellTableFull
from pymqueue.queue import _engine

BELLS = _engine.BELLS
LONG = 60.0  # seconds: only a hang reaches it


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> Any:
    return mp.get_context(request.param)


def start(ctx: Any, target: Any, *args: Any) -> Any:
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def join(p: Any) -> None:
    p.join(LONG)
    assert p.exitcode == 0, f"child exited with {p.exitcode}"


# ---- workers (module level: fork and spawn) ---------------------------------------------


def _add_on_request(q: pymqueue.Queue, conn: mpc.Connection) -> None:
    """Adds one item per message received ((key, value) or None to stop)."""
    while (msg := conn.recv()) is not None:
        q.add(*msg)
    q.close()


def _add_to_named(names: list[str], go: Any) -> None:
    go.wait()
    for i, name in enumerate(names):
        with pymqueue.Queue(name, create=False) as q:
            q.put(i)


def _register_and_hang(q: pymqueue.Queue, n: int, conn: mpc.Connection) -> None:
    """Takes n doorbells (armed) on q, says so, then waits to be killed."""
    handles = [pymqueue.Queue(q.name, create=False) for _ in range(n)]
    for h in handles:
        h.fileno()
    conn.send("armed")
    conn.recv()  # never comes: SIGKILL


def _wait_with_connection_wait(q: pymqueue.Queue, conn: mpc.Connection) -> None:
    """Waits for q with multiprocessing.connection.wait, reports the item."""
    assert q.fetch() is None
    q.arm()
    conn.send("armed")
    ready = mpc.wait([q], timeout=LONG)
    conn.send((ready == [q], q.fetch()))
    q.close()


def _crash_in_ring(q: pymqueue.Queue, point: int) -> None:
    lib.pmq_test_crash_at(point)
    q.add(b"k", b"v")
    os._exit(3)  # reached only if the crash point was not


def _run_crash(ctx: Any, target: Any, *args: Any) -> None:
    p = start(ctx, target, *args)
    p.join(LONG)
    assert p.exitcode == -signal.SIGKILL


# ---- selectors and multiprocessing.connection.wait --------------------------------------


def test_selector_wakes_on_each_add_from_another_process(ctx: Any) -> None:
    with fresh_queue(capacity=4096) as q, selectors.DefaultSelector() as sel:
        r, w = ctx.Pipe(duplex=False)
        p = start(ctx, _add_on_request, q, r)
        try:
            sel.register(q, selectors.EVENT_READ)  # calls fileno(): arms
            assert sel.select(0) == []  # empty and armed: not readable
            for i in range(5):
                w.send((b"k%d" % i, b"v%d" % i))
                events = sel.select(LONG)
                assert [key.fileobj for key, _ in events] == [q]
                assert q.fetch() == (b"k%d" % i, b"v%d" % i)
                assert q.fetch() is None
                assert q.arm() is False  # empty again: armed, and the ring drained
                assert sel.select(0) == []
            w.send(None)
            join(p)
            assert q.stats().bells == 1
        finally:
            kill_and_reap([p])


def test_fileno_of_a_queue_with_items_is_readable_at_once() -> None:
    with fresh_queue(capacity=4096) as q, selectors.DefaultSelector() as sel:
        q.add("a", "1")
        sel.register(q, selectors.EVENT_READ)
        assert len(sel.select(0)) == 1
        assert q.arm() is True  # still has the item: readable still
        assert len(sel.select(0)) == 1
        q.fetch()
        assert q.arm() is False
        assert sel.select(0) == []
        assert q.stats().bells_armed == 1
        sel.unregister(q)


def test_connection_wait_over_several_queues(ctx: Any) -> None:
    with ExitStack() as stack:
        qs = [stack.enter_context(fresh_queue(capacity=4096)) for _ in range(4)]
        conns = []
        procs = []
        for q in qs:
            r, w = ctx.Pipe(duplex=False)
            procs.append(start(ctx, _add_on_request, q, r))
            conns.append(w)
        try:
            assert mpc.wait(qs, timeout=0) == []
            for i in (2, 0, 3, 1, 2):
                conns[i].send((b"k", b"%d" % i))
                assert mpc.wait(qs, timeout=LONG) == [qs[i]]
                assert qs[i].fetch() == (b"k", b"%d" % i)
            # level-style: a queue that has items is ready every time wait() is called
            conns[1].send((b"k", b"a"))
            conns[3].send((b"k", b"b"))
            while len(ready := mpc.wait(qs, timeout=LONG)) < 2:
                assert ready  # one of the two came first
            assert set(map(id, ready)) == {id(qs[1]), id(qs[3])}
            assert set(map(id, mpc.wait(qs, timeout=0))) == {id(qs[1]), id(qs[3])}
            assert qs[1].fetch() == (b"k", b"a")
            assert qs[3].fetch() == (b"k", b"b")
            assert mpc.wait(qs, timeout=0) == []
            for w in conns:
                w.send(None)
            for p in procs:
                join(p)
        finally:
            kill_and_reap(procs)


def test_a_child_waits_on_its_own_bell_beside_the_parents(ctx: Any) -> None:
    """fork: the child inherits the parent's handle and bell, and makes its own."""
    with fresh_queue(capacity=4096) as q:
        parent_fd = q.fileno()
        r, w = ctx.Pipe()
        p = start(ctx, _wait_with_connection_wait, q, w)
        try:
            assert r.recv() == "armed"
            assert q.stats().bells == 2
            q.add(b"k", b"for the child")
            assert r.recv() == (True, (b"k", b"for the child"))
            join(p)
            # the child's close freed its bell only; the parent's is still here and rings
            assert q.stats().bells == 1
            assert q.fileno() == parent_fd
            assert mpc.wait([q], timeout=0) == []
        finally:
            kill_and_reap([p])


def test_close_unregisters_and_closes_the_socket() -> None:
    with fresh_queue(capacity=4096) as q:
        other = pymqueue.Queue(q.name, create=False)
        fd = other.fileno()
        os.fstat(fd)
        assert q.stats().bells == 1
        other.close()
        other.close()
        assert q.stats().bells == 0
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # closed (no other file was opened meanwhile)
        with pytest.raises(pymqueue.QueueClosed):
            other.fileno()


# ---- dead registrants, a full table --------------------------------------------------------


def test_killed_registrant_is_freed_by_the_next_add(ctx: Any) -> None:
    with fresh_queue(capacity=4096) as q:
        r, w = ctx.Pipe()
        p = start(ctx, _register_and_hang, q, 1, w)
        try:
            assert r.recv() == "armed"
            st = q.stats()
            assert (st.bells, st.bells_armed) == (1, 1)
        finally:
            kill_and_reap([p])
        assert p.exitcode == -signal.SIGKILL
        assert q.add(b"k", b"v") is True
        st = q.stats()
        assert (st.bells, st.bells_armed) == (0, 0)  # its ring found nobody: freed
        assert q.fetch() == (b"k", b"v")


def test_full_table_of_dead_registrants_is_probed_and_freed(ctx: Any) -> None:
    with fresh_queue(capacity=4096) as q:
        r, w = ctx.Pipe()
        p = start(ctx, _register_and_hang, q, BELLS, w)
        try:
            assert r.recv() == "armed"
            assert q.stats().bells == BELLS
        finally:
            kill_and_reap([p])
        q.fileno()  # the table is full of dead bells: the probe frees them
        st = q.stats()
        assert (st.bells, st.bells_armed) == (1, 1)


def test_full_table_raises_and_async_queue_falls_back(ctx: Any) -> None:
    with fresh_queue(capacity=4096) as q, ExitStack() as stack:
        holders = [stack.enter_context(pymqueue.Queue(q.name, create=False)) for _ in range(BELLS)]
        for h in holders:
            h.fileno()
        late = stack.enter_context(pymqueue.Queue(q.name, create=False))
        with pytest.raises(BellTableFull) as info:
            late.fileno()
        assert isinstance(info.value, OSError)
        assert q.name in str(info.value)
        assert "64" in str(info.value)
        assert q.stats().bells == BELLS  # live bells are kept

        r, w = ctx.Pipe(duplex=False)
        p = start(ctx, _add_on_request, q, r)
        try:

            async def main() -> tuple[Any, bool]:
                aq = AsyncQueue(late)
                task = asyncio.create_task(aq.get(timeout=LONG))
                await asyncio.sleep(0)  # the get looks, finds nothing, waits in a thread
                w.send((b"", b"\x80\x05K\x07."))  # pickle of 7
                value = await task
                loop = asyncio.get_running_loop()
                return value, loop._default_executor is not None  # type: ignore[attr-defined]

            value, used_thread = asyncio.run(main())
            assert value == 7
            assert used_thread
            w.send(None)
            join(p)
        finally:
            kill_and_reap([p])
        holders[0].close()
        late.fileno()  # a slot is free again


# ---- asyncio: a thousand queues, no threads ---------------------------------------------


def test_thousand_coroutines_on_thousand_queues_need_no_thread(ctx: Any) -> None:
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 256, hard), hard))
    with ExitStack() as stack:
        qs = [stack.enter_context(fresh_queue(capacity=4096)) for _ in range(n)]
        go = ctx.Event()
        p = start(ctx, _add_to_named, [q.name for q in qs], go)
        try:

            async def main() -> tuple[list[Any], int, int, object]:
                threads = threading.active_count()
                aqs = [AsyncQueue(q) for q in qs]
                tasks = [asyncio.create_task(aq.get()) for aq in aqs]
                await asyncio.sleep(0)  # every get ran up to its wait
                armed = sum(q.stats().bells_armed for q in qs)
                waiting_threads = threading.active_count()
                go.set()
                values = await asyncio.wait_for(asyncio.gather(*tasks), LONG)
                assert threading.active_count() == threads
                loop = asyncio.get_running_loop()
                return values, armed, waiting_threads - threads, loop._default_executor  # type: ignore[attr-defined]

            values, armed, extra_threads, executor = asyncio.run(main())
            assert values == list(range(n))
            assert armed == n
            assert extra_threads == 0
            assert executor is None  # no executor thread was ever started
            join(p)
        finally:
            kill_and_reap([p])


# ---- asyncio: cancellation, timeouts, close ------------------------------------------------


def test_cancelled_gets_lose_nothing(ctx: Any) -> None:
    with fresh_queue(capacity=4096) as q:
        r, w = ctx.Pipe(duplex=False)
        done_r, done_w = ctx.Pipe(duplex=False)
        p = start(ctx, _add_and_confirm, q, r, done_w)
        try:

            async def main() -> None:
                aq = AsyncQueue(q)
                tasks = [asyncio.create_task(aq.get()) for _ in range(10)]
                await asyncio.sleep(0)
                assert q.stats().bells_armed == 1  # one bell for the ten
                w.send(5)
                # Blocks the loop on purpose: the ring arrives, but no get runs before
                # every one of them is cancelled.
                assert done_r.recv() == 5
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with pytest.raises(asyncio.CancelledError):
                        await t
                assert q.size() == 5
                assert [await aq.get(timeout=0) for _ in range(5)] == list(range(5))
                assert await aq.fetch(timeout=0) is None
                bell = q._bell
                assert bell is not None
                assert not bell.reading
                assert not bell.futures

            asyncio.run(main())
            w.send(None)
            join(p)
        finally:
            kill_and_reap([p])


def _add_and_confirm(q: pymqueue.Queue, conn: mpc.Connection, done: mpc.Connection) -> None:
    while (n := conn.recv()) is not None:
        for i in range(n):
            q.put(i)
        done.send(n)
    q.close()


def test_ring_while_some_gets_are_cancelled_reaches_the_others() -> None:
    with fresh_queue(capacity=4096) as q, pymqueue.Queue(q.name, create=False) as adder:

        async def main() -> None:
            aq = AsyncQueue(q)
            cancelled = [asyncio.create_task(aq.get()) for _ in range(3)]
            kept = [asyncio.create_task(aq.get(timeout=LONG)) for _ in range(2)]
            await asyncio.sleep(0)
            adder.put("x")  # rings the shared bell: all five are woken
            adder.put("y")
            for t in cancelled:
                t.cancel()
            assert sorted(await asyncio.gather(*kept)) == ["x", "y"]
            for t in cancelled:
                with pytest.raises(asyncio.CancelledError):
                    await t
            assert q.size() == 0

        asyncio.run(main())


def test_timeout_raises_empty_and_leaves_no_reader() -> None:
    with fresh_queue(capacity=4096) as q:

        async def main() -> None:
            aq = AsyncQueue(q)
            with pytest.raises(pymqueue.Empty):
                await aq.get(timeout=0.05)
            assert await aq.fetch_many(3, timeout=0.01) == []
            bell = q._bell
            assert bell is not None
            assert not bell.reading
            assert not bell.futures
            loop = asyncio.get_running_loop()
            assert loop._default_executor is None  # type: ignore[attr-defined]
            q.put_many([1, 2])  # armed by the last wait: rings our own bell
            assert await aq.get_many(5, timeout=LONG) == [1, 2]

        asyncio.run(main())


def test_close_wakes_waiting_gets_with_queue_closed() -> None:
    with fresh_queue(capacity=4096) as q:
        handle = pymqueue.Queue(q.name, create=False)

        async def main() -> None:
            aq = AsyncQueue(handle)
            tasks = [asyncio.create_task(aq.get()) for _ in range(3)]
            await asyncio.sleep(0)
            handle.close()
            for t in tasks:
                with pytest.raises(pymqueue.QueueClosed):
                    await asyncio.wait_for(t, LONG)

        asyncio.run(main())
        assert q.stats().bells == 0


def test_a_lost_ring_is_made_up_by_the_recheck(ctx: Any) -> None:
    """A producer killed after its add and before its ring: the waiter still gets the item
    (within the wait's re-check period)."""
    with fresh_queue(capacity=4096) as q:

        async def main() -> tuple[bytes, bytes] | None:
            aq = AsyncQueue(q)
            task = asyncio.create_task(aq.fetch())
            await asyncio.sleep(0)
            assert q.stats().bells_armed == 1
            _run_crash(ctx, _crash_in_ring, q, 8)  # blocks the loop: fine, the item is in
            st = q.stats()
            assert (st.items, st.bells_armed) == (1, 0)  # taken, never rung
            return await asyncio.wait_for(task, LONG)

        assert asyncio.run(main()) == (b"k", b"v")


def test_recovery_rings_the_bells(ctx: Any) -> None:
    """A producer killed holding the lock after publishing: the next locker recovers and
    rings every bell (the dead holder may have disarmed them)."""
    with fresh_queue(capacity=4096) as q, selectors.DefaultSelector() as sel:
        sel.register(q, selectors.EVENT_READ)
        _run_crash(ctx, _crash_in_ring_holding_lock, q)
        assert sel.select(0) == []  # nobody rang
        assert q.size() == 1  # takes the lock: recovery, which rings
        assert len(sel.select(LONG)) == 1
        assert q.stats().recoveries == 1
        sel.unregister(q)


def _crash_in_ring_holding_lock(q: pymqueue.Queue) -> None:
    lib.pmq_test_crash_at(5)  # after the publishing store of an add, lock held
    q.add(b"k", b"v")
    os._exit(3)


# ---- layout ------------------------------------------------------------------------------


def test_header_size_is_checked_at_attach() -> None:
    with fresh_queue(capacity=4096) as q:
        with mapped(q) as m:
            (size,) = struct.unpack_from("<I", m, 12)
            struct.pack_into("<I", m, 12, size - 8 * (BELLS + 1))  # a header without bells
        with pytest.raises(pymqueue.InvalidSegment):
            pymqueue.Queue(q.name, create=False)
        with mapped(q) as m:
            struct.pack_into("<I", m, 12, size)
        pymqueue.Queue(q.name, create=False).close()


def test_bell_names_are_abstract_and_distinct() -> None:
    a = _engine.bell_name(1)
    b = _engine.bell_name(2**64 - 1)
    assert a == b"\0pymqueue.bell.0000000000000001"
    assert b == b"\0pymqueue.bell.ffffffffffffffff"
