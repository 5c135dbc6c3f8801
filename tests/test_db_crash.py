"""kill -9 of a real process in the middle of a load or a save: after the restart, every
item is either in the queue or in the table, exactly once, in order."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymqueue import Queue
from pymqueue.config import DbMode, QueueDef
from pymqueue.db import Persistence

N = 100_000
ROUNDS = 4
DEADLINE = 60.0

CHILD = r"""
import sys
from pymqueue import Queue
from pymqueue.config import DbMode, QueueDef
from pymqueue.db import Persistence
op, url, name = sys.argv[1:4]
d = QueueDef(name.encode(), dbmode=DbMode.LOAD_SAVE)
q = Queue(d.name, create=False)
p = Persistence(url)
print("ready", flush=True)
if op == "load":
    p.on_start([(d, q, False)])
else:
    p.on_stop([(d, q)])
print("done", flush=True)
"""


def items() -> list[tuple[bytes, bytes]]:
    return [(b"k%06d" % i, b"v%d" % i) for i in range(N)]


def table_rows(db: Path, table: str) -> list[tuple[bytes, bytes]]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.text_factory = bytes
        return [(bytes(k), bytes(v)) for k, v in c.execute(
            f'SELECT CAST(key AS BLOB), CAST(val AS BLOB) FROM "{table}" ORDER BY id')]  # fmt: skip


def run_and_kill(op: str, url: str, name: str, watch: Queue, rng: random.Random) -> bool:
    """Start the child, kill -9 it at a random point of its work; True if it finished first.

    The kill point is chosen on the queue's progress (items it took or gave up) when
    possible, else after a random fraction of a typical run."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, op, url, name],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        target = rng.randrange(0, N + 1)
        deadline = time.monotonic() + DEADLINE
        stop = threading.Event()
        while child.poll() is None and time.monotonic() < deadline:
            s = watch.stats()
            progress = s.added if op == "load" else s.fetched
            if progress >= target:
                break
            stop.wait(0.0005)  # polling the shared counters, not a synchronisation sleep
        finished = child.poll() is not None
        if not finished:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=DEADLINE)
        return finished
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


@pytest.fixture
def qname(namespace: str) -> Iterator[str]:
    name = f"crash{os.getpid()}"
    yield name
    with contextlib.suppress(Exception):
        Queue(name, create=False).unlink()


def restart(url: str, name: str, reattached: bool) -> Queue:
    d = QueueDef(name.encode(), dbmode=DbMode.LOAD_SAVE)
    q = Queue(d.name, create=None if reattached else True)
    Persistence(url).on_start([(d, q, reattached)])
    return q


@pytest.mark.slow
@pytest.mark.parametrize("reattached", [True, False])
def test_kill_during_load(tmp_path: Path, qname: str, reattached: bool) -> None:
    rng = random.Random(int(os.environ.get("PMQ_SEED", "0")) * 31 + reattached)
    partial = 0
    for r in range(ROUNDS):
        db = tmp_path / f"load{r}.db"
        with contextlib.closing(sqlite3.connect(db)) as c:
            c.execute(f'CREATE TABLE "{qname}" (id INTEGER PRIMARY KEY AUTOINCREMENT, '
                      "key BLOB NOT NULL, val BLOB NOT NULL)")  # fmt: skip
            c.executemany(f'INSERT INTO "{qname}" (key, val) VALUES (?, ?)', items())
            c.commit()
        url = f"sqlite:///{db}"
        watch = Queue(qname, create=True)
        run_and_kill("load", url, qname, watch, rng)
        partial += 0 < watch.size() < N
        if not reattached:
            watch.unlink()
        watch.close()
        q = restart(url, qname, reattached)
        in_queue = q.fetch_many(2 * N)
        assert in_queue + table_rows(db, qname) == items()
        assert len(in_queue) == N  # the restart finished the load
        q.unlink()
    assert partial > 0, "no round was killed in the middle of the load"


def has_peek() -> bool:
    return hasattr(Queue, "peek_many")


@pytest.mark.slow
@pytest.mark.xfail(
    not has_peek(), strict=True,
    reason="needs the engine's non-destructive Queue.peek_many; the drain fallback can lose "
    "the batch in flight",
)  # fmt: skip
def test_kill_during_save(tmp_path: Path, qname: str) -> None:
    rng = random.Random(int(os.environ.get("PMQ_SEED", "0")) * 17 + 1)
    for r in range(ROUNDS):
        db = tmp_path / f"save{r}.db"
        url = f"sqlite:///{db}"
        watch = Queue(qname, create=True)
        watch.add_many(items())
        run_and_kill("save", url, qname, watch, rng)
        watch.close()
        q = restart(url, qname, reattached=True)
        in_db = table_rows(db, qname) if db.exists() else []
        in_queue = q.fetch_many(2 * N)
        assert in_db + in_queue == items()
        q.unlink()
