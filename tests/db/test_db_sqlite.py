"""Persistence on SQLite: Kamailio 5.6.3 fixture tables, every dbmode, exact bytes, errors.

The fixture files were written by the real Kamailio 5.6.3 (spec mqueue.md §12); each test
copies them to a temporary directory first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fix_postgres import missing

import pymqueue
from pymqueue import AddMode, Overflow, Queue
from pymqueue.db import Persistence, read_rejected
from pymqueue.definitions import DbMode, QueueDef
from pymqueue.errors import DatabaseError

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "kamailio-5.6.3" / "mqueue"
if not FIXTURES.is_dir():  # pragma: no cover - layout of a checkout without ../shared
    FIXTURES = Path("/work/shared/fixtures/kamailio-5.6.3/mqueue")

Row = tuple[int, str, bytes | None, str, bytes | None]


def fixture_copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "mq.sqlite"
    shutil.copyfile(FIXTURES / name, dst)
    os.chmod(dst, 0o644)
    return dst


def rows(db: Path, table: str) -> list[Row]:
    """(id, typeof(key), key, typeof(val), val) in id order, exact bytes."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.text_factory = bytes
        return [
            (
                int(i),
                tk.decode(),
                k if k is None else bytes(k),
                tv.decode(),
                v if v is None else bytes(v),
            )
            for i, tk, k, tv, v in c.execute(
                f"SELECT rowid, typeof(key), CAST(key AS BLOB), typeof(val), CAST(val AS BLOB) "
                f'FROM "{table}" ORDER BY rowid'
            )
        ]


