"""``db_sync_interval``: periodic snapshots of dbmode 1/3 queues, with ``pymqueue serve``
as a real process killed with SIGKILL.

After a snapshot, a kill -9 loses at most the items added since (when the segment is gone
too, as after a reboot), or nothing (segment alive); the next start never duplicates an item.
The tests wait on the database rows (polled, with a deadline), never on a sleep.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymqueue import Queue, QueueNotFound

DEADLINE = 30.0
INTERVAL = 0.1
Item = tuple[bytes, bytes]


class Db:
    """The database of one test: its URL, the rows of a table (key, val in id order) and a
    way to insert rows (into a table of Kamailio's layout, created if missing)."""

    def __init__(
        self,
        url: str,
        rows: Callable[[str], list[Item]],
        insert: Callable[[str, list[Item]], None],
    ) -> None:
        self.url = url
        self.rows = rows
        self.insert = insert

    def wait_rows(self, table: str, want: Callable[[list[Item]], bool]) -> list[Item]:
        """Poll the table until ``want(rows)`` holds (AssertionError after DEADLINE)."""
        deadline = time.monotonic() + DEADLINE
        pause = threading.Event()
        while True:
            got = self.rows(table)
            if want(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"table {table!r} never reached the state: {len(got)} rows")
            pause.wait(0.01)  # polling the database, not a synchronisation sleep


def sqlite_rows(path: Path) -> Callable[[str], list[Item]]:
    def rows(table: str) -> list[Item]:
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path, timeout=DEADLINE)) as c:
            c.text_factory = bytes
            found = c.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ? COLLATE NOCASE", (table,)
            ).fetchone()
            if found is None:
                return []
            cur = c.execute(
                f'SELECT CAST(key AS BLOB), CAST(val AS BLOB) FROM "{table}" ORDER BY id'
            )
            return [(bytes(k), bytes(v)) for k, v in cur]

    return rows


def sqlite_insert(path: Path) -> Callable[[str, list[Item]], None]:
    def insert(table: str, items: list[Item]) -> None:
        with contextlib.closing(sqlite3.connect(path, timeout=DEADLINE)) as c:
            c.execute(f'CREATE TABLE IF NOT EXISTS "{table}" '
                      "(id INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB, val BLOB)")  # fmt: skip
            c.executemany(f'INSERT INTO "{table}" (key, val) VALUES (?, ?)', items)
            c.commit()

    return insert


def pg_insert(dsn: str) -> Callable[[str, list[Item]], None]:
    import psycopg  # noqa: PLC0415

    def insert(table: str, items: list[Item]) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'CREATE TABLE IF NOT EXISTS "{table}" '
                      "(id BIGSERIAL PRIMARY KEY, key BYTEA, val BYTEA)")  # fmt: skip
            with c.cursor() as cur:
                cur.executemany(f'INSERT INTO "{table}" (key, val) VALUES (%s, %s)', items)

    return insert


def pg_rows(dsn: str) -> Callable[[str], list[Item]]:
    import psycopg  # noqa: PLC0415 (the pg_dsn fixture checked it is installed)

    def rows(table: str) -> list[Item]:
        with psycopg.connect(dsn, autocommit=True) as c:
            found = c.execute("SELECT to_regclass(%s)", (f'"{table}"',)).fetchone()
            if found is None or found[0] is None:
                return []
            cur = c.execute(f'SELECT key, val FROM "{table}" ORDER BY id')
            return [(bytes(k), bytes(v)) for k, v in cur.fetchall()]

    return rows


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        path = tmp_path / "sync.db"
        return Db(f"sqlite:///{path}", sqlite_rows(path), sqlite_insert(path))
    dsn = request.getfixturevalue("pg_dsn")
    return Db(dsn, pg_rows(dsn), pg_insert(dsn))


