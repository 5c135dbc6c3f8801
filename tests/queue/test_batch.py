"""Batches: ``fetch_batch`` and its :class:`ItemBatch`, ``add_many``'s split path (keys and
values joined apart, one C call), ``put_many``/``get_many`` through them."""

from __future__ import annotations

import gc
import multiprocessing as mp
import pickle
from array import array
from typing import Any

import pytest
from queue_helpers import checked_value, fresh_queue, parse_value, run_in, value_is_whole

import pymqueue
from pymqueue import Overflow
from pymqueue.queue.batch import ItemBatch

ITEMS = [(b"", b""), (b"k1", b"value-1"), (b"key-two", b""), (b"k" * 300, b"v" * 5000)]


# ---- ItemBatch --------------------------------------------------------------------------


def test_fetch_batch_is_a_sequence_of_the_items_oldest_first() -> None:
    with fresh_queue() as q:
        assert q.add_many(ITEMS) == len(ITEMS)
        b = q.fetch_batch(10)
        assert isinstance(b, ItemBatch)
        assert len(b) == len(ITEMS)
        assert bool(b)
        assert list(b) == ITEMS
        assert b.items() == ITEMS
        assert b.keys() == [k for k, _ in ITEMS]
        assert b.values() == [v for _, v in ITEMS]
        assert [b[i] for i in range(len(ITEMS))] == ITEMS
        assert b[-1] == ITEMS[-1]
        assert b[1:3] == ITEMS[1:3]
        assert ITEMS[2] in b
        assert b.index(ITEMS[3]) == 3
        assert b.nbytes == sum(len(k) + len(v) for k, v in ITEMS)
        assert f"items={len(ITEMS)}" in repr(b)
        assert all(type(x) is bytes for item in b for x in item)
        with pytest.raises(IndexError):
            b[len(ITEMS)]
        with pytest.raises(IndexError):
            b[-len(ITEMS) - 1]
        assert len(q) == 0


def test_a_batch_pickles_as_its_items() -> None:
    with fresh_queue() as q:
        q.add_many(ITEMS)
        b = pickle.loads(pickle.dumps(q.fetch_batch(10)))
        assert isinstance(b, ItemBatch)
        assert b.items() == ITEMS
        assert b.values() == [v for _, v in ITEMS]
        assert bytes(b.view(3)[1]) == ITEMS[3][1]


def test_fetch_batch_takes_at_most_max_items() -> None:
    with fresh_queue() as q:
        q.add_many([(b"k%d" % i, b"v%d" % i) for i in range(10)])
        assert q.fetch_batch(3).items() == [(b"k%d" % i, b"v%d" % i) for i in range(3)]
        assert len(q) == 7
        assert q.fetch_batch(100).keys() == [b"k%d" % i for i in range(3, 10)]


def test_empty_batch() -> None:
    with fresh_queue() as q:
        for b in (q.fetch_batch(5), q.fetch_batch(5, timeout=0.01), q.fetch_batch(0)):
            assert len(b) == 0
            assert not b
            assert list(b) == b.items() == b.values() == b.keys() == []
            assert b.nbytes == 0
            with pytest.raises(IndexError):
                b[0]


def test_views_are_the_batchs_own_and_outlive_it() -> None:
    with fresh_queue() as q:
        q.add_many([(b"a", b"x" * 100), (b"b", b"y" * 100)])
        b = q.fetch_batch(2)
        k, v = b.view(1)
        assert (bytes(k), bytes(v)) == (b"b", b"y" * 100)
        assert v.readonly
        with pytest.raises(TypeError):
            v[0] = 0  # type: ignore[index]
        del b
        gc.collect()
        for _ in range(50):  # later batches never write into the earlier batch's buffer
            q.add_many([(b"c", b"z" * 100)] * 3)
            assert q.fetch_batch(3).values() == [b"z" * 100] * 3
        assert (bytes(k), bytes(v)) == (b"b", b"y" * 100)


def test_items_larger_than_the_buffer() -> None:
    big = b"B" * (200 * 1024)  # more than the 64 KiB a batch buffer starts with
    with fresh_queue() as q:
        q.add_many([(b"1", big), (b"2", b"small"), (b"3", big + b"!")])
        b = q.fetch_batch(10)
        assert b.items() == [(b"1", big), (b"2", b"small"), (b"3", big + b"!")]
        assert [len(v) for v in b.values()] == [len(big), 5, len(big) + 1]
        assert bytes(b.view(2)[1]) == big + b"!"


def test_a_batch_spanning_several_buffers_is_one_batch_in_order() -> None:
    items = [(b"%06d" % i, checked_value(0, i, 1000)) for i in range(300)]  # ~300 KB
    with fresh_queue() as q:
        q.add_many(items)
        b = q.fetch_batch(1000)
        assert len(b) == 300
        assert b.items() == items
        assert b[299] == items[299]
        assert b.nbytes == sum(len(k) + len(v) for k, v in items)


def test_max_items_far_beyond_the_queue_allocates_for_what_is_there() -> None:
    """Empty items never fill a buffer: a batch call asks for at most 65 536 items at a
    time, so a huge max_items neither allocates lengths for all of them nor loses any."""
    n = 70_000
    with fresh_queue() as q:
        q.add_many([(b"", b"")] * n)
        b = q.fetch_batch(10**12)
        assert len(b) == n
        assert b.nbytes == 0
        assert b.values()[-1] == b""
        q.add_many([(b"", b"x")] * n)
        got = q.fetch_many(10**12)
        assert got == [(b"", b"x")] * n


