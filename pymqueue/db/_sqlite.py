"""SQLite backend (standard library ``sqlite3``).

Items are stored exactly whatever the declared column types: a column with TEXT affinity
(Kamailio's documented ``character varying`` schema) receives ``CAST(? AS TEXT)`` — the same
bytes, stored as TEXT the way Kamailio's db_sqlite writes them; other columns receive a BLOB.
Rows are read back as ``CAST(col AS BLOB)``, so TEXT with NUL bytes or invalid UTF-8, BLOBs
and numbers (as their text, like Kamailio) all come back as bytes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pymqueue.db._backend import (
    JOURNAL_TABLE,
    READ_CHUNK,
    Column,
    JournalEntry,
    TableInfo,
    table_name_text,
)
from pymqueue.errors import DatabaseError

__all__ = ["SqliteBackend"]

BUSY_TIMEOUT = 30.0

_CREATE = (
    "CREATE TABLE {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "key BLOB NOT NULL DEFAULT x'', val BLOB NOT NULL DEFAULT x'')"
)
_CREATE_JOURNAL = (
    f"CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (tbl TEXT NOT NULL, op TEXT NOT NULL, "
    "mark INTEGER NOT NULL, n INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, "
    "PRIMARY KEY (tbl, op))"
)


def _text_affinity(declared: str) -> bool:
    d = declared.upper()
    return "INT" not in d and any(s in d for s in ("CHAR", "CLOB", "TEXT"))


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = path
        self.display = f"SQLite database {str(Path(path).absolute())!r}"
        if not create and not os.path.exists(path):
            raise DatabaseError(f"{self.display} does not exist")
        try:
            self.conn = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open {self.display}: {e}") from e
        self.conn.text_factory = bytes
        self._journal_ready = False

    # -- names --------------------------------------------------------------------------
    def table_for(self, qname: bytes) -> str:
        name = table_name_text(qname, "SQLite")
        if name.lower() == JOURNAL_TABLE or name.lower().startswith("sqlite_"):
            raise DatabaseError(f"queue name {name!r} is reserved in the database")
        return name

    def quote(self, ident: str) -> str:
        return '"' + ident.replace('"', '""') + '"'

    # -- schema -------------------------------------------------------------------------
    def inspect(self, table: str) -> TableInfo | None:
        rows = self.conn.execute(f"PRAGMA table_info({self.quote(table)})").fetchall()
        if not rows:
            return None
        cols: dict[str, tuple[str, str, int]] = {}
        for _cid, name, decl, _notnull, _dflt, pk in rows:
            n = name.decode() if isinstance(name, bytes) else str(name)
            d = (decl.decode() if isinstance(decl, bytes) else str(decl or "")).strip()
            cols[n.lower()] = (n, d, int(pk))
        missing = [c for c in ("key", "val") if c not in cols]
        if missing:
            raise DatabaseError(
                f"table {table!r} in {self.display} has no column {' or '.join(missing)} "
                f"(columns: {', '.join(c[0] for c in cols.values())})"
            )

        def col(c: str) -> Column:
            n, d, _ = cols[c]
            return Column(n, "bytes", d, None, _text_affinity(d))

        if "id" in cols:
            _, d, pk = cols["id"]
            npk = sum(1 for c in cols.values() if c[2])
            id_default = pk == 1 and npk == 1 and d.upper() == "INTEGER"
            return TableInfo(table, col("key"), col("val"), cols["id"][0], id_default)
        return TableInfo(table, col("key"), col("val"), "rowid", True)

    def create(self, table: str) -> TableInfo:
        self.conn.execute(_CREATE.format(t=self.quote(table)))
        info = self.inspect(table)
        assert info is not None
        return info

    @contextmanager
    def transaction(self, lock_table: str | None = None) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the database write lock at once: nobody else can add or
        # remove rows between our read and our delete.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- rows ---------------------------------------------------------------------------
    def _rowref(self, info: TableInfo) -> str:
        # The bounds of what we delete: rowid (== id for the documented schema).
        return "rowid"

    def null_row(self, info: TableInfo) -> tuple[int, str] | None:
        k, v = self.quote(info.key.name), self.quote(info.val.name)
        row = self.conn.execute(
            f"SELECT {self.quote(info.order_col) if info.order_col != 'rowid' else 'rowid'}, "
            f"{k} IS NULL FROM {self.quote(info.table)} WHERE {k} IS NULL OR {v} IS NULL "
            f"ORDER BY {self._order(info)} LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return int(row[0]) if row[0] is not None else -1, "key" if row[1] else "val"

    def _order(self, info: TableInfo) -> str:
        return "rowid" if info.order_col == "rowid" else f"{self.quote(info.order_col)}, rowid"

    def count(self, info: TableInfo) -> int:
        q = f"SELECT count(*) FROM {self.quote(info.table)}"
        return int(self.conn.execute(q).fetchone()[0])

    def read(self, info: TableInfo) -> Iterator[list[tuple[bytes, bytes]]]:
        cur = self.conn.execute(
            f"SELECT CAST({self.quote(info.key.name)} AS BLOB), "
            f"CAST({self.quote(info.val.name)} AS BLOB) FROM {self.quote(info.table)} "
            f"ORDER BY {self._order(info)}"
        )
        while True:
            rows = cur.fetchmany(READ_CHUNK)
            if not rows:
                return
            yield [(bytes(k), bytes(v)) for k, v in rows]

    def delete_all(self, info: TableInfo) -> int:
        return self.conn.execute(f"DELETE FROM {self.quote(info.table)}").rowcount

    def delete_range(self, info: TableInfo, lo: int, hi: int) -> int:
        return self.conn.execute(
            f"DELETE FROM {self.quote(info.table)} WHERE rowid BETWEEN ? AND ?", (lo, hi)
        ).rowcount

    def insert(
        self, info: TableInfo, items: Iterable[tuple[bytes, bytes]], n: int
    ) -> tuple[int, int]:
        """Append the items; returns the rowid range they got (contiguous: we hold the
        write lock and every row takes max(rowid)+1, or the next AUTOINCREMENT value)."""
        if n == 0:
            return 0, 0
        k = "CAST(? AS TEXT)" if info.key.text_affinity else "?"
        v = "CAST(? AS TEXT)" if info.val.text_affinity else "?"
        cols = f"{self.quote(info.key.name)}, {self.quote(info.val.name)}"
        if not info.id_default:
            base = int(
                self.conn.execute(
                    f"SELECT coalesce(max({self.quote(info.order_col)}), 0) "
                    f"FROM {self.quote(info.table)}"
                ).fetchone()[0]
            )
            sql = (
                f"INSERT INTO {self.quote(info.table)} ({self.quote(info.order_col)}, {cols}) "
                f"VALUES (?, {k}, {v})"
            )
            self.conn.executemany(sql, ((base + i + 1, a, b) for i, (a, b) in enumerate(items)))
            lo = base + 1
            rng = self.conn.execute(
                f"SELECT min(rowid), max(rowid) FROM {self.quote(info.table)} "
                f"WHERE {self.quote(info.order_col)} >= ?",
                (lo,),
            ).fetchone()
            return int(rng[0]), int(rng[1])
        sql = f"INSERT INTO {self.quote(info.table)} ({cols}) VALUES ({k}, {v})"
        self.conn.executemany(sql, items)
        hi = int(self.conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        return hi - n + 1, hi

    # -- journal ------------------------------------------------------------------------
    def _journal(self) -> None:
        if not self._journal_ready:
            self.conn.execute(_CREATE_JOURNAL)
            self._journal_ready = True

    def journal_get(self, table: str) -> dict[str, JournalEntry]:
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (JOURNAL_TABLE,)
        ).fetchone()
        if exists is None:
            return {}
        rows = self.conn.execute(
            f"SELECT op, mark, n, lo, hi FROM {JOURNAL_TABLE} WHERE tbl = ?", (table,)
        ).fetchall()
        out = {}
        for op, mark, n, lo, hi in rows:
            o = op.decode() if isinstance(op, bytes) else str(op)
            out[o] = JournalEntry(table, o, int(mark), int(n), int(lo), int(hi))
        return out

    def journal_put(self, entry: JournalEntry) -> None:
        self._journal()
        self.conn.execute(
            f"INSERT OR REPLACE INTO {JOURNAL_TABLE} (tbl, op, mark, n, lo, hi) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry.table, entry.op, entry.mark, entry.n, entry.lo, entry.hi),
        )

    def journal_del(self, table: str, op: str) -> None:
        if self.journal_get(table):
            self.conn.execute(f"DELETE FROM {JOURNAL_TABLE} WHERE tbl = ? AND op = ?", (table, op))

    # -- misc ---------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail now, not at stop, when the file or its directory cannot be written."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(_CREATE_JOURNAL)
            self.conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise DatabaseError(f"{self.display} is not writable: {self.describe_error(e)}") from e
        directory = Path(self.path).absolute().parent
        if not os.access(directory, os.W_OK | os.X_OK):
            raise DatabaseError(
                f"{self.display}: directory {str(directory)!r} is not writable (SQLite needs "
                "it for its rollback journal)"
            )

    def describe_error(self, exc: BaseException) -> str | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        msg = str(exc)
        code = getattr(exc, "sqlite_errorname", "")
        if code.startswith("SQLITE_READONLY") or "readonly" in msg:
            return f"{msg} (read-only file or directory?)"
        if code == "SQLITE_FULL" or "full" in msg:
            return f"{msg} (disk full or SQLite size limit reached)"
        if code.startswith("SQLITE_BUSY") or "locked" in msg:
            return f"{msg} (another process holds the database lock)"
        return f"{msg} [{code}]" if code else msg

    def close(self) -> None:
        self.conn.close()
