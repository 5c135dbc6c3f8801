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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymqueue import Queue
from pymqueue.db import Persistence
from pymqueue.definitions import DbMode, QueueDef

N = 100_000
ROUNDS = 4
DEADLINE = 60.0

CHILD = r"""
import sys
from pymqueue import Queue
from pymqueue.definitions import DbMode, QueueDef
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


def run_and_kill(
    op: str,
    url: str,
    name: str,
    watch: Queue,
    rng: random.Random,
    *,
    in_txn: Callable[[], bool] | None = None,
    within: float = 0.0,
) -> bool:
    """Start the child, kill -9 it at a random point of its work; True if it finished first.

    Without ``in_txn`` the kill point is chosen on the queue's progress (items it took or
    gave up). With ``in_txn`` (a predicate: the child is inside a database transaction), the
    child is killed the first time the predicate holds after a random instant in
    ``[0, within)`` seconds from its start: a load or save that is half-written."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, op, url, name],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        target = rng.randrange(0, N + 1)
        not_before = time.monotonic() + rng.uniform(0, within)
        deadline = time.monotonic() + DEADLINE
        stop = threading.Event()
        while child.poll() is None and time.monotonic() < deadline:
            if in_txn is None:
                s = watch.stats()
                if (s.added if op == "load" else s.fetched) >= target:
                    break
            elif time.monotonic() >= not_before and in_txn():
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


def commit_time(url: str, name: str) -> float:
    """Seconds from the child's start until its save committed (its first fetch), in one
    run that is not killed; the items are then checked to be in the table."""
    watch = Queue(name, create=True)
    watch.add_many(items())
    child = subprocess.Popen([sys.executable, "-c", CHILD, "save", url, name],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        stop = threading.Event()
        while watch.stats().fetched == 0 and child.poll() is None:
            stop.wait(0.0005)  # polling the shared counter, not a synchronisation sleep
        took = time.monotonic() - t0
        assert child.wait(timeout=DEADLINE) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert watch.size() == 0
    watch.unlink()
    return took


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


@pytest.mark.slow
def test_kill_during_save(tmp_path: Path, qname: str) -> None:
    """Rounds alternate between a kill on the queue's progress (before the save or while
    the committed items are being removed) and a kill inside the transaction (SQLite's
    rollback journal exists)."""
    rng = random.Random(int(os.environ.get("PMQ_SEED", "0")) * 17 + 1)
    within = 0.9 * commit_time(f"sqlite:///{tmp_path / 'calibrate.db'}", qname)
    hot = 0
    for r in range(ROUNDS):
        db = tmp_path / f"save{r}.db"
        journal = Path(f"{db}-journal")
        url = f"sqlite:///{db}"
        watch = Queue(qname, create=True)
        watch.add_many(items())
        in_txn = journal.exists if r % 2 else None
        run_and_kill("save", url, qname, watch, rng, in_txn=in_txn, within=within)
        hot += journal.exists()
        watch.close()
        q = restart(url, qname, reattached=True)
        in_db = table_rows(db, qname) if db.exists() else []
        in_queue = q.fetch_many(2 * N)
        assert in_db + in_queue == items()
        q.unlink()
    assert hot > 0, "no round was killed inside the save's transaction"


def pg_rows(dsn: str, table: str) -> list[tuple[bytes, bytes]]:
    import psycopg  # noqa: PLC0415 (the pg_dsn fixture checked it is installed)

    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT to_regclass(%s)", (f'"{table}"',)).fetchone()[0] is None:  # type: ignore[index]
            return []
        cur = c.execute(f'SELECT key, val FROM "{table}" ORDER BY id')
        return [(bytes(k), bytes(v)) for k, v in cur.fetchall()]


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_during_save_postgres(pg_dsn: str, qname: str) -> None:
    """The same on PostgreSQL. Inside the transaction: a backend holds the table's EXCLUSIVE
    lock while it copies the rows in. The restart waits for the server to end the dead
    transaction (or finishes the save if its commit got through)."""
    import psycopg  # noqa: PLC0415

    rng = random.Random(int(os.environ.get("PMQ_SEED", "0")) * 13 + 2)
    within = 0.9 * commit_time(pg_dsn, qname)
    with psycopg.connect(pg_dsn, autocommit=True) as watcher:

        def locked() -> bool:
            row = watcher.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class t ON t.oid = l.relation "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE t.relname = %s "
                "AND l.mode = 'ExclusiveLock' AND l.granted AND a.query LIKE 'COPY%%'",
                (qname,),
            ).fetchone()
            return bool(row and row[0])

        killed_inside = 0
        for r in range(ROUNDS):
            watcher.execute(f'DROP TABLE IF EXISTS "{qname}"')
            watcher.execute("DROP TABLE IF EXISTS pymqueue_journal")
            watch = Queue(qname, create=True)
            watch.add_many(items())
            in_txn = locked if r % 2 else None
            done = run_and_kill("save", pg_dsn, qname, watch, rng, in_txn=in_txn, within=within)
            killed_inside += in_txn is not None and not done
            watch.close()
            q = restart(pg_dsn, qname, reattached=True)
            in_queue = q.fetch_many(2 * N)
            assert pg_rows(pg_dsn, qname) + in_queue == items()
            q.unlink()
    assert killed_inside > 0, "no round was killed inside the save's transaction"
