"""What :mod:`pymqueue.db.persistence` needs from a database driver (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from pymqueue.errors import DatabaseError

__all__ = ["JOURNAL_TABLE", "Backend", "Column", "JournalEntry", "TableInfo", "fold_name"]

#: Bookkeeping table in the same database (see docs/persistence.md, "Crash safety").
JOURNAL_TABLE = "pymqueue_journal"

#: Rows read per round trip when loading.
READ_CHUNK = 10_000


@dataclass(frozen=True)
class Column:
    """How a ``key``/``val`` column stores an item's bytes.

    ``storage`` ``"bytes"``: any bytes, stored exactly (SQLite: any declared type, PostgreSQL:
    ``bytea``). ``"text"``: PostgreSQL character types: UTF-8 text without NUL, at most
    ``max_chars`` characters when the column has a length limit.
    """

    name: str
    storage: Literal["bytes", "text"]
    declared: str
    max_chars: int | None = None
    text_affinity: bool = False  # SQLite: written as TEXT (Kamailio's way), still exact


@dataclass(frozen=True)
class TableInfo:
    table: str  # name as the database knows it (unquoted)
    key: Column
    val: Column
    order_col: str  # "id", or SQLite's "rowid" for a table without an id column
    id_default: bool  # the id column fills itself (autoincrement / sequence)


@dataclass(frozen=True)
class JournalEntry:
    """One intent or completion record (see persistence.py)."""

    table: str
    op: str  # "load" | "save" | "snap"
    mark: int  # engine counter before the shared-memory step
    n: int  # items involved
    lo: int  # id range of rows written (save/snap), 0 when unused
    hi: int


def table_name_text(qname: bytes, database: str) -> str:
    """A queue's name as the text of a table name, or DatabaseError naming ``database``."""
    try:
        name = qname.decode("utf-8")
    except UnicodeDecodeError:
        raise DatabaseError(
            f"queue name {qname!r} is not UTF-8 and cannot name a {database} table"
        ) from None
    if "\0" in name or not name:
        raise DatabaseError(f"queue name {qname!r} cannot name a {database} table")
    return name


def fold_name(name: str) -> str:
    """PostgreSQL's folding of an unquoted identifier: ASCII ``A``-``Z`` to lower case."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


class Backend(Protocol):
    kind: str
    display: str  # where the data lives, for messages (path or URL without password)

    def table_for(self, qname: bytes) -> str: ...
    def quote(self, ident: str) -> str: ...
    def inspect(self, table: str) -> TableInfo | None: ...
    def create(self, table: str) -> TableInfo: ...
    def transaction(self, lock_table: str | None = None) -> AbstractContextManager[None]: ...
    def null_row(self, info: TableInfo) -> tuple[int, str] | None: ...
    def count(self, info: TableInfo) -> int: ...
    def read(self, info: TableInfo) -> Iterator[list[tuple[bytes, bytes]]]: ...
    def delete_all(self, info: TableInfo) -> int: ...
    def delete_range(self, info: TableInfo, lo: int, hi: int) -> int: ...
    def insert(
        self, info: TableInfo, items: Iterable[tuple[bytes, bytes]], n: int
    ) -> tuple[int, int]: ...
    def journal_get(self, table: str) -> dict[str, JournalEntry]: ...
    def journal_put(self, entry: JournalEntry) -> None: ...
    def journal_del(self, table: str, op: str) -> None: ...
    def check_writable(self) -> None: ...
    def describe_error(self, exc: BaseException) -> str | None: ...
    def close(self) -> None: ...