def test_fetch_batch_on_a_closed_queue() -> None:
    with fresh_queue() as q:
        q.close()
        with pytest.raises(pymqueue.QueueClosed):
            q.fetch_batch(1)


# ---- add_many / put_many ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda items: items,
        iter,
        lambda items: (pair for pair in items),
        lambda items: [list(pair) for pair in items],
        tuple,
    ],
    ids=["list", "iterator", "generator", "lists", "tuple"],
)
def test_add_many_any_iterable_of_pairs(make: Any) -> None:
    with fresh_queue() as q:
        assert q.add_many(make(ITEMS)) == len(ITEMS)
        assert list(q) == ITEMS


def test_add_many_converts_str_and_buffers() -> None:
    wide = memoryview(array("I", [1, 2, 3]))  # len 3, 12 bytes
    items: list[Any] = [
        ("ключ", "значение"),
        (bytearray(b"ba"), memoryview(b"mv")),
        (b"wide", wide),
        (wide, b"wide key"),
    ]
    with fresh_queue() as q:
        assert q.add_many(items) == 4
        assert list(q) == [
            ("ключ".encode(), "значение".encode()),
            (b"ba", b"mv"),
            (b"wide", wide.tobytes()),
            (wide.tobytes(), b"wide key"),
        ]


def test_add_many_refuses_items_that_are_not_pairs() -> None:
    with fresh_queue() as q:
        # one 1-tuple and one 3-tuple: as many parts as two pairs, yet not pairs
        for bad in ([(b"a",), (b"b", b"c", b"d")], [(b"a", b"b", b"c")], [(b"a", b"b"), b"x"]):
            with pytest.raises((ValueError, TypeError)):
                q.add_many(bad)  # type: ignore[arg-type]
            assert len(q) == 0
        assert q.add_many([]) == 0


def test_add_many_item_too_large_refuses_the_batch() -> None:
    with fresh_queue(capacity=64 * 1024) as q:
        with pytest.raises(pymqueue.ItemTooLarge):
            q.add_many([(b"a", b"1"), (b"b", b"x" * 70_000)])
        assert len(q) == 0


def test_add_many_reject_policy_stops_at_the_first_that_does_not_fit() -> None:
    with fresh_queue(size=3, policy=Overflow.REJECT) as q:
        with pytest.raises(pymqueue.Full) as exc:
            q.add_many([(b"k%d" % i, b"v%d" % i) for i in range(5)])
        assert exc.value.done == 3  # type: ignore[attr-defined]
        assert list(q) == [(b"k%d" % i, b"v%d" % i) for i in range(3)]


def test_put_many_get_many_round_trip() -> None:
    objs: list[Any] = [None, 1, "two", {"three": [3]}, b"four" * 1000]
    with fresh_queue() as q:
        assert q.put_many(objs) == len(objs)
        assert [k for k, _ in q.peek_many(10)] == [b""] * len(objs)
        assert q.get_many(3) == objs[:3]
        assert q.get_many(10) == objs[3:]
        with pytest.raises(pymqueue.Empty):
            q.get_many(10, block=False)


class _WideSerializer:
    """Returns memoryviews whose len() counts 4-byte items, not bytes."""

    def dumps(self, obj: Any, /) -> Any:
        return memoryview(array("I", pickle.dumps(obj).ljust(8, b"\0")[:8] * 1))

    def loads(self, data: bytes, /) -> Any:
        return data


def test_put_many_with_a_serializer_returning_wide_buffers() -> None:
    with fresh_queue(serializer=_WideSerializer()) as q:
        assert q.put_many([1, 2]) == 2
        got = q.get_many(2)
        assert [len(v) for v in got] == [8, 8]


# ---- across processes ---------------------------------------------------------------------


def batch_producer(q: pymqueue.Queue, producer_id: int, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        q.add_many(
            [
                (b"p%d" % producer_id, checked_value(producer_id, s))
                for s in range(start, min(n, start + batch))
            ]
        )
    q.close()


@pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, Overflow.BLOCK])
def test_fetch_batch_across_processes(ctx: mp.context.BaseContext, policy: Overflow) -> None:
    """Two producer processes add batches (with the block policy and room for 40 items, they
    wait for room in the middle of a batch); the parent takes batches with fetch_batch
    waiting for ever: every item arrives once, whole, in each producer's order."""
    n, producers = 3000, 2
    size = 40 if policy is Overflow.BLOCK else 0
    with fresh_queue(size=size, policy=policy) as q:
        prods = [run_in(ctx, batch_producer, q, i, n, 64) for i in range(producers)]
        last = {i: -1 for i in range(producers)}
        got = 0
        while got < n * producers:
            b = q.fetch_batch(100, timeout=None)
            assert len(b) > 0
            for key, value in b:
                assert value_is_whole(value)
                prod, seq = parse_value(value)
                assert key == b"p%d" % prod
                assert seq == last[prod] + 1, "lost, duplicated or out of order"
                last[prod] = seq
            got += len(b)
        for p in prods:
            p.join(60)
            assert p.exitcode == 0
        st = q.stats()
        assert (st.items, st.dropped, st.fetched) == (0, 0, n * producers)