class Served:
    """One ``pymqueue serve -c FILE`` process."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("pymqueue: ready"):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=DEADLINE)
            raise AssertionError(f"pymqueue serve did not start: {line!r} {err}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(DEADLINE) == -signal.SIGKILL

    def terminate(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        _, err = self.proc.communicate(timeout=DEADLINE)
        assert self.proc.returncode == 0, err


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], Served]]:
    """Start ``pymqueue serve -c`` on a TOML text; every process is stopped by PID after."""
    procs: list[subprocess.Popen[str]] = []

    def start(toml: str) -> Served:
        path = tmp_path / f"serve{len(procs)}.toml"
        path.write_text(toml)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pymqueue", "serve", "-c", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        served = Served(proc)
        served.wait_ready()
        return served

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)


@pytest.fixture
def names(namespace: str) -> Iterator[list[str]]:
    """Queue names used by a test, unlinked afterwards."""
    used: list[str] = []
    yield used
    for n in used:
        with contextlib.suppress(QueueNotFound):
            Queue(n, create=False).unlink()


def batch(tag: str, n: int) -> list[Item]:
    return [(f"{tag}{i:05d}".encode(), f"value {tag} {i}".encode()) for i in range(n)]


def config(db: Db, sync: float | None = INTERVAL, **queues: int) -> str:
    """A TOML instance config: ``db_url``, ``db_sync_interval`` and ``name = dbmode`` queues."""
    text = f"db_url = {db.url!r}\n"
    if sync is not None:
        text += f"db_sync_interval = {sync}\n"
    for name, mode in queues.items():
        text += f'[[queue]]\nname = "{name}"\ndbmode = {mode}\n'
    return text


def drain(q: Queue) -> list[Item]:
    return q.fetch_many(1_000_000)


def snapshot_then_kill(
    db: Db, served: Served, q: Queue, table: str, *, first: list[Item], later: list[Item]
) -> list[Item]:
    """Add ``first``, wait until a snapshot holds exactly it, add ``later``, kill -9 the
    instance; returns the rows the table holds after the kill."""
    q.add_many(first)
    db.wait_rows(table, lambda rows: rows == first)
    q.add_many(later)
    served.kill9()
    rows = db.rows(table)
    # a snapshot taken between the add and the kill may hold the later items too
    assert rows in (first, first + later)
    return rows


@pytest.mark.slow
def test_kill9_segment_lost_loses_at_most_items_since_snapshot(
    db: Db, serve: Callable[[str], Served], names: list[str]
) -> None:
    """Power-cut case: the instance and its segment are gone; the snapshot is the state."""
    names += ["syncA", "syncB"]
    toml = config(db, syncA=1, syncB=3)
    served = serve(toml)
    qa = Queue("syncA", create=False)
    qb = Queue("syncB", create=False)
    first, later = batch("a", 500), batch("b", 50)
    rows_a = snapshot_then_kill(db, served, qa, "synca", first=first, later=later)
    qb.add_many(first)
    # the instance is dead: its queues' segments are lost as in a reboot
    qa.unlink()
    qb.unlink()
    qa.close()
    qb.close()
    assert db.rows("syncb") == []  # added after the kill: nothing snapshotted

    served = serve(toml)
    qa = Queue("syncA", create=False)
    qb = Queue("syncB", create=False)
    assert qa.peek_many(10_000) == rows_a  # dbmode 1: the snapshot loaded, once
    assert qb.size() == 0  # dbmode 3 never loads
    qb.add_many(later)
    served.terminate()  # the final save replaces the snapshot rows: no duplicates
    assert db.rows("synca") == rows_a
    assert db.rows("syncb") == later
    qa.close()
    qb.close()


@pytest.mark.slow
def test_kill9_segment_alive_loses_nothing(
    db: Db, serve: Callable[[str], Served], names: list[str]
) -> None:
    """Process-crash case: the segment survives; the restart drops the snapshot rows
    (the queue still holds those items) so the final save writes every item once."""
    names += ["syncC", "syncD"]
    toml = config(db, syncC=1, syncD=3)
    served = serve(toml)
    qc = Queue("syncC", create=False)
    qd = Queue("syncD", create=False)
    first, later = batch("c", 400), batch("d", 40)
    qd.add_many(first)
    db.wait_rows("syncd", lambda rows: rows == first)
    snapshot_then_kill(db, served, qc, "syncc", first=first, later=later)

    served = serve(toml)  # reattaches both segments
    db.wait_rows("syncc", lambda rows: rows == [])  # snapshot rows dropped at start
    assert db.rows("syncd") == []
    assert qc.peek_many(10_000) == first + later
    served.terminate()
    assert db.rows("syncc") == first + later
    assert db.rows("syncd") == first
    # the instance attached (did not create) these segments, so it left them, emptied
    assert qc.size() == 0
    assert qd.size() == 0
    qc.close()
    qd.close()


@pytest.mark.slow
def test_snapshots_follow_the_queue_while_it_is_consumed(
    db: Db, serve: Callable[[str], Served], names: list[str]
) -> None:
    """A snapshot replaces the previous one: consumed items leave the table too."""
    names.append("syncE")
    served = serve(config(db, syncE=1))
    q = Queue("syncE", create=False)
    items = batch("e", 300)
    q.add_many(items)
    db.wait_rows("synce", lambda rows: rows == items)
    assert q.fetch_many(100) == items[:100]
    db.wait_rows("synce", lambda rows: rows == items[100:])
    assert drain(q) == items[100:]
    db.wait_rows("synce", lambda rows: rows == [])
    served.terminate()
    assert db.rows("synce") == []
    q.close()
