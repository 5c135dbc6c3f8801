"""The per-item fast paths: ``fetch`` cutting items with a struct per shape (and slicing
shapes it has no struct for), ``put``/``get`` inlining add/fetch with the default pickle,
and every way off those paths (other serializers, big items, empty, full, closed)."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from typing import Any

import pytest
from queue_helpers import fresh_queue, run_in

import pymqueue
from pymqueue import Overflow
from pymqueue.queue import sync


def test_fetch_items_of_ever_new_shapes() -> None:
    """More shapes than the struct cache holds: every item comes back whole, the cache stays
    bounded, and shapes past it are sliced (not learnt); a learnt shape is cut by its
    struct."""
    with fresh_queue() as q:
        for i in range(2 * sync._CUTS_MAX + 50):
            key, value = b"k" * (i % 7), bytes([i % 251]) * (i + 1)
            q.add(key, value)
            assert q.fetch() == (key, value)
            assert len(sync._CUTS) <= sync._CUTS_MAX
        assert len(sync._CUTS) == sync._CUTS_MAX
        assert sync._CUTS_ROOM == [False]
        new_shape = 5 << 32 | 100_000
        q.add(b"fresh", b"n" * 100_000)
        assert q.fetch() == (b"fresh", b"n" * 100_000)
        assert new_shape not in sync._CUTS
        learnt = next(iter(sync._CUTS))
        key, value = b"K" * (learnt >> 32), b"V" * (learnt & 0xFFFFFFFF)
        q.add(key, value)
        assert q.fetch() == (key, value)


class _ByteArraySerializer:
    def dumps(self, obj: Any, /) -> Any:
        return bytearray(pickle.dumps(obj))

    def loads(self, data: bytes, /) -> Any:
        assert type(data) is bytes
        return ("loaded", pickle.loads(data))


def test_put_get_with_another_serializer() -> None:
    with fresh_queue(serializer=_ByteArraySerializer()) as q:
        q.put({"a": 1})
        q.put_nowait([2])
        assert q.get() == ("loaded", {"a": 1})
        assert q.get_nowait() == ("loaded", [2])


def test_get_of_an_item_larger_than_the_buffer() -> None:
    big = {"blob": b"x" * (300 * 1024)}
    with fresh_queue() as q:
        q.put(big)
        q.put("small")
        assert q.get() == big
        assert q.get() == "small"
        q.add(b"raw", b"y" * (200 * 1024))
        assert q.fetch() == (b"raw", b"y" * (200 * 1024))


def test_get_empty_and_put_full() -> None:
    with fresh_queue(size=1, policy=Overflow.BLOCK) as q:
        with pytest.raises(pymqueue.Empty):
            q.get(block=False)
        with pytest.raises(pymqueue.Empty):
            q.get(timeout=0)
        q.put(1)
        with pytest.raises(pymqueue.Full):
            q.put(2, block=False)
        with pytest.raises(pymqueue.Full):
            q.put(2, timeout=0.001)
        assert q.stats().rejected == 2
        with pytest.raises(ValueError, match="non-negative"):
            q.put(3, timeout=-1)
        with pytest.raises(ValueError, match="non-negative"):
            q.get(timeout=-1)
        assert q.get() == 1


def test_put_get_on_a_closed_queue() -> None:
    with fresh_queue() as q:
        q.close()
        with pytest.raises(pymqueue.QueueClosed):
            q.put(1)
        with pytest.raises(pymqueue.QueueClosed):
            q.get()
        with pytest.raises(pymqueue.QueueClosed):
            q.fetch()


def put_when_a_getter_sleeps(q: pymqueue.Queue, objs: list[Any]) -> None:
    """Waits (by polling the queue's counters, not by sleeping) until the parent's get()
    sleeps on the empty queue, then puts."""
    for obj in objs:
        while q.stats().getters_waiting == 0:
            pass
        q.put(obj)
    q.close()


def test_get_waits_for_an_item_from_another_process(ctx: mp.context.BaseContext) -> None:
    objs: list[Any] = [1, "two", {"three": b"3" * 100_000}]
    with fresh_queue() as q:
        child = run_in(ctx, put_when_a_getter_sleeps, q, objs)
        assert [q.get(timeout=None) for _ in objs] == objs
        child.join(60)
        assert child.exitcode == 0
