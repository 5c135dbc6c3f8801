"""Processes killed at any instant never deadlock the others nor corrupt a queue.

A test-only hook makes a child SIGKILL itself at a numbered point inside an operation
(after taking the lock; half-way through writing a record; between the two publishing
steps of an overflow; just before and just after the publishing store), or take the lock
and keep it; the survivors must carry on at once, with every counter consistent.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal

import pytest
from pymqueue._pmq_c import lib
from queue_helpers import checked_value, fresh_queue, value_is_whole

import pymqueue

CTX = mp.get_context("fork")


def assert_consistent(q: pymqueue.Queue) -> list[tuple[bytes, bytes]]:
    """Counters add up, every item is whole, and (addmodes 1/2) keys are unique."""
    st = q.stats()
    items = q.peek_many(st.items + 10)
    assert len(items) == st.items == len(q)
    assert st.added == st.fetched + st.items + st.dropped + st.replaced
    for _, value in items:
        assert value_is_whole(value)
    if q.addmode != pymqueue.AddMode.APPEND:
        keys = [k for k, _ in items]
        assert len(keys) == len(set(keys))
    return items


def _hold_lock(q: pymqueue.Queue, w: mp.connection.Connection) -> None:
    assert lib.pmq_test_hold_lock(q._handle) == 0
    w.send("held")
    signal.pause()  # until the parent kills us


def test_lock_holder_killed_survivors_recover_at_once() -> None:
    with fresh_queue() as q:
        q.add("before", checked_value(0, 0))
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=_hold_lock, args=(q, w))
        p.start()
        assert r.recv() == "held"
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        q.add("after", checked_value(0, 1))  # would raise LockTimeout after 5 s
        assert [k for k, _ in assert_consistent(q)] == [b"before", b"after"]
        assert q.stats().recoveries == 1


def _crash_in_add(q: pymqueue.Queue, point: int, key: bytes, value: bytes) -> None:
    lib.pmq_test_crash_at(point)
    q.add(key, value)
    os._exit(3)  # reached only if the crash point was not


def _crash_in_fetch(q: pymqueue.Queue, point: int) -> None:
    lib.pmq_test_crash_at(point)
    q.fetch()
    os._exit(3)


def run_crash(target: object, *args: object) -> None:
    p = CTX.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("point", [1, 2, 4])
def test_add_killed_before_publishing_leaves_nothing(point: int) -> None:
    with fresh_queue() as q:
        q.add("a", checked_value(0, 0))
        run_crash(_crash_in_add, q, point, b"b", checked_value(0, 1))
        assert [k for k, _ in assert_consistent(q)] == [b"a"]
        assert q.stats().recoveries == 1
        q.add("c", checked_value(0, 2))
        assert [k for k, _ in assert_consistent(q)] == [b"a", b"c"]


def test_add_killed_after_publishing_is_complete() -> None:
    with fresh_queue() as q:
        run_crash(_crash_in_add, q, 5, b"b", checked_value(0, 1))
        assert [k for k, _ in assert_consistent(q)] == [b"b"]


def test_overflow_killed_between_drop_and_write_counts_the_drop() -> None:
    with fresh_queue(capacity=4096) as q:
        for i in range(20):
            q.add(b"k%d" % i, checked_value(0, i, 180))
        before = q.stats()
        run_crash(_crash_in_add, q, 3, b"new", checked_value(1, 0, 180))
        after = q.stats()
        assert after.dropped > before.dropped
        assert after.added == before.added
        assert b"new" not in [k for k, _ in assert_consistent(q)]


@pytest.mark.parametrize("point", [4, 5])
def test_addmode2_replace_killed_keeps_exactly_one_item_per_key(point: int) -> None:
    with fresh_queue(addmode=2) as q:
        for key in (b"a", b"b", b"c"):
            q.add(key, checked_value(0, key[0]))
        run_crash(_crash_in_add, q, point, b"b", checked_value(1, 0))
        items = assert_consistent(q)
        keys = [k for k, _ in items]
        # Before publishing: the old b stays; after: the new b is at the tail.
        assert keys == ([b"a", b"b", b"c"] if point == 4 else [b"a", b"c", b"b"])
        q.add(b"b", checked_value(2, 0))  # the rebuilt index still finds b
        assert [k for k, _ in assert_consistent(q)] == [b"a", b"c", b"b"]


def test_fetch_killed_before_publishing_keeps_the_item() -> None:
    with fresh_queue() as q:
        q.add("a", checked_value(0, 0))
        run_crash(_crash_in_fetch, q, 6)
        assert [k for k, _ in assert_consistent(q)] == [b"a"]
        assert q.fetch() is not None


def _chaos_worker(q: pymqueue.Queue, wid: int, seed: int, w: mp.connection.Connection) -> None:
    rng = random.Random(seed)
    seq = 0
    while True:
        for _ in range(50):
            op = rng.random()
            if op < 0.4:
                q.add(b"k%d" % rng.randrange(200), checked_value(wid, seq, rng.randrange(40, 400)))
                seq += 1
            elif op < 0.55:
                batch = [
                    (b"k%d" % rng.randrange(200), checked_value(wid, seq + i)) for i in range(64)
                ]
                q.add_many(batch)
                seq += 64
            elif op < 0.85:
                item = q.fetch()
                assert item is None or value_is_whole(item[1])
            else:
                for _, value in q.fetch_many(64):
                    assert value_is_whole(value)
        w.send_bytes(b".")  # progress: the parent picks its moment to kill from these


@pytest.mark.parametrize("addmode", [0, 2])
def test_random_kills_under_load_never_deadlock_or_corrupt(addmode: int) -> None:
    rng = random.Random(1234 + addmode)
    with fresh_queue(size=300, capacity=32 * 1024, addmode=addmode) as q:
        pipes: dict[int, tuple[mp.connection.Connection, mp.Process]] = {}

        def start(wid: int) -> None:
            r, w = CTX.Pipe(duplex=False)
            p = CTX.Process(target=_chaos_worker, args=(q, wid, rng.randrange(1 << 30), w))
            p.start()
            w.close()
            pipes[wid] = (r, p)

        for wid in range(3):
            start(wid)
        try:
            for kill in range(40):
                victim = rng.randrange(3)
                r, p = pipes[victim]
                for _ in range(rng.randrange(1, 4)):
                    r.recv_bytes()  # the victim made progress: kill it somewhere in its next ops
                os.kill(p.pid, signal.SIGKILL)
                p.join(10)
                assert p.exitcode == -signal.SIGKILL, "a worker failed on its own"
                r.close()
                start(3 + kill)
                del pipes[victim]
                pipes[victim] = pipes.pop(3 + kill)
                # One snapshot under the lock (which would time out if it were wedged).
                st = q.stats()
                assert st.added == st.fetched + st.items + st.dropped + st.replaced
        finally:
            for r, p in pipes.values():
                p.kill()
                p.join(10)
                r.close()
        items = assert_consistent(q)
        assert len(items) <= 300
        while q.fetch() is not None:
            pass
        assert_consistent(q)
