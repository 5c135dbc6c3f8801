"""``pymqueue.Queue``: a named (key, value) queue in POSIX shared memory.

Two vocabularies over one queue: Kamailio's (``add``/``fetch``/``size``) for byte items, and
the standard library's (``put``/``get``/…) for Python objects, which are serialised outside
the lock. Waits run in short slices inside C (which releases the GIL) so Ctrl-C and other
threads are never held up.
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NoReturn, Protocol

from pymqueue import _binding as B
from pymqueue.errors import ConfigError, Empty, Full, QueueClosed

__all__ = [
    "DEFAULT_CAPACITY",
    "AddMode",
    "Overflow",
    "PickleSerializer",
    "Queue",
    "QueueStats",
    "Serializer",
    "list_queues",
    "unlink",
]

DEFAULT_CAPACITY = 16 * 1024 * 1024
WAIT_SLICE = 0.05  # seconds: the longest a wait goes without returning to Python
_NS = 1_000_000_000
_SLICE_NS = int(WAIT_SLICE * _NS)
_BUF_SIZE = 64 * 1024

# Bound once: attribute lookups on every call cost as much as the C call itself.
_ffi = B.ffi
_pmq_add = B.lib.pmq_add
_pmq_fetch = B.lib.pmq_fetch
_OK = B.OK
_DUPLICATE = B.DUPLICATE
_E_EMPTY = B.E_EMPTY
_E_FULL = B.E_FULL
_E_BUFSMALL = B.E_BUFSMALL
_E_LOCKTIMEOUT = B.E_LOCKTIMEOUT

Key = str | bytes | bytearray | memoryview


class Overflow(IntEnum):
    """What ``add`` does when the queue is full (``size`` items or its byte capacity)."""

    DROP_OLDEST = 0  #: remove the oldest items to make room (Kamailio's behaviour)
    REJECT = 1  #: raise :class:`pymqueue.Full`
    BLOCK = 2  #: wait for room, up to the timeout, then raise :class:`pymqueue.Full`

    @classmethod
    def parse(cls, value: Overflow | int | str) -> Overflow:
        if isinstance(value, str):
            try:
                return cls[value.strip().upper().replace("-", "_")]
            except KeyError:
                raise ConfigError(f"unknown overflow policy {value!r}") from None
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown overflow policy {value!r}") from None


class AddMode(IntEnum):
    """Kamailio's ``addmode``: how an item whose key is already queued is added."""

    APPEND = 0  #: duplicates allowed
    UNIQUE_KEEP_OLDEST = 1  #: the new item is ignored
    UNIQUE_KEEP_NEWEST = 2  #: the old item is removed; the new one goes to the tail

    @classmethod
    def parse(cls, value: AddMode | int | str) -> AddMode:
        try:
            if isinstance(value, str):
                return (
                    cls[value.strip().upper()] if not value.strip().isdigit() else cls(int(value))
                )
            return cls(value)
        except (KeyError, ValueError):
            raise ConfigError(f"unknown addmode {value!r} (0, 1 or 2)") from None


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of a queue's counters, read under its lock.

    ``added == fetched + items + dropped + replaced`` holds at every snapshot.
    """

    name: str
    items: int
    bytes: int
    ring_used: int
    max_items: int
    capacity: int
    added: int
    fetched: int
    dropped: int
    rejected: int
    replaced: int
    duplicates: int
    high_water: int
    recoveries: int
    getters_waiting: int
    putters_waiting: int


class Serializer(Protocol):
    """Turns objects into bytes and back (``put``/``get``)."""

    def dumps(self, obj: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


class PickleSerializer:
    """The default serializer: pickle at its highest protocol."""

    def dumps(self, obj: Any, /) -> bytes:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes, /) -> Any:
        return pickle.loads(data)

    def __reduce__(self) -> str:
        return "PICKLE"


PICKLE = PickleSerializer()


def _default_namespace() -> str:
    return os.environ.get("PYMQUEUE_NAMESPACE", "")


def _check_namespace(namespace: str | None) -> str:
    ns = _default_namespace() if namespace is None else namespace
    if ns and not B.valid_namespace(ns):
        raise ConfigError(f"invalid namespace {ns!r}: 1-32 of A-Z a-z 0-9 _ -")
    return ns


def _raw(name: str | bytes) -> bytes:
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    if not raw:
        raise ConfigError("a queue name cannot be empty")
    if len(raw) > B.NAME_MAX:
        raise ConfigError(f"queue name {raw[:40]!r}… is longer than {B.NAME_MAX} bytes")
    return raw


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _b(value: Key) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"keys and values are str or bytes, not {type(value).__name__}")


class _Buf:
    """A reusable output buffer; each operation takes one, so threads never share one.

    ``lens`` is an ``array`` that C writes through ``clens``: reading it from Python is far
    cheaper than indexing cdata."""

    __slots__ = ("cdata", "clens", "lens", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.cdata = _ffi.new("uint8_t[]", size)
        self.view = _ffi.buffer(self.cdata)
        self.lens = array("I", (0, 0))
        self.clens = _ffi.from_buffer("uint32_t[]", self.lens)


def _unpack_batch(buf: _Buf, lens: Any, count: int, out: list[tuple[bytes, bytes]]) -> None:
    """Append the ``count`` items a batch call left in ``buf`` (key, value, key, value …)."""
    flat = _ffi.unpack(lens, 2 * count)
    view = buf.view
    pos = 0
    for i in range(0, 2 * count, 2):
        k = flat[i]
        v = flat[i + 1]
        out.append((view[pos : pos + k], view[pos + k : pos + k + v]))
        pos += k + v


def _attach(raw_name: bytes, namespace: str, serializer: Serializer) -> Queue:
    return Queue(raw_name, create=False, namespace=namespace, serializer=serializer)


class Queue:
    """A named queue of ``(key, value)`` byte items in shared memory.

    ``Queue(name)`` attaches to the queue if it exists and creates it otherwise;
    ``create=True`` insists on creating it (:class:`QueueExists` otherwise),
    ``create=False`` on attaching (:class:`QueueNotFound` otherwise). On attach, the
    segment's settings apply; a setting given explicitly that differs raises
    :class:`ConfigError`.

    :param size: the most items the queue holds (Kamailio's ``size``); ``<= 0``: no limit.
    :param capacity: bytes of the record ring (each item costs 24 bytes plus its key and
        value, rounded up to 8); default 16 MiB, allocated as used.
    :param policy: what ``add`` does when full: :class:`Overflow`.
    :param addmode: Kamailio's ``addmode``: :class:`AddMode`; keys compare byte-exactly.
    :param namespace: keeps tests and tenants apart; default ``$PYMQUEUE_NAMESPACE``.
    :param serializer: for ``put``/``get``; default pickle.
    """

    __slots__ = (
        "__weakref__",
        "_block",
        "_bufs",
        "_created",
        "_handle",
        "_name",
        "_namespace",
        "_raw_name",
        "_serializer",
        "_shm",
        "addmode",
        "capacity",
        "max_items",
        "policy",
    )

    def __init__(
        self,
        name: str | bytes,
        *,
        create: bool | None = None,
        size: int | None = None,
        capacity: int | None = None,
        policy: Overflow | int | str | None = None,
        addmode: AddMode | int | str | None = None,
        namespace: str | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        self._handle: Any = None
        self._raw_name = _raw(name)
        self._name = _text(self._raw_name)
        self._namespace = _check_namespace(namespace)
        self._serializer: Serializer = serializer if serializer is not None else PICKLE
        self._shm = B.shm_name(self._raw_name, self._namespace)
        self._bufs: list[_Buf] = []
        want_policy = None if policy is None else Overflow.parse(policy)
        want_addmode = None if addmode is None else AddMode.parse(addmode)
        if capacity is not None and capacity < B.MIN_CAPACITY:
            raise ConfigError(
                f"capacity {capacity} of queue {self._name!r} is below {B.MIN_CAPACITY}"
            )
        if size is not None and not isinstance(size, int):
            raise ConfigError(f"size of queue {self._name!r} must be an int, not {size!r}")
        if create is False:
            self._handle = B.open_(self._shm, self._name)
            self._created = False
        else:
            cfg = B.new_config(
                max(size or 0, 0),
                capacity or DEFAULT_CAPACITY,
                int(want_policy or Overflow.DROP_OLDEST),
                int(want_addmode or AddMode.APPEND),
            )
            self._handle, self._created = B.create(
                self._shm, self._raw_name, cfg, bool(create), self._name
            )
        max_items, cap, pol, mode = B.read_config(self._handle)
        self.max_items: int = max_items
        self.capacity: int = cap
        self.policy = Overflow(pol)
        self.addmode = AddMode(mode)
        self._block = self.policy is Overflow.BLOCK
        stored = B.read_name(self._handle)
        if stored != self._raw_name:  # only a hashed long name can collide
            self._handle = None
            raise ConfigError(f"queue {self._name!r}: segment belongs to {_text(stored)!r}")
        if not self._created:
            self._check_settings(size, capacity, want_policy, want_addmode)

    def _check_settings(
        self,
        size: int | None,
        capacity: int | None,
        policy: Overflow | None,
        addmode: AddMode | None,
    ) -> None:
        diffs = []
        if size is not None and max(size, 0) != self.max_items:
            diffs.append(f"size {size} (queue has {self.max_items})")
        if capacity is not None and (capacity + 7) // 8 * 8 != self.capacity:
            diffs.append(f"capacity {capacity} (queue has {self.capacity})")
        if policy is not None and policy != self.policy:
            diffs.append(f"policy {policy.name} (queue has {self.policy.name})")
        if addmode is not None and addmode != self.addmode:
            diffs.append(f"addmode {int(addmode)} (queue has {int(self.addmode)})")
        if diffs:
            self._handle = None
            raise ConfigError(
                f"queue {self._name!r} exists with other settings: " + ", ".join(diffs)
            )

    # ---- identity and lifecycle -------------------------------------------------------

    @property
    def name(self) -> str:
        """The queue's name (bytes that are not UTF-8 appear as surrogate escapes)."""
        return self._name

    @property
    def raw_name(self) -> bytes:
        return self._raw_name

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def created(self) -> bool:
        """True if this handle created the segment, False if it attached."""
        return self._created

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _h(self) -> Any:
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        return handle

    def close(self) -> None:
        """Release this process's mapping (idempotent). The queue itself stays."""
        self._handle = None  # freed once no operation in flight holds it

    def unlink(self) -> None:
        """Remove the queue from the host (idempotent); attached handles keep working
        until they close, as with files."""
        B.unlink(self._shm, self._name)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach, (self._raw_name, self._namespace, self._serializer))

    def __repr__(self) -> str:
        where = f"0x{id(self):x}"
        if self._handle is None:
            return f"<pymqueue.Queue {self._name!r} closed at {where}>"
        try:
            n = str(len(self))
        except Exception:  # a repr never raises
            n = "?"
        limit = f"/{self.max_items}" if self.max_items else ""
        extra = ""
        if self.policy != Overflow.DROP_OLDEST:
            extra += f" policy={self.policy.name.lower()}"
        if self.addmode != AddMode.APPEND:
            extra += f" addmode={int(self.addmode)}"
        if self._namespace:
            extra += f" namespace={self._namespace!r}"
        return f"<pymqueue.Queue {self._name!r} items={n}{limit}{extra} at {where}>"

    # ---- Kamailio vocabulary ----------------------------------------------------------

    def add(self, key: Key, value: Key, timeout: float | None = None) -> bool:
        """Append ``(key, value)`` at the tail.

        Returns False when addmode 1 ignored it as a duplicate key. When the queue is full,
        the policy decides: the oldest items are dropped (default), :class:`Full` is raised,
        or the call waits up to ``timeout`` (None: forever) for room.
        """
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        k = key if type(key) is bytes else _b(key)
        v = value if type(value) is bytes else _b(value)
        rc: int = _pmq_add(handle, k, len(k), v, len(v), 0)
        if rc == _OK:
            return True
        if rc == _E_LOCKTIMEOUT or (rc == _E_FULL and self._block and timeout != 0):
            rc = self._wait_loop(
                lambda ns: _pmq_add(handle, k, len(k), v, len(v), ns), timeout, _E_FULL
            )
            if rc == _OK:
                return True
        if rc == _E_FULL and self._block:
            B.lib.pmq_note_rejected(handle, 1)
        if rc == _DUPLICATE:
            return False
        self._fail(rc, len(k), len(v))

    def _fail(self, rc: int, klen: int = 0, vlen: int = 0) -> NoReturn:
        detail = ""
        if rc == B.lib.PMQ_E_TOOBIG:
            detail = (
                f"key {klen} + value {vlen} bytes + {B.RECORD_OVERHEAD} overhead "
                f"> capacity {self.capacity}"
            )
        B.raise_for(rc, self._name, detail)

    @staticmethod
    def _wait_loop(call: Any, timeout: float | None, give_up: int) -> int:
        """Call ``call(slice_ns)`` until it returns something else than ``give_up`` or the
        timeout passes; between slices Python runs signal handlers (Ctrl-C). A slice that
        did not get the lock (``PMQ_E_LOCKTIMEOUT``: C bounds every lock wait by the slice)
        is tried again until the deadline or, without one (timeout None or 0), until the
        lock stayed out of reach for the process lock timeout."""
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or >= 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        lock_limit = None
        while True:
            if deadline is None:
                remaining = WAIT_SLICE
                ns = _SLICE_NS
            else:
                remaining = deadline - time.monotonic()
                ns = int(min(remaining, WAIT_SLICE) * _NS) if remaining > 0 else 0
            rc: int = call(ns)
            if rc == _E_LOCKTIMEOUT:
                now = time.monotonic()
                if timeout:  # a deadline: it bounds the lock waits too
                    if now >= deadline:  # type: ignore[operator]
                        return rc
                    continue
                if lock_limit is None:
                    lock_limit = now + B.lib.pmq_get_lock_timeout() / _NS
                if now >= lock_limit:
                    return rc
                continue
            lock_limit = None
            if rc != give_up or remaining <= 0:
                return rc

    def fetch(self, timeout: float | None = 0) -> tuple[bytes, bytes] | None:
        """Remove and return the oldest ``(key, value)``, or None if there is none within
        ``timeout`` (0: try once, the default; None: wait forever)."""
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        bufs = self._bufs
        buf = bufs.pop() if bufs else _Buf(_BUF_SIZE)
        rc: int = _pmq_fetch(handle, buf.cdata, buf.size, buf.clens, 0)
        if rc == _OK:
            k, v = buf.lens
            view = buf.view
            item = (view[0:k], view[k : k + v])
            bufs.append(buf)
            return item
        return self._fetch_slow(handle, buf, rc, timeout)

    def _fetch_slow(
        self, handle: Any, buf: _Buf, rc: int, timeout: float | None
    ) -> tuple[bytes, bytes] | None:
        """fetch() after a first try that found nothing, or an item too big for the buffer."""
        try:
            while True:
                if rc == _E_LOCKTIMEOUT or (rc == _E_EMPTY and timeout != 0):
                    rc = self._wait_loop(
                        lambda ns, b=buf: _pmq_fetch(handle, b.cdata, b.size, b.clens, ns),
                        timeout,
                        _E_EMPTY,
                    )
                    timeout = 0
                if rc == _OK:
                    k, v = buf.lens
                    view = buf.view
                    return view[0:k], view[k : k + v]
                if rc == _E_EMPTY:
                    return None
                if rc != _E_BUFSMALL:
                    self._fail(rc)
                buf = _Buf(max(buf.lens[0] + buf.lens[1], 2 * buf.size))
                rc = _pmq_fetch(handle, buf.cdata, buf.size, buf.clens, 0)
        finally:
            self._bufs.append(buf)

    def size(self) -> int:
        """The number of items in the queue now."""
        out = _ffi.new("uint64_t *")
        rc = B.lib.pmq_count(self._h(), out)
        if rc != 0:
            self._fail(rc)
        return int(out[0])

    __len__ = size

    def add_many(self, items: Iterable[tuple[Key, Key]], timeout: float | None = None) -> int:
        """Add items in order under one lock acquisition; returns how many were handled
        (stored, or ignored as duplicates by addmode 1). With the reject policy it stops at
        the first that does not fit and raises :class:`Full` (``.done`` tells how many were
        handled before). An item that can never fit refuses the whole batch."""
        lens = array("I")
        parts: list[bytes] = []
        for key, value in items:
            k = _b(key)
            v = _b(value)
            lens.append(len(k))
            lens.append(len(v))
            parts.append(k)
            parts.append(v)
        n = len(parts) // 2
        if n == 0:
            return 0
        data = b"".join(parts)
        handle = self._h()
        lib = B.lib
        done = B.ffi.new("size_t *")
        clens = B.ffi.from_buffer("uint32_t[]", lens)
        total = 0
        rc = lib.pmq_add_many(handle, clens, data, n, done, 0)
        total = done[0]
        if rc == _E_LOCKTIMEOUT or (rc == _E_FULL and self._block and timeout != 0):
            # Each slice resumes where the previous one stopped.
            offset = sum(lens[: 2 * total])

            def call(ns: int) -> int:
                nonlocal total, offset
                rest = B.ffi.from_buffer("uint32_t[]", lens[2 * total :])
                rc = lib.pmq_add_many(handle, rest, data[offset:], n - total, done, ns)
                for i in range(total, total + done[0]):
                    offset += lens[2 * i] + lens[2 * i + 1]
                total += done[0]
                return rc  # type: ignore[no-any-return]

            rc = self._wait_loop(call, timeout, B.E_FULL)
        if rc == 0:
            return int(total)
        if rc == lib.PMQ_E_TOOBIG:
            big = max(range(n), key=lambda i: lens[2 * i] + lens[2 * i + 1])
            if lens[2 * big] + lens[2 * big + 1] + B.RECORD_OVERHEAD > self.capacity:
                self._fail(rc, lens[2 * big], lens[2 * big + 1])
        if rc == _E_FULL and self._block:
            B.lib.pmq_note_rejected(handle, n - total)
        try:
            self._fail(rc)
        except Full as exc:
            exc.done = int(total)  # type: ignore[attr-defined]
            raise

    def fetch_many(self, max_items: int, timeout: float | None = 0) -> list[tuple[bytes, bytes]]:
        """Remove and return up to ``max_items`` of the oldest items under one lock (more
        calls if they do not fit the buffer); waits (per ``timeout``) for the first only."""
        if max_items <= 0:
            return []
        handle = self._h()
        lib = B.lib
        bufs = self._bufs
        buf = bufs.pop() if bufs else _Buf(_BUF_SIZE)
        lens = B.ffi.new("uint32_t[]", 2 * max_items)
        got = B.ffi.new("size_t *")
        out: list[tuple[bytes, bytes]] = []
        wait = timeout
        try:
            while len(out) < max_items:
                want = max_items - len(out)
                rc = -1
                if wait == 0:
                    rc = lib.pmq_fetch_many(handle, buf.cdata, buf.size, lens, want, got, 0)
                if wait != 0 or rc == _E_LOCKTIMEOUT:
                    rc = self._wait_loop(
                        lambda ns, b=buf, n=want: lib.pmq_fetch_many(
                            handle, b.cdata, b.size, lens, n, got, ns
                        ),
                        wait,
                        B.E_EMPTY,
                    )
                if rc == B.E_BUFSMALL:
                    buf = _Buf(max(lens[0] + lens[1], 2 * buf.size))
                    continue
                if rc == B.E_EMPTY:
                    break
                if rc != 0:
                    self._fail(rc)
                wait = 0
                _unpack_batch(buf, lens, got[0], out)
        finally:
            self._bufs.append(buf)
        return out

    def peek_many(self, max_items: int) -> list[tuple[bytes, bytes]]:
        """Up to ``max_items`` of the oldest items, oldest first, WITHOUT removing them.

        Read in batches (one lock each), so under concurrent fetches the result is the
        items that were present at some point, in order, never one twice."""
        handle = self._h()
        lib = B.lib
        buf = _Buf(_BUF_SIZE)
        batch = min(max(max_items, 1), 4096)
        lens = B.ffi.new("uint32_t[]", 2 * batch)
        got = B.ffi.new("size_t *")
        cursor_pos = B.ffi.new("uint64_t *")
        cursor_id = B.ffi.new("uint64_t *")
        out: list[tuple[bytes, bytes]] = []
        while len(out) < max_items:
            want = min(batch, max_items - len(out))
            rc = lib.pmq_peek_many(
                handle, buf.cdata, buf.size, lens, want, cursor_pos, cursor_id, got
            )
            if rc == B.E_BUFSMALL:
                buf = _Buf(max(lens[0] + lens[1], 2 * buf.size))
                continue
            if rc != 0:
                self._fail(rc)
            if got[0] == 0:
                break
            _unpack_batch(buf, lens, got[0], out)
        return out

    # ---- standard-library vocabulary --------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Serialise ``obj`` (outside the lock) and add it with an empty key.

        Raises :class:`Full` (also ``queue.Full``) when there is no room: at once with the
        reject policy or ``block=False``, after ``timeout`` with the block policy."""
        data = self._serializer.dumps(obj)
        if not self.add(b"", data, timeout=timeout if block else 0):
            raise AssertionError("put into an addmode 1 queue with an empty key was ignored")

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove the oldest item and return its value deserialised; raise :class:`Empty`
        (also ``queue.Empty``) if none arrives within ``timeout`` (None: wait forever)."""
        item = self.fetch(timeout=timeout if block else 0)
        if item is None:
            raise Empty(f"queue {self._name!r} is empty", self._name)
        return self._serializer.loads(item[1])

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> int:
        dumps = self._serializer.dumps
        return self.add_many(((b"", dumps(o)) for o in objs), timeout=timeout if block else 0)

    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[Any]:
        """Up to ``max_items`` objects, oldest first; :class:`Empty` if none arrives."""
        items = self.fetch_many(max_items, timeout=timeout if block else 0)
        if not items:
            raise Empty(f"queue {self._name!r} is empty", self._name)
        loads = self._serializer.loads
        return [loads(v) for _, v in items]

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return bool(self.max_items) and self.size() >= self.max_items

    # ---- observation ------------------------------------------------------------------

    def stats(self) -> QueueStats:
        """The queue's counters, read under its lock."""
        s = B.read_stats(self._h(), self._name)
        return QueueStats(name=self._name, max_items=self.max_items, capacity=self.capacity, **s)

    def wait(self, readable: bool = True, timeout: float | None = None) -> bool:
        """Wait until the queue has an item (``readable``) or room; no item is taken.
        Returns False on timeout. Used by :class:`pymqueue.AsyncQueue`."""
        handle = self._h()
        what = B.lib.PMQ_WAIT_READABLE if readable else B.lib.PMQ_WAIT_WRITABLE
        give_up = B.E_EMPTY if readable else B.E_FULL
        rc = self._wait_loop(lambda ns: B.lib.pmq_wait(handle, what, 0, ns), timeout, give_up)
        if rc == 0:
            return True
        if rc == give_up:
            return False
        self._fail(rc)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Drain: yields items until the queue is empty (does not wait)."""
        while (item := self.fetch()) is not None:
            yield item


def list_queues(namespace: str | None = None) -> list[str]:
    """Names of the queues in a namespace on this host (default: ``$PYMQUEUE_NAMESPACE``)."""
    ns = _check_namespace(namespace)
    names = []
    try:
        entries = sorted(os.listdir(B.SHM_DIR))
    except FileNotFoundError:
        return []
    for entry in entries:
        parts = B.split_shm_name(entry)
        if parts is None or parts[0] != ns:
            continue
        try:
            handle = B.open_(b"/" + entry.encode(), entry)
        except (OSError, ValueError):
            continue  # not ours, not readable, or being created
        names.append(_text(B.read_name(handle)))
    return names


def unlink(name: str | bytes, namespace: str | None = None) -> bool:
    """Remove a queue by name; returns False if there was none."""
    raw = _raw(name)
    return B.unlink(B.shm_name(raw, _check_namespace(namespace)), _text(raw))
