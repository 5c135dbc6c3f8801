"""Load queues from a database at start and save them at stop (Kamailio's ``dbmode``).

``dbmode`` as Kamailio 5.6.3 implements it: 0 none, 1 load at start and save at stop,
2 load only, 3 save only. One table per queue, columns ``id``, ``key``, ``val``.

Crash safety (see docs/persistence.md): the shared-memory queue and the database are two
stores that cannot commit together, so every step that touches both is bracketed by a row in
the ``pymqueue_journal`` table, written in the same database, that records the engine's
counters *before* the shared-memory step. After a crash the next :meth:`Persistence.on_start`
reads the journal and the counters of the surviving segment and finishes the step exactly:

* load: journal ``load`` (mark = items the queue had processed) is committed, then the rows
  are added to the queue and deleted — deletion and removal of the journal row are one
  transaction. A crash before that commit leaves the rows; on restart with the segment still
  there, the rows the queue already took (counter - mark) are skipped, the rest added, then
  all deleted. Without the segment the load simply runs again.
* save: the items are read *without removing them* (``Queue.peek_many``), inserted, and the
  journal row ``save`` (mark = items fetched so far, n) is committed in the same transaction;
  only then are the n items removed from the queue. A crash before the commit changes
  nothing; after it, the restart removes what the dead process had not yet removed.
* periodic sync (``sync_interval``): a snapshot of the queue replaces the previous snapshot's
  rows in one transaction; the journal row ``snap`` holds their id range. On a restart that
  finds the segment alive the snapshot rows are deleted (the queue still has the items); when
  the segment is gone (reboot, power cut) they are the saved state and load like any row.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pymqueue.db._backend import Backend, JournalEntry, TableInfo
from pymqueue.db._sqlite import SqliteBackend
from pymqueue.db.rejects import RejectedItem, append_rejected
from pymqueue.db.url import DbUrl, parse_db_url
from pymqueue.errors import ConfigError, DatabaseError, Error

if TYPE_CHECKING:
    from pymqueue.definitions import QueueDef

__all__ = ["Persistence", "SaveReport"]

log = logging.getLogger("pymqueue.db")

#: Items moved between the queue and the database per call.
BATCH = 10_000
#: Bytes a record takes in the ring besides key and value (see csrc/pmq.h).
RECORD_OVERHEAD = 24


class QueueLike(Protocol):
    """The part of :class:`pymqueue.Queue` persistence uses."""

    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    def add_many(
        self, items: Iterable[tuple[bytes, bytes]], timeout: float | None = ...
    ) -> int: ...
    def fetch_many(
        self, max_items: int, timeout: float | None = ...
    ) -> list[tuple[bytes, bytes]]: ...
    def peek_many(self, max_items: int) -> list[tuple[bytes, bytes]]: ...
    def size(self) -> int: ...
    def stats(self) -> Any: ...


@dataclass(frozen=True)
class SaveReport:
    """What one save did for one queue."""

    queue: bytes
    table: str
    saved: int
    rejected: int


def _processed(q: QueueLike) -> int:
    """Items the queue has taken through add (stored or ignored as duplicates)."""
    s = q.stats()
    return int(s.added) + int(getattr(s, "duplicates", 0))


def _fetched(q: QueueLike) -> int:
    return int(q.stats().fetched)


def _peek_all(q: QueueLike) -> list[tuple[bytes, bytes]]:
    """The items in the queue now, oldest first, without removing any."""
    return q.peek_many(q.size())


class Persistence:
    """Kamailio-compatible DB persistence of a set of queues (see the module docstring).

    ``db_url``: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``postgres://…`` or
    ``postgresql://…`` (ConfigError when malformed, or when psycopg is missing for
    PostgreSQL). ``sync_interval``: seconds between snapshots of dbmode 1 and 3 queues
    (None: only at stop). ``reject_file``: where items the table cannot hold are kept
    (default: ``<sqlite file>.rejected.jsonl``, or ``pymqueue-rejected-<db>.jsonl`` in the
    current directory for PostgreSQL).
    """

    def __init__(
        self,
        db_url: str,
        sync_interval: float | None = None,
        *,
        reject_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.url: DbUrl = parse_db_url(db_url)
        if sync_interval is not None and not (sync_interval > 0):
            raise ConfigError(f"db_sync_interval must be > 0 seconds, got {sync_interval!r}")
        self.sync_interval = sync_interval
        if self.url.kind == "postgresql":
            from pymqueue.db._postgres import import_psycopg  # noqa: PLC0415 (optional extra)

            import_psycopg()  # ConfigError now rather than at the first load
            dbname = Path(self.url.target.split("?", 1)[0]).name or "db"
            default_reject = Path.cwd() / f"pymqueue-rejected-{dbname}.jsonl"
        else:
            default_reject = Path(self.url.target + ".rejected.jsonl")
        self.reject_file = Path(reject_file) if reject_file is not None else default_reject
        self.rejected: list[RejectedItem] = []
        self.reports: list[SaveReport] = []
        self._lock = threading.RLock()
        self._synced: list[tuple[QueueDef, QueueLike]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<pymqueue.db.Persistence {self.url.display!r}>"

    # -- connections ----------------------------------------------------------------------
    def _open(self) -> Backend:
        if self.url.kind == "sqlite":
            return SqliteBackend(self.url.target)
        from pymqueue.db._postgres import PostgresBackend  # noqa: PLC0415 (optional extra)

        return PostgresBackend(self.url.target, self.url.display)

    @contextmanager
    def _session(self, what: str) -> Iterator[Backend]:
        """A connection for one operation; driver errors become DatabaseError."""
        db = self._open()
        try:
            yield db
        except Error:
            raise
        except Exception as e:
            detail = db.describe_error(e)
            if detail is None:
                raise
            raise DatabaseError(f"{what} ({db.display}): {detail}") from e
        finally:
            try:
                db.close()
            except Exception:  # pragma: no cover - closing a broken connection
                log.debug("closing %s failed", db.display, exc_info=True)

    def _table(self, db: Backend, qdef: QueueDef) -> TableInfo:
        table = db.table_for(qdef.name)
        info = db.inspect(table)
        if info is None:
            info = db.create(table)
            log.info("created table %r for queue %r in %s", table, qdef.display_name, db.display)
        return info

    # -- start ----------------------------------------------------------------------------
    def on_start(self, items: Sequence[tuple[QueueDef, QueueLike, bool]]) -> None:
        """Recover interrupted steps, then load dbmode 1 and 2 queues that were created now
        (``reattached=False``). Raises DatabaseError naming the queue on any failure."""
        if self._closed:
            raise DatabaseError("Persistence is closed")
        todo = [(d, q, r) for d, q, r in items if int(d.dbmode) in (1, 2, 3)]
        if not todo:
            return
        with self._lock:
            with self._session("starting persistence") as db:
                if any(int(d.dbmode) in (1, 3) for d, _, _ in todo):
                    db.check_writable()
                for qdef, queue, reattached in todo:
                    with self._session(f"loading queue {qdef.display_name!r}") as qdb:
                        self._start_one(qdb, qdef, queue, reattached)
            if self.sync_interval is not None:
                synced = [(d, q) for d, q, _ in todo if int(d.dbmode) in (1, 3)]
                self._synced = synced
                if synced and self._thread is None:
                    self._stop.clear()
                    self._thread = threading.Thread(
                        target=self._sync_loop, name="pymqueue-db-sync", daemon=True
                    )
                    self._thread.start()

    @staticmethod
    def _journal(db: Backend, table: str) -> dict[str, JournalEntry]:
        """The table's journal rows, read under the table lock: a transaction of a process
        killed while committing (PostgreSQL may still be finishing it) has ended by then."""
        with db.transaction(table):
            return db.journal_get(table)

    def _start_one(self, db: Backend, qdef: QueueDef, queue: QueueLike, reattached: bool) -> None:
        info = self._table(db, qdef)
        table = info.table
        journal = self._journal(db, table)
        name = qdef.display_name
        save = journal.get("save")
        if save is not None:
            if reattached:
                self._finish_save(queue, save)
            db.journal_del(table, "save")
        snap = journal.get("snap")
        if snap is not None:
            with db.transaction(table):
                if reattached:
                    n = db.delete_range(info, snap.lo, snap.hi)
                    log.info("queue %r: the segment survived; dropped %d snapshot rows", name, n)
                db.journal_del(table, "snap")
        mode = int(qdef.dbmode)
        load = journal.get("load")
        if mode not in (1, 2):
            if load is not None:
                db.journal_del(table, "load")
            return
        skip = 0
        if load is not None and reattached:
            skip = max(0, min(load.n, _processed(queue) - load.mark))
            log.warning(
                "queue %r: resuming a load interrupted after %d of %d rows", name, skip, load.n
            )
        elif reattached:
            log.info("queue %r: segment still exists, not reloaded from %s", name, db.display)
            return
        self._load(db, info, qdef, queue, skip)

    def _load(
        self, db: Backend, info: TableInfo, qdef: QueueDef, queue: QueueLike, skip: int
    ) -> None:
        name = qdef.display_name
        bad = db.null_row(info)
        if bad is not None:
            raise DatabaseError(
                f"queue {name!r}: table {info.table!r} row id {bad[0]} has a NULL {bad[1]} "
                "(nothing loaded, table unchanged)"
            )
        n = db.count(info)
        if n == 0:
            return
        db.journal_put(JournalEntry(info.table, "load", _processed(queue) - skip, n, 0, 0))
        limit = queue.capacity - RECORD_OVERHEAD
        too_big: list[RejectedItem] = []
        loaded = 0
        with db.transaction(info.table):
            seen = 0
            for chunk in db.read(info):
                if seen + len(chunk) <= skip:
                    seen += len(chunk)
                    continue
                start = max(0, skip - seen)
                seen += len(chunk)
                part = chunk[start:]
                fits = [(k, v) for k, v in part if len(k) + len(v) <= limit]
                if len(fits) != len(part):
                    too_big += [
                        RejectedItem(qdef.name, info.table, "item larger than the queue", k, v)
                        for k, v in part
                        if len(k) + len(v) > limit
                    ]
                    # they count as processed for a resumed load: keep the mark in step
                try:
                    queue.add_many(fits, timeout=0)
                except Error as e:
                    raise DatabaseError(
                        f"queue {name!r}: adding rows from table {info.table!r} failed after "
                        f"{loaded} items: {e} (rows kept in the table; the next start resumes)"
                    ) from e
                loaded += len(fits)
            if too_big:
                self._reject(db, too_big)
            db.delete_all(info)
            db.journal_del(info.table, "load")
        log.info(
            "queue %r: loaded %d items from table %r (%s)", name, loaded, info.table, db.display
        )

    def _finish_save(
        self, queue: QueueLike, entry: JournalEntry, *, interrupted: bool = True
    ) -> None:
        """Remove from the queue the items a committed save wrote: the last step of every
        save, and (``interrupted``) the recovery of one that died before it."""
        left = entry.n - (_fetched(queue) - entry.mark)
        removed = 0
        while left > 0:
            got = queue.fetch_many(min(left, BATCH), timeout=0)
            if not got:
                break
            left -= len(got)
            removed += len(got)
        if interrupted:
            log.warning(
                "queue %r: finished an interrupted save (removed %d items already in the database)",
                queue.name,
                removed,
            )

    # -- save -----------------------------------------------------------------------------
    def _storable(
        self, info: TableInfo, qname: bytes, items: Sequence[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], list[RejectedItem]]:
        cols = (info.key, info.val)
        if all(c.storage == "bytes" for c in cols):
            return list(items), []
        ok: list[tuple[bytes, bytes]] = []
        bad: list[RejectedItem] = []
        for item in items:
            reason = None
            for col, data in zip(cols, item, strict=True):
                if col.storage == "bytes":
                    continue
                if b"\0" in data:
                    reason = f"{col.name} contains a NUL byte, column {col.name} is {col.declared}"
                    break
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    reason = f"{col.name} is not valid UTF-8, column {col.name} is {col.declared}"
                    break
                if col.max_chars is not None and len(text) > col.max_chars:
                    reason = (
                        f"{col.name} has {len(text)} characters, column {col.name} is "
                        f"{col.declared}"
                    )
                    break
            if reason is None:
                ok.append(item)
            else:
                bad.append(RejectedItem(qname, info.table, reason, item[0], item[1]))
        return ok, bad

    def _reject(self, db: Backend, items: Sequence[RejectedItem]) -> None:
        append_rejected(self.reject_file, db.display, items)
        self.rejected.extend(items)
        for it in items:
            log.warning(
                "queue %r: item with key %r not stored in table %r: %s; kept in %s",
                it.queue.decode("utf-8", "replace"),
                it.key[:80],
                it.table,
                it.reason,
                self.reject_file,
            )

    def on_stop(self, items: Sequence[tuple[QueueDef, QueueLike]]) -> None:
        """Save dbmode 1 and 3 queues (oldest item first, new ids). Every queue is tried;
        a queue whose save failed keeps its items, and DatabaseError names them all."""
        self._stop_thread()
        failures: list[str] = []
        with self._lock:
            for qdef, queue in items:
                if int(qdef.dbmode) not in (1, 3):
                    continue
                try:
                    with self._session(f"saving queue {qdef.display_name!r}") as db:
                        self.reports.append(self._save(db, qdef, queue))
                except (DatabaseError, OSError) as e:
                    log.error("queue %r not saved: %s", qdef.display_name, e)
                    failures.append(f"{qdef.display_name!r}: {e}")
        if failures:
            raise DatabaseError(
                "saving queues failed; their items are still in the queues: " + "; ".join(failures)
            )

    def _save(self, db: Backend, qdef: QueueDef, queue: QueueLike) -> SaveReport:
        info = self._table(db, qdef)
        journal = self._journal(db, info.table)
        if "save" in journal:  # left by a crash; on_start was not called since
            self._finish_save(queue, journal["save"])
            db.journal_del(info.table, "save")
        snap = journal.get("snap")
        peeked = _peek_all(queue)
        ok, bad = self._storable(info, qdef.name, peeked)
        mark = _fetched(queue)
        with db.transaction(info.table):
            if snap is not None:
                db.delete_range(info, snap.lo, snap.hi)
                db.journal_del(info.table, "snap")
            lo, hi = db.insert(info, ok, len(ok))
            if bad:
                self._reject(db, bad)  # on disk before the commit: never lost
            if peeked:
                db.journal_put(JournalEntry(info.table, "save", mark, len(peeked), lo, hi))
        if peeked:
            entry = JournalEntry(info.table, "save", mark, len(peeked), lo, hi)
            self._finish_save(queue, entry, interrupted=False)
            db.journal_del(info.table, "save")
        log.info(
            "queue %r saved in %s: %d items in table %r%s",
            qdef.display_name,
            db.display,
            len(ok),
            info.table,
            f", {len(bad)} kept in {self.reject_file}" if bad else "",
        )
        return SaveReport(qdef.name, info.table, len(ok), len(bad))

    # -- periodic sync ----------------------------------------------------------------------
    def sync_now(self) -> None:
        """Write a snapshot of every dbmode 1/3 queue now (what the sync thread does)."""
        with self._lock:
            for qdef, queue in self._synced:
                with self._session(f"snapshot of queue {qdef.display_name!r}") as db:
                    self._snapshot(db, qdef, queue)

    def _snapshot(self, db: Backend, qdef: QueueDef, queue: QueueLike) -> None:
        info = self._table(db, qdef)
        items = _peek_all(queue)
        ok, _bad = self._storable(info, qdef.name, items)  # rejects are written at stop
        with db.transaction(info.table):
            old = db.journal_get(info.table).get("snap")
            if old is not None:
                db.delete_range(info, old.lo, old.hi)
            lo, hi = db.insert(info, ok, len(ok))
            if ok:
                db.journal_put(JournalEntry(info.table, "snap", 0, len(ok), lo, hi))
            elif old is not None:
                db.journal_del(info.table, "snap")

    def _sync_loop(self) -> None:
        assert self.sync_interval is not None
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync_now()
            except Exception:
                log.exception("periodic save to %s failed (will retry)", self.url.display)

    def _stop_thread(self) -> None:
        t = self._thread
        if t is not None:
            self._stop.set()
            t.join()
            self._thread = None

    def close(self) -> None:
        """Stop the sync thread (without saving). Idempotent."""
        self._stop_thread()
        self._closed = True

    def __enter__(self) -> Persistence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
