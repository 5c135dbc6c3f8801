"""PostgreSQL backend (psycopg 3, imported only when a postgres:// URL is used).

Table names follow PostgreSQL's folding of the unquoted names Kamailio sends: queue ``MixQ``
uses table ``mixq``. pymqueue always quotes the folded name, so any queue name that is valid
UTF-8 without NUL and at most 63 bytes works (``q.x-y:z/1`` → table ``"q.x-y:z/1"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pymqueue.db._backend import (
    JOURNAL_TABLE,
    READ_CHUNK,
    Column,
    JournalEntry,
    TableInfo,
    fold_name,
    table_name_text,
)
from pymqueue.errors import ConfigError, DatabaseError

__all__ = ["PostgresBackend", "import_psycopg"]

CONNECT_TIMEOUT = 10
NAMEDATALEN = 63


def import_psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError as e:
        raise ConfigError(
            f"a postgres:// db_url needs psycopg 3: pip install 'pymqueue[postgres]' ({e})"
        ) from None


_CREATE = (
    "CREATE TABLE {t} (id BIGSERIAL PRIMARY KEY, "
    "key BYTEA NOT NULL DEFAULT '', val BYTEA NOT NULL DEFAULT '')"
)
_CREATE_JOURNAL = (
    f"CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (tbl TEXT NOT NULL, op TEXT NOT NULL, "
    "mark BIGINT NOT NULL, n BIGINT NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL, "
    "PRIMARY KEY (tbl, op))"
)
_TEXT_TYPES = {"text", "varchar", "bpchar", "name"}


class PostgresBackend:
    kind = "postgresql"

    def __init__(self, url: str, display: str) -> None:
        self.psycopg = import_psycopg()
        self.display = f"PostgreSQL database {display!r}"
        try:
            self.conn = self.psycopg.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, client_encoding="UTF8"
            )
        except self.psycopg.Error as e:
            raise DatabaseError(
                f"cannot connect to {self.display}: {' '.join(str(e).split())} (is the server up?)"
            ) from e
        self._journal_ready = False

    # -- names --------------------------------------------------------------------------
    def table_for(self, qname: bytes) -> str:
        name = table_name_text(qname, "PostgreSQL")
        table = fold_name(name)
        if len(table.encode()) > NAMEDATALEN:
            raise DatabaseError(
                f"queue name {name!r} is longer than PostgreSQL's {NAMEDATALEN}-byte "
                "identifier limit"
            )
        if table == JOURNAL_TABLE:
            raise DatabaseError(f"queue name {name!r} is reserved in the database")
        return table

    def quote(self, ident: str) -> str:
        return '"' + ident.replace('"', '""') + '"'

    def _x(self, sql: str, params: Any = None) -> Any:
        return self.conn.execute(sql, params)

    # -- schema -------------------------------------------------------------------------
    def inspect(self, table: str) -> TableInfo | None:
        rows = self._x(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, a.atttypmod, "
            "a.atthasdef OR a.attidentity <> '' "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (self.quote(table),),
        ).fetchall()
        if not rows:
            return None
        cols = {str(r[0]).lower(): r for r in rows}
        missing = [c for c in ("id", "key", "val") if c not in cols]
        if missing:
            raise DatabaseError(
                f"table {table!r} in {self.display} has no column {' or '.join(missing)} "
                "(Kamailio's layout: id, key, val; id gives the load order)"
            )

        def col(c: str) -> Column:
            name, decl, typ, mod, _ = cols[c]
            if typ == "bytea":
                return Column(name, "bytes", decl)
            if typ in _TEXT_TYPES:
                maxc = int(mod) - 4 if typ in ("varchar", "bpchar") and int(mod) >= 4 else None
                return Column(name, "text", decl, maxc)
            raise DatabaseError(
                f"column {name!r} of table {table!r} in {self.display} has type {decl}: "
                "pymqueue needs a character type or bytea"
            )

        return TableInfo(table, col("key"), col("val"), str(cols["id"][0]), bool(cols["id"][4]))

    def create(self, table: str) -> TableInfo:
        self._x(_CREATE.format(t=self.quote(table)))
        info = self.inspect(table)
        assert info is not None
        return info

    @contextmanager
    def transaction(self, lock_table: str | None = None) -> Iterator[None]:
        with self.conn.transaction():
            if lock_table is not None:
                # EXCLUSIVE: others may still read, nobody else inserts or deletes rows
                # until we commit.
                self._x(f"LOCK TABLE {self.quote(lock_table)} IN EXCLUSIVE MODE")
            yield

    # -- rows ---------------------------------------------------------------------------
    def null_row(self, info: TableInfo) -> tuple[int, str] | None:
        k, v = self.quote(info.key.name), self.quote(info.val.name)
        row = self._x(
            f"SELECT {self.quote(info.order_col)}, {k} IS NULL FROM {self.quote(info.table)} "
            f"WHERE {k} IS NULL OR {v} IS NULL ORDER BY {self.quote(info.order_col)} LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return (int(row[0]) if row[0] is not None else -1), ("key" if row[1] else "val")

    def count(self, info: TableInfo) -> int:
        return int(self._x(f"SELECT count(*) FROM {self.quote(info.table)}").fetchone()[0])

    def read(self, info: TableInfo) -> Iterator[list[tuple[bytes, bytes]]]:
        def b(x: object) -> bytes:
            if isinstance(x, str):
                return x.encode("utf-8")
            assert isinstance(x, bytes | bytearray | memoryview)
            return bytes(x)

        with self.conn.cursor(name="pymqueue_load", binary=True) as cur:
            cur.itersize = READ_CHUNK
            cur.execute(
                f"SELECT {self.quote(info.key.name)}, {self.quote(info.val.name)} "
                f"FROM {self.quote(info.table)} ORDER BY {self.quote(info.order_col)}"
            )
            while True:
                rows = cur.fetchmany(READ_CHUNK)
                if not rows:
                    return
                yield [(b(k), b(v)) for k, v in rows]

    def delete_all(self, info: TableInfo) -> int:
        return int(self._x(f"DELETE FROM {self.quote(info.table)}").rowcount)

    def delete_range(self, info: TableInfo, lo: int, hi: int) -> int:
        return int(
            self._x(
                f"DELETE FROM {self.quote(info.table)} "
                f"WHERE {self.quote(info.order_col)} BETWEEN %s AND %s",
                (lo, hi),
            ).rowcount
        )

    def insert(
        self, info: TableInfo, items: Iterable[tuple[bytes, bytes]], n: int
    ) -> tuple[int, int]:
        if n == 0:
            return 0, 0
        t = self.quote(info.table)
        kt = info.key.storage == "text"
        vt = info.val.storage == "text"
        cols = f"{self.quote(info.key.name)}, {self.quote(info.val.name)}"
        base = None
        if not info.id_default:
            base = int(
                self._x(
                    f"SELECT coalesce(max({self.quote(info.order_col)}), 0) FROM {t}"
                ).fetchone()[0]
            )
            cols = f"{self.quote(info.order_col)}, {cols}"
        with self.conn.cursor() as cur, cur.copy(f"COPY {t} ({cols}) FROM STDIN") as cp:
            for i, (k, v) in enumerate(items):
                kk: object = k.decode("utf-8") if kt else k
                vv: object = v.decode("utf-8") if vt else v
                if base is None:
                    cp.write_row((kk, vv))
                else:
                    cp.write_row((base + i + 1, kk, vv))
        # Rows written by this transaction: xmin is our transaction id. The ids are one
        # contiguous block because the table is locked EXCLUSIVE while we insert.
        rng = self._x(
            f"SELECT min({self.quote(info.order_col)}), max({self.quote(info.order_col)}) "
            f"FROM {t} WHERE xmin = pg_current_xact_id()::xid"
        ).fetchone()
        return int(rng[0]), int(rng[1])

    # -- journal ------------------------------------------------------------------------
    def journal_get(self, table: str) -> dict[str, JournalEntry]:
        if self._x("SELECT to_regclass(%s)", (JOURNAL_TABLE,)).fetchone()[0] is None:
            return {}
        rows = self._x(
            f"SELECT op, mark, n, lo, hi FROM {JOURNAL_TABLE} WHERE tbl = %s", (table,)
        ).fetchall()
        return {
            str(op): JournalEntry(table, str(op), int(m), int(n), int(lo), int(hi))
            for op, m, n, lo, hi in rows
        }

    def journal_put(self, entry: JournalEntry) -> None:
        if not self._journal_ready:
            self._x(_CREATE_JOURNAL)
            self._journal_ready = True
        self._x(
            f"INSERT INTO {JOURNAL_TABLE} (tbl, op, mark, n, lo, hi) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tbl, op) DO UPDATE SET "
            "mark = EXCLUDED.mark, n = EXCLUDED.n, lo = EXCLUDED.lo, hi = EXCLUDED.hi",
            (entry.table, entry.op, entry.mark, entry.n, entry.lo, entry.hi),
        )

    def journal_del(self, table: str, op: str) -> None:
        if self._x("SELECT to_regclass(%s)", (JOURNAL_TABLE,)).fetchone()[0] is not None:
            self._x(f"DELETE FROM {JOURNAL_TABLE} WHERE tbl = %s AND op = %s", (table, op))

    # -- misc ---------------------------------------------------------------------------
    def check_writable(self) -> None:
        ro = self._x("SHOW transaction_read_only").fetchone()[0]
        if ro == "on":
            raise DatabaseError(f"{self.display} is read-only (hot standby or read-only role)")

    def describe_error(self, exc: BaseException) -> str | None:
        if not isinstance(exc, self.psycopg.Error):
            return None
        state = getattr(exc, "sqlstate", None)
        msg = " ".join(str(exc).split())
        if isinstance(exc, self.psycopg.OperationalError) and state is None:
            return f"{msg} (connection lost or server down?)"
        if state == "53100":
            return f"{msg} (disk full)"
        return f"{msg} [SQLSTATE {state}]" if state else msg

    def close(self) -> None:
        self.conn.close()
