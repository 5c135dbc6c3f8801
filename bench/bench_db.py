"""Save + load of 1 000 000 small items through pymqueue.db (SQLite, and PostgreSQL when
PMQ_BENCH_PG_DSN names a database). Run: pytest bench/bench_db.py --benchmark-only"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymqueue import Queue
from pymqueue.db import Persistence
from pymqueue.definitions import DbMode, QueueDef

N = 1_000_000
ITEMS = [(b"k%07d" % i, b"v%d" % i) for i in range(N)]
DEF = QueueDef(b"benchdb", dbmode=DbMode.LOAD_SAVE, capacity=256 * 1024 * 1024)


@pytest.fixture
def queue() -> Iterator[Queue]:
    q = Queue(DEF.name, create=True, capacity=DEF.capacity)
    try:
        yield q
    finally:
        q.unlink()


def urls(tmp: Path) -> list[str]:
    out = [f"sqlite:///{tmp / 'bench.db'}"]
    if os.environ.get("PMQ_BENCH_PG_DSN"):
        out.append(os.environ["PMQ_BENCH_PG_DSN"])
    return out


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_save_load_1m(benchmark, tmp_path: Path, queue: Queue, kind: str) -> None:  # type: ignore[no-untyped-def]
    url = next((u for u in urls(tmp_path) if u.startswith(kind[:6])), None)
    if url is None:
        pytest.skip("set PMQ_BENCH_PG_DSN for PostgreSQL")
    p = Persistence(url)

    def setup() -> None:  # not timed: an empty table, a full queue
        queue.fetch_many(2 * N)
        p.on_start([(DEF, queue, False)])
        queue.fetch_many(2 * N)
        queue.add_many(ITEMS)

    def round_trip() -> None:  # timed: save 1M then load 1M
        p.on_stop([(DEF, queue)])
        p.on_start([(DEF, queue, False)])

    benchmark.pedantic(round_trip, setup=setup, rounds=3, iterations=1)
    assert queue.size() == N
    queue.fetch_many(N)
