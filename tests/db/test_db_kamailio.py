"""Round trips with the REAL Kamailio 5.6.3 (db_sqlite / db_postgres): Kamailio loads the
tables pymqueue wrote, and pymqueue loads the tables Kamailio wrote."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fix_postgres import PgServer
from test_db_postgres import restore
from test_db_sqlite import Queues, drain, qdef, queues, start, stop

from pymqueue.db import Persistence

pytestmark = pytest.mark.kamailio
__all__ = ["queues"]

# Kamailio loads these exactly from a BLOB/bytea column; it cannot save an empty key or
# value (SIGSEGV, T42), so the items going back to pymqueue are non-empty.
ITEMS = [
    (b"k1", b"v1"),
    (b"bin\x00key", b"\xff\x00val\xfe"),
    (b"q'uote", b'semi;colon "dq"'),
    ("été".encode(), "ü".encode()),
]


def mq_lines(driver: str, db_url: str, *defs: str) -> list[str]:
    # spec 2.4: the DB driver and db_url must come before the mqueue definitions (5.6.3)
    return [f'loadmodule "{driver}.so"', f'modparam("mqueue", "db_url", "{db_url}")',
            *(f'modparam("mqueue", "mqueue", "{d}")' for d in defs)]  # fmt: skip


def kamailio_drain(drv: Any, q: str) -> list[tuple[bytes, bytes]]:
    out = []
    while drv.fetch(q) == 1:
        out.append((drv.mqk(q) or b"", drv.mqv(q) or b""))
    return out


def round_trip(url_py: str, url_kam: str, driver: str, *, kamailio_mq: Callable[..., Any],
               queues: Queues, table: str) -> None:  # fmt: skip
    d = [qdef(table, 3)]
    (q,) = queues.make(d)
    p = Persistence(url_py)
    start(p, d, [q])
    q.add_many(ITEMS)
    stop(p, d, [q])  # pymqueue writes (creates a BLOB/bytea table)
    drv = kamailio_mq(mq_lines(driver, url_kam, f"name={table};dbmode=1"))
    assert kamailio_drain(drv, table) == ITEMS  # Kamailio loads them exactly
    # What Kamailio can write back: db_postgres loses NUL bytes and invalid UTF-8 (P04).
    back = ITEMS if driver == "db_sqlite" else [ITEMS[0], ITEMS[2], ITEMS[3]]
    for k, v in back:
        assert drv.add(table, k, v) == 1
    ex = drv.instance.stop()  # Kamailio saves at shutdown
    assert ex.returncode == 0, drv.instance.log()
    (q2,) = queues.make(d, create=None)
    drain(q2)
    start(Persistence(url_py), [qdef(table, 2)], [q2])
    assert drain(q2) == back  # pymqueue loads what Kamailio wrote


def test_sqlite_both_directions(tmp_path: Path, kamailio_mq: Callable[..., Any],
                                queues: Queues) -> None:  # fmt: skip
    db = tmp_path / "mq.sqlite"
    round_trip(
        f"sqlite:///{db}",
        f"sqlite:///{db}",
        "db_sqlite",
        kamailio_mq=kamailio_mq,
        queues=queues,
        table="kq",
    )


def test_postgres_both_directions(pg_dsn: str, kamailio_mq: Callable[..., Any],
                                  queues: Queues) -> None:  # fmt: skip
    url = pg_dsn.replace("postgresql://", "postgres://")
    round_trip(pg_dsn, url, "db_postgres", kamailio_mq=kamailio_mq, queues=queues, table="kq")


def test_postgres_kamailio_varchar_table(pg_server: PgServer, pg_dsn: str,
                                         kamailio_mq: Callable[..., Any],
                                         queues: Queues) -> None:  # fmt: skip
    """Kamailio's own varchar table: pymqueue appends, Kamailio loads and saves back,
    pymqueue loads the rows Kamailio wrote."""
    restore(pg_server, pg_dsn, "pg-before-start.sql")
    d = [qdef("pq3", 3)]
    (q,) = queues.make(d)
    p = Persistence(pg_dsn)
    start(p, d, [q])
    q.add_many([(b"py0", b"from pymqueue"), (b"py1", "é".encode())])
    stop(p, d, [q])
    drv = kamailio_mq(mq_lines("db_postgres", pg_dsn.replace("postgresql://", "postgres://"),
                               "name=pq3;dbmode=1"))  # fmt: skip
    got = kamailio_drain(drv, "pq3")
    assert got == [(b"pre0", b"pq3-old-0"), (b"pre1", b"pq3-old-1"),
                   (b"py0", b"from pymqueue"), (b"py1", "é".encode())]  # fmt: skip
    assert drv.add("pq3", "kam", "from kamailio") == 1
    assert drv.instance.stop().returncode == 0
    with psycopg.connect(pg_dsn) as c:
        assert c.execute("SELECT key, val FROM pq3").fetchall() == [("kam", "from kamailio")]
    (q2,) = queues.make(d, create=None)
    start(Persistence(pg_dsn), [qdef("pq3", 1)], [q2])
    assert drain(q2) == [(b"kam", b"from kamailio")]
