"""Waits between processes that can be killed, stopped or slow: futex eventcounts.

* Consumers and producers asleep in the engine's wait are killed (SIGKILL, SIGTERM) in random
  subsets: the survivors are all woken, the next call of anyone goes through at once, nothing
  is lost or duplicated (the bug this replaces: a waiter killed inside a process-shared
  pthread condvar wait makes glibc 2.36's next pthread_cond_signal block for ever).
* A live process that holds the lock: every bounded call returns by its deadline.
* Lost wake-ups: a non-consuming waiter never steals a consumer's wake-up; a putter waiting
  for room for a large item is woken when that much room appears.

Waiters in "c" mode call pmq_fetch / pmq_add with an infinite timeout straight from C, so a
missed wake-up cannot be hidden by the Python tier's 50 ms slices.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from engine_helpers import (
    FOREVER,
    SEC,
    asleep_in_futex,
    c_add,
    c_fetch,
    kill_and_reap,
    set_lock_timeout,
    stopped,
    wait_all_asleep,
    wait_until,
)
from pymqueue._pmq_c import ffi, lib
from queue_helpers import fresh_queue

import pymqueue

ROUNDS = 3
WAITERS = 4


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> Iterator[Any]:
    context = mp.get_context(request.param)
    yield context
    for child in mp.active_children():
        child.kill()
        child.join(10)


@pytest.fixture(autouse=True)
def short_lock_timeout() -> Iterator[None]:
    set_lock_timeout(2 * SEC)  # a wedged lock fails a test in 2 s
    yield
    set_lock_timeout(5 * SEC)


# ---- workers (module level: fork and spawn) ------------------------------------------------


def _consume_one(q: pymqueue.Queue, mode: str, out: Any) -> None:
    """Wait for one item (for ever), report it, exit."""
    out.send("waiting")
    if mode == "c":
        rc, value = c_fetch(q, FOREVER)
        out.send((rc, value))
    else:
        item = q.fetch(timeout=None)
        out.send((0, item[1] if item else b""))
    out.close()


def _produce_one(q: pymqueue.Queue, mode: str, value: bytes, out: Any) -> None:
    """Add one item to a full block-policy queue (waiting for ever), report, exit."""
    out.send("waiting")
    if mode == "c":
        out.send(c_add(q, b"", value, FOREVER))
    else:
        out.send(0 if q.add(b"", value, timeout=None) else 1)
    out.close()


def _wait_readable(q: pymqueue.Queue, out: Any) -> None:
    out.send("waiting")
    out.send(int(lib.pmq_wait(q._handle, lib.PMQ_WAIT_READABLE, 0, FOREVER)))


def _hold_lock_and_stop(q: pymqueue.Queue, out: Any) -> None:
    assert lib.pmq_test_hold_lock(q._handle) == 0
    out.send("held")
    os.kill(os.getpid(), signal.SIGSTOP)
    signal.pause()


def _bounded_fetch(q: pymqueue.Queue, timeout_ns: int, out: Any) -> None:
    out.send("waiting")
    t0 = time.monotonic()
    rc, _ = c_fetch(q, timeout_ns)
    out.send((rc, time.monotonic() - t0))


def _crash_after_publish(q: pymqueue.Queue, value: bytes) -> None:
    lib.pmq_test_crash_at(5)  # killed after publishing, before waking anyone
    q.add(b"", value)
    os._exit(3)


# ---- dead waiters --------------------------------------------------------------------------


def start(ctx: Any, target: Any, *args: Any) -> tuple[Any, Any]:
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*args, w))
    p.start()
    w.close()
    assert r.recv() == "waiting"
    return p, r


def assert_goes_through_at_once(q: pymqueue.Queue, call: Any, expected: int) -> None:
    """A try-once call answers at once with its own result: a wedged lock (or a signal that
    blocks) fails the test rather than hanging it."""
    t0 = time.monotonic()
    assert call() == expected
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("mode", ["py", "c"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_consumers_never_block_the_others(ctx: Any, mode: str, sig: int) -> None:
    rng = random.Random(f"{mode}{sig}")
    with fresh_queue() as q:
        sent: list[bytes] = []
        got: list[bytes] = []
        for rnd in range(ROUNDS):
            procs = [start(ctx, _consume_one, q, mode) for _ in range(WAITERS)]
            wait_all_asleep(q, [p.pid for p, _ in procs], "getters_waiting")
            victims = rng.sample(procs, rng.randrange(1, WAITERS))
            kill_and_reap([p for p, _ in victims], sig)
            for p, _ in victims:
                assert p.exitcode == -sig
            survivors = [pr for pr in procs if pr not in victims]
            assert_goes_through_at_once(q, lambda: c_fetch(q, 0)[0], lib.PMQ_E_EMPTY)
            for i in range(len(survivors)):
                value = b"r%d-%d" % (rnd, i)
                sent.append(value)
                assert c_add(q, b"", value, 2 * SEC) == 0
            for p, r in survivors:
                assert r.poll(20), "a surviving consumer was never woken"
                rc, value = r.recv()
                assert rc == 0
                got.append(value)
                p.join(10)
                assert p.exitcode == 0
        assert sorted(got) == sorted(sent), "items lost or duplicated"
        assert len(q) == 0
        st = q.stats()
        assert st.added == st.fetched


@pytest.mark.parametrize("mode", ["py", "c"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_producers_never_block_the_others(ctx: Any, mode: str, sig: int) -> None:
    rng = random.Random(f"p{mode}{sig}")
    with fresh_queue(size=2, policy="block") as q:
        expected: list[bytes] = []
        got: list[bytes] = []
        for rnd in range(ROUNDS):
            for i in range(2):
                value = b"fill%d-%d" % (rnd, i)
                assert c_add(q, b"", value, 0) == 0
                expected.append(value)
            procs = [
                start(ctx, _produce_one, q, mode, b"p%d-%d" % (rnd, i)) for i in range(WAITERS)
            ]
            wait_all_asleep(q, [p.pid for p, _ in procs], "putters_waiting")
            victims = rng.sample(procs, rng.randrange(1, WAITERS))
            kill_and_reap([p for p, _ in victims], sig)
            survivors = [pr for pr in procs if pr not in victims]
            assert_goes_through_at_once(q, lambda: c_add(q, b"", b"-", 0), lib.PMQ_E_FULL)
            expected += [b"p%d-%d" % (rnd, procs.index(pr)) for pr in survivors]
            # Each fetch makes room for one survivor; all of them must get through.
            for _ in range(2 + len(survivors)):
                rc, value = c_fetch(q, 20 * SEC)
                assert rc == 0, "a surviving producer was never woken"
                got.append(value)
            for p, r in survivors:
                assert r.recv() == 0
                p.join(10)
                assert p.exitcode == 0
            assert c_fetch(q, 0)[0] == lib.PMQ_E_EMPTY
        assert sorted(got) == sorted(expected), "items lost or duplicated"
        st = q.stats()
        assert st.added == st.fetched == len(expected)


# ---- a live lock holder --------------------------------------------------------------------


def test_bounded_calls_return_by_their_deadline_while_a_stopped_process_holds_the_lock(
    ctx: Any,
) -> None:
    set_lock_timeout(1 * SEC)
    with fresh_queue(size=1, policy="block") as q:
        sleeper, sleeper_pipe = start(ctx, _bounded_fetch, q, 2 * SEC)
        wait_all_asleep(q, [sleeper.pid], "getters_waiting")

        r, w = ctx.Pipe(duplex=False)
        holder = ctx.Process(target=_hold_lock_and_stop, args=(q, w))
        holder.start()
        w.close()
        try:
            assert r.recv() == "held"
            wait_until(lambda: stopped(holder.pid), "the holder stopped")

            for call, t in [
                (lambda: q.fetch(timeout=0.3), 0.3),
                (lambda: q.get(timeout=0.3), 0.3),
                (lambda: q.add(b"k", b"v", timeout=0.3), 0.3),
                (lambda: q.fetch_many(5, timeout=0.3), 0.3),
                (lambda: q.wait(readable=False, timeout=0.3), 0.3),
                (q.fetch, 1.0),  # no deadline: the process lock timeout
            ]:
                t0 = time.monotonic()
                with pytest.raises(pymqueue.LockTimeout):
                    call()
                assert time.monotonic() - t0 < t + 0.5
            t0 = time.monotonic()
            assert c_fetch(q, SEC // 2)[0] == lib.PMQ_E_LOCKTIMEOUT
            assert time.monotonic() - t0 < 0.5 + 0.5
            t0 = time.monotonic()
            assert c_add(q, b"", b"x", 0) == lib.PMQ_E_LOCKTIMEOUT  # try-once: the 10 ms floor
            assert time.monotonic() - t0 < 0.5

            # The fetch that was asleep before the lock was taken also keeps its deadline.
            assert sleeper_pipe.poll(2 + 0.5 + 0.5)
            rc, elapsed = sleeper_pipe.recv()
            assert rc in (lib.PMQ_E_LOCKTIMEOUT, lib.PMQ_E_EMPTY)
            assert elapsed < 2 + 0.5
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(10)
        # recovered from the dead holder at once
        assert_goes_through_at_once(q, lambda: c_add(q, b"", b"x", 0), 0)
        assert_goes_through_at_once(q, lambda: c_fetch(q, 0), (0, b"x"))
        assert q.stats().recoveries == 1


# ---- lost wake-ups -------------------------------------------------------------------------


def test_a_wait_readable_never_steals_the_consumers_wake_up(ctx: Any) -> None:
    with fresh_queue() as q:
        waiter, waiter_pipe = start(ctx, _wait_readable, q)
        consumer, consumer_pipe = start(ctx, _consume_one, q, "c")
        wait_all_asleep(q, [waiter.pid, consumer.pid], "getters_waiting")
        assert c_add(q, b"", b"the one", 2 * SEC) == 0
        assert consumer_pipe.poll(20), "the consumer was not woken"
        assert consumer_pipe.recv() == (0, b"the one")
        # The waiter was woken too but found the queue empty again: it waits on, and takes
        # nothing when an item stays.
        assert c_add(q, b"", b"second", 2 * SEC) == 0
        assert waiter_pipe.poll(20), "the waiter was not woken"
        assert waiter_pipe.recv() == 0
        assert c_fetch(q, 0) == (0, b"second")
        for p in (waiter, consumer):
            p.join(10)


def test_fetch_finds_the_item_there_at_its_deadline(ctx: Any) -> None:
    """An item published by a process killed before it could wake anyone: the fetch still
    returns it, at the latest when it looks once more at its deadline."""
    with fresh_queue() as q:
        fetcher, pipe = start(ctx, _bounded_fetch, q, 3 * SEC)
        wait_all_asleep(q, [fetcher.pid], "getters_waiting")
        crasher = ctx.Process(target=_crash_after_publish, args=(q, b"late"))
        crasher.start()
        crasher.join(10)
        assert crasher.exitcode == -signal.SIGKILL
        assert pipe.poll(3 + 0.5 + 1)
        rc, elapsed = pipe.recv()
        assert rc == 0
        assert elapsed < 3 + 0.5
        fetcher.join(10)
        assert len(q) == 0


def test_c_fetch_with_a_deadline_returns_an_item_added_meanwhile() -> None:
    with fresh_queue() as q:
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(c_fetch(q, 3 * SEC)))
        t.start()
        wait_until(lambda: q.stats().getters_waiting == 1, "the fetch sleeps")
        q.add(b"", b"meanwhile")
        t.join(3 + 0.5)
        assert result == [(0, b"meanwhile")]


def _put_big(q: pymqueue.Queue, out: Any) -> None:
    out.send("waiting")
    out.send(c_add(q, b"", b"B" * 2000, FOREVER))


def test_a_putter_waiting_for_room_for_a_large_item_is_woken(ctx: Any) -> None:
    with fresh_queue(capacity=4096, policy="block") as q:
        n = 0
        while c_add(q, b"", b"s" * 40, 0) == 0:  # 64-byte records until full
            n += 1
        putter, pipe = start(ctx, _put_big, q)
        wait_all_asleep(q, [putter.pid], "putters_waiting")
        fetched = 0
        while not pipe.poll(0):
            assert fetched < n, "room for the large item appeared but the putter slept on"
            rc, _ = c_fetch(q, 2 * SEC)
            assert rc == 0
            fetched += 1
            if pipe.poll(0):
                break
            # The fetch took the putter's sleep flag to wake it: the flag is up again only
            # once it looked and went back to sleep. Make more room only then.
            wait_until(
                lambda: (
                    pipe.poll(0) or (q.stats().putters_waiting == 1 and asleep_in_futex(putter.pid))
                ),
                "the putter looks again",
            )
        assert pipe.recv() == 0
        putter.join(10)
        # It got in as soon as the ring had the 2024 bytes it needs, not at a low-water mark.
        assert fetched <= (2024 + 63) // 64 + 1
        assert q.stats().items == n - fetched + 1


# ---- shutdown ------------------------------------------------------------------------------


def test_shutdown_wakes_this_handles_waiters_with_closed() -> None:
    with fresh_queue() as q:
        other = pymqueue.Queue(q.name, create=False)
        try:
            results: list[Any] = []
            threads = [
                threading.Thread(target=lambda: results.append(c_fetch(q, FOREVER)[0])),
                threading.Thread(
                    target=lambda: results.append(
                        lib.pmq_wait(q._handle, lib.PMQ_WAIT_READABLE, 0, FOREVER)
                    )
                ),
            ]
            for t in threads:
                t.start()
            wait_until(lambda: q.stats().getters_waiting == 1, "the waiters sleep")
            lib.pmq_shutdown(q._handle)
            for t in threads:
                t.join(5)
                assert not t.is_alive()
            assert results == [lib.PMQ_E_CLOSED] * 2
            assert c_fetch(q, 0)[0] == lib.PMQ_E_CLOSED  # later calls too
            # Another handle of the same queue is not affected.
            other.add(b"k", b"v")
            assert other.fetch() == (b"k", b"v")
        finally:
            other.close()


def test_spin_budget_can_be_set_and_zero_never_spins() -> None:
    with fresh_queue() as q:
        lib.pmq_set_spin(q._handle, 0)
        t0 = time.monotonic()
        assert c_fetch(q, SEC // 5)[0] == lib.PMQ_E_EMPTY
        assert 0.2 <= time.monotonic() - t0 < 0.2 + 0.5
        lib.pmq_set_default_spin(0)
        try:
            with pymqueue.Queue(q.name, create=False) as q2:
                q.add(b"", b"x")
                assert c_fetch(q2, SEC)[1] == b"x"
        finally:
            lib.pmq_set_default_spin(lib.PMQ_DEFAULT_SPIN_NS)
    assert ffi.sizeof("pmq_trust") == 8 + 4 * lib.PMQ_TRUST_MAX_OWNERS
