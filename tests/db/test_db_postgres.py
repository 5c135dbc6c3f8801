"""Persistence on the real PostgreSQL (private cluster from fix_postgres): every dbmode, the
Kamailio 5.6.3 pg_dump fixtures, Kamailio's varchar tables vs created bytea tables, errors."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fix_postgres import PgServer, free_port
from test_db_sqlite import FIXTURES, ODD, Queues, drain, qdef, queues, start, stop

from pymqueue.db import Persistence, read_rejected
from pymqueue.errors import DatabaseError

pytestmark = pytest.mark.postgres
__all__ = ["queues"]  # the fixture, re-used


def restore(pg_server: PgServer, dsn: str, dump: str) -> None:
    """psql -f a Kamailio fixture dump into the (fresh) database."""
    subprocess.run(
        [str(pg_server.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
         "-f", str(FIXTURES / dump)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def q(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def test_kamailio_dump_loads(
    pg_server: PgServer, pg_dsn: str, tmp_path: Path, queues: Queues
) -> None:
    restore(pg_server, pg_dsn, "pg-before-start.sql")
    defs = [qdef("pq0", 0), qdef("pq1", 1), qdef("pq2", 2), qdef("pq3", 3),
            qdef("pmany", 1), qdef("MixQ", 1)]  # fmt: skip
    pq0, pq1, pq2, pq3, pmany, mixq = qs = queues.make(defs)
    p = Persistence(pg_dsn)
    start(p, defs, qs)
    assert drain(pq1) == [(b"pre0", b"pq1-old-0"), (b"pre1", b"pq1-old-1")]
    assert pq2.size() == 2
    assert pq3.size() == 0
    assert pq0.size() == 0
    # P01: 250 rows with descending ids load smallest id first
    got = drain(pmany)
    assert [k for k, _ in got] == [b"k%03d" % i for i in range(249, -1, -1)]
    # P02: queue MixQ uses table mixq (folded), not "MixQ"
    assert drain(mixq) == [(b"lower", b"table")]
    assert q(pg_dsn, 'SELECT key FROM "MixQ"') == [("upper",)]
    for t in ("pq1", "pq2", "pmany", "mixq"):
        assert q(pg_dsn, f"SELECT count(*) FROM {t}") == [(0,)]
    # T38/T39: save appends with ids continuing the sequence, FIFO order
    pq1.add_many([(b"new0", b"x"), (b"q'uote", b'semi;colon "dq" \\ back')])
    pq3.add(b"new", b"pq3-new")
    stop(p, defs, qs)
    assert q(pg_dsn, "SELECT id, key, val FROM pq1 ORDER BY id") == [
        (3, "new0", "x"), (4, "q'uote", 'semi;colon "dq" \\ back'),
    ]  # fmt: skip
    assert q(pg_dsn, "SELECT id, key, val FROM pq3 ORDER BY id") == [
        (1, "pre0", "pq3-old-0"), (2, "pre1", "pq3-old-1"), (3, "new", "pq3-new"),
    ]  # fmt: skip
    assert q(pg_dsn, "SELECT count(*) FROM pq2") == [(0,)]


def test_table_without_id_is_refused(pg_server: PgServer, pg_dsn: str, tmp_path: Path,
                                     queues: Queues) -> None:  # fmt: skip
    restore(pg_server, pg_dsn, "pg-before-start.sql")
    d = [qdef("pnoid", 1)]
    (qq,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"'pnoid'.*no column id"):
        start(Persistence(pg_dsn), d, [qq])


def test_varchar_table_rejects_what_it_cannot_hold(
    pg_server: PgServer, pg_dsn: str, tmp_path: Path, queues: Queues
) -> None:
    """P04: Kamailio loses a >64-char key, cuts `a\\0b` to `a`, loses invalid UTF-8.
    pymqueue stores what fits exactly and keeps the rest in the reject file, by name."""
    restore(pg_server, pg_dsn, "pg-before-start.sql")
    d = [qdef("pbig", 3)]
    (qq,) = queues.make(d)
    reject = tmp_path / "rej.jsonl"
    p = Persistence(pg_dsn, reject_file=reject)
    start(p, d, [qq])
    items = [
        (b"k" * 64, b"fits"),
        (b"k" * 65, b"too long"),
        (b"nul", b"a\x00b"),
        (b"latin", b"\xe9t\xe9"),
        (b"utf8", "été".encode()),
        (b"", b""),
        (b"quote", b'it\'s "q" \\ ;'),
    ]
    qq.add_many(items)
    stop(p, d, [qq])
    assert qq.size() == 0
    assert q(pg_dsn, "SELECT key, val FROM pbig ORDER BY id") == [
        ("k" * 64, "fits"), ("utf8", "été"), ("", ""), ("quote", "it's \"q\" \\ ;"),
    ]  # fmt: skip
    rej = list(read_rejected(reject))
    assert [(r.key, r.value) for r in rej] == [items[1], items[2], items[3]]
    assert "65 characters" in rej[0].reason
    assert "NUL" in rej[1].reason
    assert "UTF-8" in rej[2].reason
    assert {r.queue for r in rej} == {b"pbig"}


@pytest.mark.parametrize("dbmode", [0, 1, 2, 3])
def test_modes_round_trip_bytea(pg_dsn: str, queues: Queues, dbmode: int) -> None:
    d = [qdef("Odd.Q-1:x/y", dbmode)]
    (qq,) = queues.make(d)
    p = Persistence(pg_dsn)
    start(p, d, [qq])
    qq.add_many(ODD)
    stop(p, d, [qq])
    saved = dbmode in (1, 3)
    assert qq.size() == (0 if saved else len(ODD))
    drain(qq)
    (q2,) = queues.make(d, create=None)
    start(Persistence(pg_dsn), d, [q2])
    assert drain(q2) == (ODD if saved and dbmode in (1, 2) else [])
    if dbmode in (1, 2, 3):
        types = q(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                  "WHERE table_name = 'odd.q-1:x/y' ORDER BY ordinal_position")  # fmt: skip
        assert types == [("id", "bigint"), ("key", "bytea"), ("val", "bytea")]
    if dbmode == 3:
        assert [(bytes(k), bytes(v)) for k, v in
                q(pg_dsn, 'SELECT key, val FROM "odd.q-1:x/y" ORDER BY id')] == ODD  # fmt: skip


def test_null_row_refuses(pg_dsn: str, queues: Queues) -> None:
    q(pg_dsn, "CREATE TABLE nul (id serial primary key, key varchar(64), val varchar(4096))")
    q(pg_dsn, "INSERT INTO nul (key, val) VALUES ('a', 'x'), (NULL, 'y')")
    d = [qdef("nul", 2)]
    (qq,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"row id 2 has a NULL key"):
        start(Persistence(pg_dsn), d, [qq])
    assert qq.size() == 0
    assert q(pg_dsn, "SELECT count(*) FROM nul") == [(2,)]


def test_non_text_column_is_a_clear_error(pg_dsn: str, queues: Queues) -> None:
    q(pg_dsn, "CREATE TABLE ik (id serial primary key, key integer, val text)")
    d = [qdef("ik", 1)]
    (qq,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"column 'key'.*integer"):
        start(Persistence(pg_dsn), d, [qq])


def test_db_down_at_start_and_at_stop(queues: Queues) -> None:
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/nodb"
    d = [qdef("down", 1)]
    (qq,) = queues.make(d)
    with pytest.raises(DatabaseError, match=r"cannot connect.*is the server up"):
        start(Persistence(dead), d, [qq])
    qq.add_many([(b"a", b"1"), (b"b", b"2")])
    with pytest.raises(DatabaseError, match=r"'down'.*cannot connect"):
        stop(Persistence(dead), d, [qq])
    assert drain(qq) == [(b"a", b"1"), (b"b", b"2")]  # kept, in order


def test_db_dropped_between_start_and_stop(pg_server: PgServer, queues: Queues) -> None:
    """The server is up but the database vanished: a clear error, items kept."""
    with psycopg.connect(pg_server.dsn, autocommit=True) as c:
        c.execute('CREATE DATABASE "t_gone"')
    dsn = pg_server.dsn_for("t_gone")
    d = [qdef("gone", 1)]
    (qq,) = queues.make(d)
    p = Persistence(dsn)
    start(p, d, [qq])
    qq.add(b"x", b"y")
    with psycopg.connect(pg_server.dsn, autocommit=True) as c:
        c.execute('DROP DATABASE "t_gone" WITH (FORCE)')
    with pytest.raises(DatabaseError, match="t_gone"):
        stop(p, d, [qq])
    assert drain(qq) == [(b"x", b"y")]
