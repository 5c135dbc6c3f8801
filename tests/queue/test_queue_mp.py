"""Many producer and consumer processes on one queue, under fork and spawn."""

from __future__ import annotations

import multiprocessing as mp
from collections import defaultdict

import pytest
from queue_helpers import consumer, fresh_queue, parse_value, producer, run_in, value_is_whole

import pymqueue


@pytest.mark.parametrize(("producers", "consumers", "batch"), [(4, 3, 0), (3, 2, 64)])
def test_every_item_arrives_exactly_once_fifo_per_producer(
    ctx: mp.context.BaseContext, producers: int, consumers: int, batch: int
) -> None:
    n = 3000
    with fresh_queue() as q:
        pipes = [ctx.Pipe(duplex=False) for _ in range(consumers)]
        cons = [run_in(ctx, consumer, q, w, batch) for _, w in pipes]
        prods = [run_in(ctx, producer, q, i, n, batch) for i in range(producers)]
        for p in prods:
            p.join(60)
            assert p.exitcode == 0
        for _ in cons:
            q.add(b"STOP", b"")
        results = [r.recv() for r, _ in pipes]
        for p in cons:
            p.join(60)
            assert p.exitcode == 0

        seen: dict[int, list[int]] = defaultdict(list)
        for got in results:
            last: dict[int, int] = {}
            for value in got:
                assert value_is_whole(value)
                prod, seq = parse_value(value)
                assert seq > last.get(prod, -1), "a consumer saw one producer's items out of order"
                last[prod] = seq
                seen[prod].append(seq)
        for prod in range(producers):
            assert sorted(seen[prod]) == list(range(n)), f"producer {prod}: lost or duplicated"
        st = q.stats()
        # STOP items a batch consumer handed back count as extra adds.
        assert st.added >= producers * n + consumers
        assert st.fetched == st.added
        assert st.items == 0
        assert st.dropped == 0


def test_bounded_queue_counters_add_up_across_processes(ctx: mp.context.BaseContext) -> None:
    n = 2000
    with fresh_queue(size=50) as q:
        prods = [run_in(ctx, producer, q, i, n) for i in range(3)]
        for p in prods:
            p.join(60)
            assert p.exitcode == 0
        st = q.stats()
        assert st.items == 50
        assert st.added == 3 * n == st.fetched + st.items + st.dropped
        for _, value in q:
            assert value_is_whole(value)


def test_block_policy_backpressure_loses_nothing(ctx: mp.context.BaseContext) -> None:
    n = 2000
    with fresh_queue(size=16, policy=pymqueue.Overflow.BLOCK) as q:
        r, w = ctx.Pipe(duplex=False)
        cons = run_in(ctx, consumer, q, w, 0)
        prods = [run_in(ctx, producer, q, i, n) for i in range(2)]
        for p in prods:
            p.join(60)
            assert p.exitcode == 0
        q.add(b"STOP", b"", timeout=30)
        got = r.recv()
        cons.join(60)
        assert len(got) == 2 * n
        st = q.stats()
        assert st.dropped == 0
        assert st.rejected == 0
        assert st.high_water <= 16
