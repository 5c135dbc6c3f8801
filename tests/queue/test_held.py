"""Held items (``Queue.hold``): what a mirror forwarder builds on. While a queue holds, every
item added is held back — counted, peekable, but not fetchable, nor anything behind it —
until the forwarder has sent it and releases it. Consumers asleep in a wait, on a doorbell
or in asyncio wake when it is released; a forwarder killed half-way through a release
leaves a queue the next process recovers."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import selectors
import signal
from typing import Any

import pytest
from engine_helpers import OFF_VERSION, mapped, wait_until
from pymqueue._pmq_c import lib
from queue_helpers import fresh_queue, run_in

import pymqueue
from pymqueue import AsyncQueue, Overflow


def test_held_items_count_and_peek_but_are_not_fetched_until_released() -> None:
    with fresh_queue() as q:
        q.add(b"before", b"0")
        q.hold()
        q.add(b"a", b"1")
        q.add_many([(b"b", b"2"), (b"c", b"3")])
        st = q.stats()
        assert (st.hold, st.held, st.items, len(q)) == (1, 3, 4, 4)
        assert q.fetch() == (b"before", b"0")  # added before the hold: free
        assert q.fetch() is None
        assert q.fetch_many(10) == []
        with pytest.raises(pymqueue.Empty):
            q.get_nowait()
        held = q.peek_records(10, held_only=True)
        assert [r.key for r in held] == [b"a", b"b", b"c"]
        assert q.release_through(held[1].id) == 2
        assert q.fetch_many(10) == [(b"a", b"1"), (b"b", b"2")]  # c is still held
        assert q.stats().held == 1
        q.hold(False)  # stops holding and releases everything
        assert q.stats().held == 0
        q.add(b"d", b"4")
        assert q.fetch_many(10) == [(b"c", b"3"), (b"d", b"4")]


def test_order_is_kept_a_released_add_waits_behind_a_held_one() -> None:
    with fresh_queue() as q:
        q.hold()
        q.add(b"local", b"1")
        q.add_many([(b"remote", b"2")], released=True)  # never held
        assert q.stats().held == 1
        assert q.peek_records(10, held_only=True)[0].key == b"local"
        assert q.fetch() is None  # the head is held: nothing behind it passes
        q.release_through(q.peek_records(1)[0].id)
        assert q.fetch_many(10) == [(b"local", b"1"), (b"remote", b"2")]


def test_drop_oldest_and_replacement_keep_the_held_count_right() -> None:
    with fresh_queue(size=3) as q:
        q.hold()
        for i in range(5):
            q.add(b"k", b"%d" % i)
        st = q.stats()
        assert (st.items, st.held, st.dropped) == (3, 3, 2)
    with fresh_queue(addmode=pymqueue.AddMode.UNIQUE_KEEP_NEWEST) as q:
        q.hold()
        q.add(b"a", b"1")
        q.add(b"a", b"2")  # replaces the held a
        assert (q.stats().held, len(q)) == (1, 1)
        q.hold(False)
        assert q.fetch() == (b"a", b"2")


def test_the_hold_lives_in_the_segment() -> None:
    with fresh_queue() as q:
        q.hold()
        other = pymqueue.Queue(q.name)
        other.add(b"k", b"v")  # another handle (process) adds: held too
        assert q.stats().held == 1
        other.close()


def test_bad_arguments() -> None:
    with fresh_queue() as q, pytest.raises(ValueError, match=">= 0"):
        q.release_through(-1)


def _fetch_and_report(q: pymqueue.Queue, out: Any) -> None:
    out.send(q.fetch(timeout=60))


def test_a_consumer_asleep_in_a_wait_wakes_when_its_item_is_released(
    ctx: mp.context.BaseContext,
) -> None:
    with fresh_queue() as q:
        q.hold()
        q.add(b"k", b"v")
        r, w = ctx.Pipe(duplex=False)
        p = run_in(ctx, _fetch_and_report, q, w)
        wait_until(lambda: q.stats().getters_waiting == 1, "the consumer waits")
        assert not r.poll(0.05)  # asleep: the held item is not taken
        q.release_through(q.peek_records(1)[0].id)
        assert r.poll(30), "the consumer was not woken by the release"
        assert r.recv() == (b"k", b"v")
        p.join(30)
        assert p.exitcode == 0


def test_the_doorbell_rings_for_a_release_not_for_a_held_head() -> None:
    with fresh_queue() as q:
        q.hold()
        q.add(b"k", b"v")
        fd = q.fileno()
        assert not q.arm()  # items, but none a fetch would take: armed
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            assert sel.select(0) == []
            q.release_through(q.peek_records(1)[0].id)
            assert sel.select(10), "the release did not ring the doorbell"
        assert q.arm()  # now a fetch would take it


def test_a_forwarder_doorbell_rings_for_held_adds() -> None:
    with fresh_queue() as q:
        q.hold()
        fd = q.fileno()
        assert not q.arm(held=True)
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            q.add(b"k", b"v")
            assert sel.select(10), "a held add did not ring the forwarder's doorbell"
        assert q.arm(held=True)  # held items now: ready at once


def test_an_async_consumer_gets_the_item_once_released() -> None:
    async def main(q: pymqueue.Queue) -> tuple[bytes, bytes]:
        aq = AsyncQueue(q)
        task = asyncio.ensure_future(aq.fetch(timeout=30))
        await asyncio.sleep(0)  # let it arm; the held head must not wake it into a spin
        assert not task.done()
        q.release_through(q.peek_records(1)[0].id)
        return await task  # type: ignore[no-any-return]

    with fresh_queue() as q:
        q.hold()
        q.add(b"k", b"v")
        assert asyncio.run(main(q)) == (b"k", b"v")


def _crash_in_release(q: pymqueue.Queue, last_id: int) -> None:
    lib.pmq_test_crash_at(9)
    q.release_through(last_id)
    os._exit(3)  # reached only if the crash point was not


def test_a_release_killed_half_way_is_recovered_and_counted_right() -> None:
    fork = mp.get_context("fork")
    with fresh_queue() as q:
        q.hold()
        q.add_many([(b"k", b"%d" % i) for i in range(4)])
        ids = [r.id for r in q.peek_records(10)]
        p = fork.Process(target=_crash_in_release, args=(q, ids[-1]))
        p.start()
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        st = q.stats()  # recovers: the first flag was cleared, the count not published
        assert st.recoveries == 1
        assert st.held == 3
        assert [r.value for r in q.peek_records(10, held_only=True)] == [b"1", b"2", b"3"]
        assert q.fetch() == (b"k", b"0")
        assert q.release_through(ids[-1]) == 3
        assert [v for _, v in q.fetch_many(10)] == [b"1", b"2", b"3"]


def test_a_forged_held_count_is_refused_at_attach() -> None:
    with fresh_queue(policy=Overflow.DROP_OLDEST) as q:
        q.add(b"k", b"v")
        with mapped(q) as m:
            assert m[OFF_VERSION] == 3
        st_off = _published_state_offset(q)
        with mapped(q) as m:
            held_off = st_off + 8 * 16  # pmq_state: 15 u64 fields, then hold, held
            m[held_off : held_off + 8] = (5).to_bytes(8, "little")  # more held than items
        with pytest.raises(pymqueue.InvalidSegment):
            pymqueue.Queue(q.name)


def _published_state_offset(q: pymqueue.Queue) -> int:
    """Where the published pmq_state lies: found by its next_id, which we know."""
    next_id = q.stats().items + 1  # one item added, none removed: next_id == 2
    with mapped(q) as m:
        data = bytes(m[:4096])
    # head(0) tail count(1) bytes(2) next_id: the only place these five words line up
    for off in range(0, 4096 - 40, 8):
        words = [int.from_bytes(data[off + 8 * i : off + 8 * i + 8], "little") for i in range(5)]
        if words[2] == 1 and words[3] == 2 and words[4] == next_id and words[0] == 0:
            return off
    raise AssertionError("the published state was not found")
