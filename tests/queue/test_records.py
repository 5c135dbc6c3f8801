"""Items with their ids: ``Queue.epoch``, ``peek_records`` and ``discard_through`` — what a
forwarder (the DMQ outbox) builds on: peek a batch, send it, discard exactly what was acked."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time
from typing import Any

import pytest
from engine_helpers import OFF_EPOCH, mapped, read_u64, wait_until
from queue_helpers import fresh_queue, run_in, unique_name

import pymqueue
from pymqueue import AddMode, Overflow, Record


def test_epoch_is_shared_by_every_handle_and_new_for_a_new_segment() -> None:
    name = unique_name("ep")
    q = pymqueue.Queue(name, create=True)
    try:
        other = pymqueue.Queue(name)
        assert q.epoch == other.epoch != 0
        assert pickle.loads(pickle.dumps(q)).epoch == q.epoch
        other.close()
        first = q.epoch
        q.unlink()
        q.close()
        q = pymqueue.Queue(name, create=True)
        assert q.epoch not in (0, first)
    finally:
        q.unlink()
        q.close()


def _report_epoch(q: pymqueue.Queue, out: Any) -> None:
    out.send(q.epoch)


def test_a_child_process_sees_the_same_epoch(ctx: mp.context.BaseContext) -> None:
    with fresh_queue() as q:
        r, w = ctx.Pipe(duplex=False)
        p = run_in(ctx, _report_epoch, q, w)
        assert r.poll(30)
        assert r.recv() == q.epoch
        p.join(30)
        assert p.exitcode == 0


def test_peek_records_gives_ids_in_queue_order_and_removes_nothing() -> None:
    with fresh_queue() as q:
        q.add_many([(f"k{i}".encode(), b"v" * i) for i in range(50)])
        recs = q.peek_records(100)
        assert [r.key for r in recs] == [f"k{i}".encode() for i in range(50)]
        assert [r.value for r in recs] == [b"v" * i for i in range(50)]
        ids = [r.id for r in recs]
        assert ids == sorted(set(ids))
        assert ids[0] > 0
        assert all(isinstance(r, Record) for r in recs)
        assert len(q) == 50
        assert q.peek_records(3, after_id=ids[9]) == recs[10:13]
        assert q.peek_records(10, after_id=ids[-1]) == []
        assert q.peek_records(0) == []


def test_peek_records_after_fetches_and_drops_skips_what_is_gone() -> None:
    with fresh_queue(size=5) as q:  # drop-oldest: only the last 5 stay
        for i in range(8):
            q.add(b"k", str(i).encode())
        assert q.fetch() == (b"k", b"3")
        recs = q.peek_records(10)
        assert [r.value for r in recs] == [b"4", b"5", b"6", b"7"]
        assert [r.id for r in recs] == list(range(recs[0].id, recs[0].id + 4))


def test_ids_keep_growing_in_queue_order_when_addmode_2_replaces() -> None:
    with fresh_queue(addmode=AddMode.UNIQUE_KEEP_NEWEST) as q:
        for key in (b"a", b"b", b"c", b"a", b"b"):
            q.add(key, key.upper())
        recs = q.peek_records(10)
        assert [r.key for r in recs] == [b"c", b"a", b"b"]
        assert [r.id for r in recs] == sorted(r.id for r in recs)


def test_max_bytes_bounds_the_batch_but_the_first_item_always_comes() -> None:
    with fresh_queue() as q:
        q.add(b"big", b"x" * 1000)
        for i in range(10):
            q.add(b"k", b"%02d" % i)  # 3 bytes each: 1 + 2
        recs = q.peek_records(100, max_bytes=10)
        assert [r.key for r in recs] == [b"big"]  # alone, though larger than max_bytes
        rest = q.peek_records(100, after_id=recs[0].id, max_bytes=10)
        assert [r.value for r in rest] == [b"00", b"01", b"02"]  # 9 bytes; a 4th passes 10
        assert sum(len(r.key) + len(r.value) for r in rest) <= 10
        everything = q.peek_records(100, max_bytes=10**9)
        assert len(everything) == 11


def test_peek_records_walks_a_queue_bigger_than_one_buffer() -> None:
    with fresh_queue(capacity=8 * 1024 * 1024) as q:
        value = b"v" * 3000
        q.add_many([(b"%d" % i, value) for i in range(1000)])  # 3 MB: several buffers
        recs = q.peek_records(2000)
        assert [r.key for r in recs] == [b"%d" % i for i in range(1000)]
        assert all(r.value == value for r in recs)


def test_discard_through_removes_exactly_the_acknowledged_head() -> None:
    with fresh_queue() as q:
        q.add_many([(b"k", b"%d" % i) for i in range(10)])
        recs = q.peek_records(4)
        assert q.discard_through(recs[-1].id) == 4
        assert [v for _, v in q.peek_many(10)] == [b"%d" % i for i in range(4, 10)]
        assert q.discard_through(recs[-1].id) == 0  # again: nothing more
        st = q.stats()
        assert st.fetched == 4
        assert st.items == 6


def test_discard_through_after_a_local_fetch_removes_only_what_is_left() -> None:
    with fresh_queue() as q:
        q.add_many([(b"k", b"%d" % i) for i in range(6)])
        sent = q.peek_records(4)
        assert q.fetch() == (b"k", b"0")  # a local consumer took one meanwhile
        assert q.discard_through(sent[-1].id) == 3
        assert q.fetch() == (b"k", b"4")


def test_discard_through_stops_at_a_newer_item_behind_a_replaced_one() -> None:
    with fresh_queue(addmode=AddMode.UNIQUE_KEEP_NEWEST) as q:
        q.add(b"a", b"1")
        q.add(b"b", b"1")
        sent = q.peek_records(10)
        q.add(b"a", b"2")  # replaces a: a tombstone at the head, a new id at the tail
        assert q.discard_through(sent[-1].id) == 1  # b only; the new a stays
        assert q.peek_many(10) == [(b"a", b"2")]


def test_bad_arguments_are_value_errors() -> None:
    with fresh_queue() as q:
        with pytest.raises(ValueError, match=">= 0"):
            q.peek_records(-1)
        with pytest.raises(ValueError, match=">= 0"):
            q.peek_records(1, after_id=-1)
        with pytest.raises(ValueError, match=">= 0"):
            q.peek_records(1, max_bytes=-1)
        with pytest.raises(ValueError, match=">= 0"):
            q.discard_through(-1)


def _blocked_add(q: pymqueue.Queue, out: Any) -> None:
    q.add(b"k", b"late", timeout=60)
    out.send("added")


def test_discard_through_wakes_a_putter_asleep_waiting_for_room(
    ctx: mp.context.BaseContext,
) -> None:
    with fresh_queue(size=2, policy=Overflow.BLOCK) as q:
        q.add(b"k", b"1")
        q.add(b"k", b"2")
        r, w = ctx.Pipe(duplex=False)
        p = run_in(ctx, _blocked_add, q, w)
        wait_until(lambda: q.stats().putters_waiting == 1, "the putter waits")
        assert not r.poll(0)
        assert q.discard_through(q.peek_records(1)[0].id) == 1
        assert r.poll(30), "the blocked putter was not woken by discard_through"
        assert r.recv() == "added"
        p.join(30)
        assert p.exitcode == 0
        assert [v for _, v in q.peek_many(10)] == [b"2", b"late"]


def _produce(q: pymqueue.Queue, tag: int, n: int) -> None:
    for i in range(n):
        q.add(b"%d" % tag, b"%d" % i)


def test_a_forwarder_loop_moves_every_item_once_in_order_while_producers_run(
    ctx: mp.context.BaseContext,
) -> None:
    n, producers = 3000, 3
    with fresh_queue(size=200, policy=Overflow.BLOCK) as q:
        procs = [run_in(ctx, _produce, q, tag, n) for tag in range(producers)]
        forwarded: list[Record] = []
        deadline = time.monotonic() + 120
        while len(forwarded) < n * producers:
            assert time.monotonic() < deadline
            batch = q.peek_records(64, max_bytes=600)
            if not batch:
                q.wait(readable=True, timeout=1)
                continue
            forwarded.extend(batch)  # "sent and acknowledged"
            assert q.discard_through(batch[-1].id) == len(batch)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        ids = [r.id for r in forwarded]
        assert ids == sorted(set(ids))
        for tag in range(producers):
            seqs = [int(r.value) for r in forwarded if r.key == b"%d" % tag]
            assert seqs == list(range(n)), f"producer {tag}: lost, duplicated or reordered"
        assert len(q) == 0


def test_the_epoch_is_read_once_at_attach() -> None:
    with fresh_queue() as q:
        first = q.epoch
        with mapped(q) as m:
            assert read_u64(m, OFF_EPOCH) == first  # the offset is the layout's
            m[OFF_EPOCH : OFF_EPOCH + 8] = (first ^ 1).to_bytes(8, "little")
        assert q.epoch == first  # this handle keeps its private copy