def sql(db: Path, *stmts: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as c:
        for s in stmts:
            c.execute(s)
        c.commit()


class Queues:
    """Real shared-memory queues for a list of QueueDefs, unlinked at the end."""

    def __init__(self) -> None:
        self.made: list[Queue] = []

    def make(self, defs: Sequence[QueueDef], create: bool | None = True) -> list[Queue]:
        out = []
        for d in defs:
            q = Queue(
                d.name, create=create, size=d.size, addmode=d.addmode, policy=d.policy,
                **({"capacity": d.capacity} if d.capacity else {}),
            )  # fmt: skip
            self.made.append(q)
            out.append(q)
        return out

    def cleanup(self) -> None:
        for q in self.made:
            with contextlib.suppress(Exception):
                q.unlink()
            with contextlib.suppress(Exception):
                q.close()


@pytest.fixture
def queues(namespace: str) -> Iterator[Queues]:
    qs = Queues()
    try:
        yield qs
    finally:
        qs.cleanup()


def qdef(name: str, dbmode: int, **kw: object) -> QueueDef:
    return QueueDef(name.encode(), dbmode=DbMode(dbmode), **kw)  # type: ignore[arg-type]


def start(p: Persistence, defs: Sequence[QueueDef], qs: Sequence[Queue], re: bool = False) -> None:
    p.on_start([(d, q, re) for d, q in zip(defs, qs, strict=True)])


def stop(p: Persistence, defs: Sequence[QueueDef], qs: Sequence[Queue]) -> None:
    p.on_stop(list(zip(defs, qs, strict=True)))


def drain(q: Queue) -> list[tuple[bytes, bytes]]:
    return q.fetch_many(1_000_000)


# ---------------------------------------------------------------------------------------
# Kamailio's fixture tables


def test_t36_t37_t38_t39_same_tables_as_kamailio(tmp_path: Path, queues: Queues) -> None:
    """Replays the Kamailio run that produced sqlite-after-run1 and compares the tables."""
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    defs = [qdef("dq0", 0), qdef("dq1", 1), qdef("dq2", 2), qdef("dq3", 3)]
    dq0, dq1, dq2, dq3 = qs = queues.make(defs)
    p = Persistence(f"sqlite:///{db}")
    start(p, defs, qs)
    # T36: dbmode 1 loads in id order and empties the table
    assert dq1.size() == 3
    assert rows(db, "dq1") == []
    # T37: dbmode 2 loads too
    assert dq2.size() == 3
    assert rows(db, "dq2") == []
    # dbmode 3 and 0 do not load
    assert dq3.size() == 0
    assert dq0.size() == 0
    assert len(rows(db, "dq3")) == 3
    assert len(rows(db, "dq0")) == 3
    # T39
    assert dq1.fetch() == (b"pre0", b"dq1-old-0")
    dq1.add_many([(b"new0", b"dq1-new-0"), (b"new1", b"dq1-new-1")])
    dq1.add(b"q'uote", b'semi;colon "dq" \\ back')
    # T38
    dq3.add_many([(b"new0", b"dq3-new-0"), (b"new1", b"dq3-new-1")])
    dq3.add(b"bin\x01", b"nul\x00inside\xff")
    assert dq3.fetch() == (b"new0", b"dq3-new-0")
    stop(p, defs, qs)
    want = FIXTURES / "sqlite-after-run1.sqlite"
    for t in ("dq0", "dq1", "dq2", "dq3"):
        assert rows(db, t) == rows(want, t), t
    # T37 after stop: dbmode 2 never writes back
    assert rows(db, "dq2") == []


def test_t38_dbmode3_accumulates_over_restarts(tmp_path: Path, queues: Queues) -> None:
    db = fixture_copy(tmp_path, "sqlite-after-run1.sqlite")
    d = [qdef("dq3", 3)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    assert q.size() == 0
    q.add_many([(b"r2-0", b"run2"), (b"r2-1", b"run2")])
    stop(p, d, [q])
    assert rows(db, "dq3") == rows(FIXTURES / "sqlite-after-run2.sqlite", "dq3")


def test_t40_load_goes_through_size_and_addmode(tmp_path: Path, queues: Queues) -> None:
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    d = [qdef("dqs", 1, size=2, addmode=AddMode.UNIQUE_KEEP_NEWEST)]
    (q,) = queues.make(d)
    start(Persistence(f"sqlite:///{db}"), d, [q])
    assert drain(q) == [(b"s0", b"sv3"), (b"s1", b"sv4")]
    assert rows(db, "dqs") == []


def test_binary_fixture_loads_exactly(tmp_path: Path, queues: Queues) -> None:
    """Kamailio truncates a `character varying` column at the first NUL on load (S16);
    pymqueue reads every column type byte-exact."""
    db = fixture_copy(tmp_path, "sqlite-binary-saved.sqlite")
    defs = [qdef(t, 2) for t in ("bvarchar", "btext", "bblob")]
    qs = queues.make(defs)
    start(Persistence(f"sqlite:///{db}"), defs, qs)
    for q in qs:
        assert drain(q) == [
            (b"k\x00z", b"nul\x00inside\xff\xfe end"),
            (b"plain", "été".encode()),
        ]


def test_t42_empty_value_is_saved_not_a_crash(tmp_path: Path, queues: Queues) -> None:
    db = fixture_copy(tmp_path, "sqlite-empty-value-shutdown.sqlite")
    d = [qdef("e1", 1)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    q.add_many([(b"second", b""), (b"", b"third"), (b"", b"")])
    stop(p, d, [q])
    assert [(r[2], r[4]) for r in rows(db, "e1")] == [
        (b"first", b"ok"), (b"second", b""), (b"", b"third"), (b"", b""),
    ]  # fmt: skip
    (q2,) = queues.make(d, create=None)
    drain(q2)
    start(Persistence(f"sqlite:///{db}"), d, [q2])
    assert drain(q2) == [(b"first", b"ok"), (b"second", b""), (b"", b"third"), (b"", b"")]


def test_numbers_and_table_without_id(tmp_path: Path, queues: Queues) -> None:
    """S08: numbers in text columns load as their text; S11: (key, val) loads in rowid order."""
    db = tmp_path / "x.db"
    sql(
        db,
        "CREATE TABLE noid (key TEXT, val TEXT)",
        "INSERT INTO noid VALUES ('b', '2'), ('a', 123), (45.5, '')",
    )
    d = [qdef("noid", 1)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    assert drain(q) == [(b"b", b"2"), (b"a", b"123"), (b"45.5", b"")]
    q.add(b"z", b"\xff")
    stop(p, d, [q])
    assert [(r[2], r[4]) for r in rows(db, "noid")] == [(b"z", b"\xff")]


# ---------------------------------------------------------------------------------------
# modes, created tables, exact bytes

ODD = [
    (b"", b""),
    (b"k\x00z", b"v\x00\xff\xfe"),
    (b"\xff" * 3, "é".encode() * 5000),
    (b"k" * 300, b"x" * 100_000),
    (b"dup", b"1"),
    (b"dup", b"2"),
    (b"'; DROP TABLE x; --", b'"\\'),
]


@pytest.mark.parametrize("dbmode", [0, 1, 2, 3])
def test_modes_round_trip(tmp_path: Path, queues: Queues, dbmode: int) -> None:
    db = tmp_path / "m.db"
    d = [qdef("Mode.q-1:x/y", dbmode)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    q.add_many(ODD)
    stop(p, d, [q])
    saved = dbmode in (1, 3)
    assert q.size() == (0 if saved else len(ODD))
    drain(q)
    (q2,) = queues.make(d, create=None)
    p2 = Persistence(f"sqlite:///{db}")
    start(p2, d, [q2])
    loads = dbmode in (1, 2)
    assert drain(q2) == (ODD if saved and loads else [])
    if dbmode == 0:
        assert not db.exists() or "Mode" not in str(rows_tables(db))
    if dbmode == 3:
        assert [(r[2], r[4]) for r in rows(db, "Mode.q-1:x/y")] == ODD


def rows_tables(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_created_table_schema_is_blob_and_kamailio_shaped(tmp_path: Path, queues: Queues) -> None:
    db = tmp_path / "c.db"
    d = [qdef("newq", 1)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    with contextlib.closing(sqlite3.connect(db)) as c:
        cols = [(r[1], r[2]) for r in c.execute('PRAGMA table_info("newq")')]
    assert cols == [("id", "INTEGER"), ("key", "BLOB"), ("val", "BLOB")]
    q.add(b"a", b"b")
    stop(p, d, [q])
    assert rows(db, "newq") == [(1, "blob", b"a", "blob", b"b")]


def test_load_only_the_table_case_insensitively(tmp_path: Path, queues: Queues) -> None:
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    d = [qdef("DQ1", 2)]
    (q,) = queues.make(d)
    start(Persistence(f"sqlite:///{db}"), d, [q])
    assert q.size() == 3


def test_reattached_queue_is_not_reloaded(tmp_path: Path, queues: Queues) -> None:
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    d = [qdef("dq1", 1)]
    (q,) = queues.make(d)
    q.add(b"live", b"1")
    start(Persistence(f"sqlite:///{db}"), d, [q], re=True)
    assert drain(q) == [(b"live", b"1")]
    assert len(rows(db, "dq1")) == 3


# ---------------------------------------------------------------------------------------
# errors


def test_t41_null_row_refuses_and_changes_nothing(tmp_path: Path, queues: Queues) -> None:
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    sql(db, 'CREATE TABLE nul (id INTEGER PRIMARY KEY, key TEXT, val TEXT)',
        "INSERT INTO nul VALUES (1, 'a', 'x'), (2, 'b', NULL), (3, 'c', 'y')")  # fmt: skip
    d = [qdef("nul", 1)]
    (q,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"'nul'.*row id 2 has a NULL val"):
        start(Persistence(f"sqlite:///{db}"), d, [q])
    assert q.size() == 0
    assert len(rows(db, "nul")) == 3


def test_missing_column_is_a_clear_error(tmp_path: Path, queues: Queues) -> None:
    db = tmp_path / "x.db"
    sql(db, "CREATE TABLE odd (id INTEGER PRIMARY KEY, k TEXT, v TEXT)")
    d = [qdef("odd", 1)]
    (q,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"table 'odd'.*no column key or val"):
        start(Persistence(f"sqlite:///{db}"), d, [q])


def test_missing_table_is_created_not_an_error(tmp_path: Path, queues: Queues) -> None:
    """Kamailio refuses to start (T41); pymqueue creates the table and loads nothing."""
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    d = [qdef("absent", 2)]
    (q,) = queues.make(d)
    start(Persistence(f"sqlite:///{db}"), d, [q])
    assert q.size() == 0
    assert "absent" in rows_tables(db)


def test_unopenable_database(tmp_path: Path, queues: Queues) -> None:
    d = [qdef("q", 1)]
    (q,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"cannot open|unable to open"):
        start(Persistence(f"sqlite:///{tmp_path}/no/such/dir/x.db"), d, [q])


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (needs mount privileges: skipped, or failed under CI=true)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if p.returncode != 0:
        missing(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_database_fails_at_start(small_fs: Path, queues: Queues) -> None:
    db = small_fs / "ro.db"
    shutil.copyfile(FIXTURES / "sqlite-before-start.sqlite", db)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    d = [qdef("dq1", 1)]
    (q,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"not writable.*read-only|readonly"):
        start(Persistence(f"sqlite:///{db}"), d, [q])
    assert q.size() == 0


def test_full_disk_at_stop_keeps_items(small_fs: Path, queues: Queues) -> None:
    db = small_fs / "full.db"
    d = [qdef("big", 1)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    items = [(b"k%d" % i, os.urandom(1000)) for i in range(2000)]  # ~2 MB > 512 KiB
    q.add_many(items)
    with pytest.raises(DatabaseError, match=r"'big'.*(full|disk)"):
        stop(p, d, [q])
    assert drain(q) == items  # nothing lost, order kept
    assert rows(db, "big") == []


def test_text_affinity_columns_keep_kamailio_storage(tmp_path: Path, queues: Queues) -> None:
    """Into Kamailio's varchar table items go as TEXT (what db_sqlite writes), bytes exact."""
    db = fixture_copy(tmp_path, "sqlite-before-start.sqlite")
    d = [qdef("dq3", 3)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    q.add(b"k\x00", b"\xff")
    stop(p, d, [q])
    assert rows(db, "dq3")[-1] == (4, "text", b"k\x00", "text", b"\xff")
    assert not p.rejected
    assert not Path(str(db) + ".rejected.jsonl").exists()
    assert list(read_rejected(os.devnull)) == []


def test_item_larger_than_queue_is_kept_in_reject_file(tmp_path: Path, queues: Queues) -> None:
    db = tmp_path / "r.db"
    sql(db, "CREATE TABLE small (id INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB, val BLOB)",
        "INSERT INTO small (key, val) VALUES (x'61', zeroblob(20000)), (x'62', x'00')")  # fmt: skip
    d = [qdef("small", 2, capacity=8192, policy=Overflow.DROP_OLDEST)]
    (q,) = queues.make(d)
    p = Persistence(f"sqlite:///{db}")
    start(p, d, [q])
    assert drain(q) == [(b"b", b"\x00")]
    (rej,) = read_rejected(p.reject_file)
    assert (rej.queue, rej.key, len(rej.value)) == (b"small", b"a", 20000)
    assert "larger than the queue" in rej.reason


def test_pymqueue_is_importable_lazily() -> None:
    assert pymqueue.db is not None  # type: ignore[attr-defined]
