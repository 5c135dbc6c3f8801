"""``pymqueue.Queue``: a named (key, value) queue in POSIX shared memory.

Two vocabularies over one queue: Kamailio's (``add``/``fetch``/``size``) for byte items, and
the standard library's (``put``/``get``/…) for Python objects, which are serialised outside
the lock. Waits run in short slices inside C (which releases the GIL) so Ctrl-C and other
threads are never held up.
"""

from __future__ import annotations

import functools
import os
import pickle
import struct
import threading
import warnings
from array import array
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

from pymqueue._text import Key, name_bytes, name_text, to_bytes
from pymqueue.errors import ConfigError, Empty, Full, QueueClosed, QueueExists
from pymqueue.queue import _engine as E
from pymqueue.queue import _private
from pymqueue.queue._bell import Bell
from pymqueue.queue._engine import Batch, Buf, Handle, Trust, wait_loop
from pymqueue.queue.batch import ItemBatch
from pymqueue.queue.types import (
    DEFAULT_CAPACITY,
    PICKLE,
    AddMode,
    Overflow,
    QueueStats,
    Record,
    Serializer,
)

__all__ = ["Queue", "list_queues", "unlink"]

_new_record = functools.partial(tuple.__new__, Record)

# Bound once: attribute lookups on every call cost as much as the C call itself.
_pmq_add = E.pmq_add
_pmq_fetch = E.pmq_fetch
_pmq_try_fetch = E.pmq_try_fetch
_fetch_chunk = E.fetch_chunk
_LEN_MASK = E.LEN_MASK
_OK = E.OK
_DUPLICATE = E.DUPLICATE
_E_EMPTY = E.E_EMPTY
_E_FULL = E.E_FULL
_E_BUFSMALL = E.E_BUFSMALL
_E_LOCKTIMEOUT = E.E_LOCKTIMEOUT
_BUF_SIZE = E.BUF_SIZE
_CHUNK_ITEMS = 1 << 16  # items asked of one batch call (their lengths: 512 KiB)
_BELL_LOCK = threading.Lock()  # makes one doorbell per handle when threads race for it

#: fetch()'s cut of an item by its shape (``klen << 32 | vlen``, what pmq_try_fetch returns):
#: a ``struct`` ``"16s64s"`` returns the ``(key, value)`` tuple in one C call, cheaper than
#: two slices and a tuple (see _cut_learn for shapes without one).
_CUTS: dict[int, Any] = {}
_CUTS_MAX = 256
_cuts_get = _CUTS.get
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads
_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
_CUTS_ROOM = [True]  # False once _CUTS is full: later shapes are sliced, not learnt


def _cut_learn(lens: int) -> None:
    """fetch() sliced an item of a shape without a struct: make one for next time. The
    first _CUTS_MAX shapes get one and keep it (never cleared: items of ever-new sizes then
    cost one failed dict lookup each, not a struct each)."""
    _CUTS[lens] = struct.Struct(f"{lens >> 32}s{lens & _LEN_MASK}s").unpack_from
    if len(_CUTS) >= _CUTS_MAX:
        _CUTS_ROOM[0] = False


def _default_namespace() -> str:
    return os.environ.get("PYMQUEUE_NAMESPACE", "")


def _check_namespace(namespace: str | None) -> str:
    ns = _default_namespace() if namespace is None else namespace
    if ns and not E.valid_namespace(ns):
        raise ConfigError(f"invalid namespace {ns!r}: 1-32 of A-Z a-z 0-9 _ -")
    return ns


def _raw(name: str | bytes) -> bytes:
    raw = name_bytes(name)
    if not raw:
        raise ConfigError("a queue name cannot be empty")
    if len(raw) > E.NAME_MAX:
        raise ConfigError(f"queue name {raw[:40]!r}… is longer than {E.NAME_MAX} bytes")
    return raw


def _owner_uid(owner: int | str) -> int:
    if isinstance(owner, int):
        return owner
    import pwd  # noqa: PLC0415 - only for deployments that name their trusted users

    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ConfigError(f"trusted owner {owner!r}: no such user") from None


def _trust(
    mode: int | None, trusted_owners: Iterable[int | str]
) -> tuple[int, tuple[int, ...], Trust | None]:
    """(creation mode, trusted uids, trust for the engine) from ``Queue``'s ``mode`` and
    ``trusted_owners``; None stands for the default (0600, our own uid only)."""
    owners = tuple(_owner_uid(o) for o in trusted_owners)
    if mode is None:
        mode = E.DEFAULT_MODE
    elif not isinstance(mode, int) or not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise ConfigError(f"mode {mode!r}: permission bits (0o000-0o777) including 0o600")
    if mode == E.DEFAULT_MODE and not owners:
        return mode, owners, None
    return mode, owners, Trust(mode, owners)


def _attach(  # noqa: PLR0917 - positional: the arguments of Queue.__reduce__
    raw_name: bytes,
    namespace: str,
    serializer: Serializer,
    mode: int,
    owners: tuple[int, ...],
    cls: type[Queue] | None = None,
    private: bool = False,
) -> Queue:
    q = (cls or Queue)(
        raw_name,
        create=False,
        namespace=namespace,
        serializer=serializer,
        mode=mode,
        trusted_owners=owners,
    )
    q._private = private
    return q


def _mp_settings(maxsize: int | None, size: int | None, policy: object) -> tuple[int, Overflow]:
    """(size, policy) of multiprocessing's ``maxsize``: <= 0 unbounded, put blocks when full."""
    if size is not None or policy is not None:
        raise ConfigError(
            "maxsize (multiprocessing's: put blocks when full) excludes size and policy"
        )
    if maxsize is not None and (not isinstance(maxsize, int) or isinstance(maxsize, bool)):
        raise ConfigError(f"maxsize must be an int, not {maxsize!r}")
    return max(maxsize or 0, 0), Overflow.BLOCK


def _split(pairs: list[Any]) -> tuple[array[int], bytes, bytes] | None:
    """(key and value lengths in order, the keys joined, the values joined) of ``pairs``
    when they are pairs of bytes (the usual case), with C-level loops only: ``zip`` checks
    that every item is a pair and splits keys from values; None for anything else."""
    try:
        keys, values = zip(*pairs, strict=True)
        klens = array("I", map(len, keys))
        vlens = array("I", map(len, values))
        kdata = b"".join(keys)  # TypeError for str
        vdata = b"".join(values)
    except (TypeError, ValueError):  # not pairs, str, an item without len()
        return None
    lens = array("I", bytes(8 * len(klens)))
    lens[0::2] = klens
    lens[1::2] = vlens
    return lens, kdata, vdata


def _flatten(items: Iterable[tuple[Key, Key]]) -> tuple[list[bytes], array[int], bytes]:
    """(keys and values in order, their lengths, their bytes joined) of ``items``, one item
    at a time, converting str (what :func:`_split` does not take)."""
    parts = []
    for key, value in items:
        parts.append(to_bytes(key))
        parts.append(to_bytes(value))
    return parts, array("I", list(map(len, parts))), b"".join(parts)


def _interleave(lens: array[int], keys: bytes, values: bytes) -> bytes:
    """The bytes of :func:`_split`'s keys and values in item order (key, value, …)."""
    kv, vv = memoryview(keys), memoryview(values)
    parts: list[memoryview] = []
    ko = vo = 0
    for i in range(0, len(lens), 2):
        a, b = lens[i], lens[i + 1]
        parts += (kv[ko : ko + a], vv[vo : vo + b])
        ko += a
        vo += b
    return b"".join(parts)


class Queue:
    """A named queue of ``(key, value)`` byte items in shared memory.

    ``Queue()``, ``Queue(maxsize)`` or ``Queue(maxsize=N)`` without a name make a *private*
    queue, the drop-in for ``multiprocessing.Queue``: a unique name, put blocking when
    ``maxsize`` (> 0) items are queued, unlinked when the creating process closes it, drops
    it or exits (never by a child; see :mod:`pymqueue.queue._private`), and pickled by name
    so ``spawn`` children attach. ``maxsize`` with a name asks for the same settings
    (``size=maxsize, policy="block"``) of a named queue.

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
    :param mode: permission bits of a queue this handle creates (default ``0o600``), and the
        most a queue it attaches to may carry: a segment with any bit beyond it (say a
        ``0o666`` one planted in ``/dev/shm``) is refused with :class:`UntrustedSegment`,
        also a ``PermissionError``, before anything in it is read.
    :param trusted_owners: uids (or user names) besides this process's effective uid whose
        queues this handle may attach to (default: none — only our own).
    :param spin: seconds a waiter of this handle watches the queue before it sleeps
        (default :func:`pymqueue.set_default_spin`'s, 20 µs; 0: sleep at once).
    """

    __slots__ = (
        "__weakref__",
        "_bell",
        "_block",
        "_bufs",
        "_created",
        "_engine",
        "_handle",
        "_mode",
        "_name",
        "_namespace",
        "_owner",
        "_private",
        "_raw_name",
        "_serializer",
        "_shm",
        "_trusted",
        "addmode",
        "capacity",
        "max_items",
        "policy",
    )

    def __init__(
        self,
        name: str | bytes | int | None = None,
        *,
        maxsize: int | None = None,
        create: bool | None = None,
        size: int | None = None,
        capacity: int | None = None,
        policy: Overflow | int | str | None = None,
        addmode: AddMode | int | str | None = None,
        namespace: str | None = None,
        serializer: Serializer | None = None,
        mode: int | None = None,
        trusted_owners: Iterable[int | str] = (),
        spin: float | None = None,
    ) -> None:
        self._engine: Handle | None = None
        self._handle: Any = None  # the engine's pointer, for the hot paths; None: closed
        self._bell: Bell | None = None  # fileno()'s doorbell, made on first use
        self._owner: _private.Owner | None = None  # private queue, in its creating process
        if isinstance(name, int) and not isinstance(name, bool):  # multiprocessing.Queue(10)
            if maxsize is not None:
                raise ConfigError("maxsize given twice (positionally and by keyword)")
            name, maxsize = None, name
        self._private = name is None
        if self._private or maxsize is not None:
            size, policy = _mp_settings(maxsize, size, policy)
        if self._private:
            if create is False:
                raise ConfigError("a private queue (no name) cannot be attached: create=False")
            create = True
            name = _private.new_name()
        if not isinstance(name, str | bytes):
            raise ConfigError(f"a queue name is str or bytes, not {name!r}")
        self._raw_name = _raw(name)
        self._name = name_text(self._raw_name)
        self._namespace = _check_namespace(namespace)
        self._serializer: Serializer = serializer if serializer is not None else PICKLE
        self._shm = E.shm_name(self._raw_name, self._namespace)
        self._bufs: list[Buf] = []
        want_policy = None if policy is None else Overflow.parse(policy)
        want_addmode = None if addmode is None else AddMode.parse(addmode)
        if capacity is not None and capacity < E.MIN_CAPACITY:
            raise ConfigError(
                f"capacity {capacity} of queue {self._name!r} is below {E.MIN_CAPACITY}"
            )
        if size is not None and not isinstance(size, int):
            raise ConfigError(f"size of queue {self._name!r} must be an int, not {size!r}")
        self._mode, self._trusted, trust = _trust(mode, trusted_owners)
        if self._private:
            self._sweep_stale()
        while True:
            if create is False:
                engine = Handle.open(self._shm, self._name, trust)
                self._created = False
                break
            try:
                engine, self._created = Handle.create(
                    self._shm,
                    self._raw_name,
                    self._name,
                    max_items=max(size or 0, 0),
                    capacity=capacity or DEFAULT_CAPACITY,
                    policy=int(want_policy or Overflow.DROP_OLDEST),
                    addmode=int(want_addmode or AddMode.APPEND),
                    exclusive=bool(create),
                    mode=self._mode,
                    trust=trust,
                )
                break
            except QueueExists:
                if not self._private:
                    raise
                self._raw_name = _raw(_private.new_name())  # 32 random bits collided
                self._name = name_text(self._raw_name)
                self._shm = E.shm_name(self._raw_name, self._namespace)
        if self._private:
            try:
                # The finaliser must not hold a reference to self: unlink by name.
                unlink_name = functools.partial(E.unlink, self._shm, self._name)
                self._owner = _private.Owner(self, self._shm_path(), unlink_name)
            except OSError:
                self.unlink()
                raise
        self._engine = engine
        self._handle = engine.ptr
        if spin is not None:
            engine.set_spin(spin)
        max_items, cap, pol, mode = engine.config()
        self.max_items: int = max_items
        self.capacity: int = cap
        self.policy = Overflow(pol)
        self.addmode = AddMode(mode)
        self._block = self.policy is Overflow.BLOCK
        stored = engine.stored_name()
        if stored != self._raw_name:  # only a hashed long name can collide
            self.close()
            raise ConfigError(f"queue {self._name!r}: segment belongs to {name_text(stored)!r}")
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
            self.close()
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

    @property
    def epoch(self) -> int:
        """This incarnation of the queue: a random non-zero 64-bit number fixed when the
        segment was created, the same in every process. A queue created again under the
        same name has another, so (name, epoch, :attr:`Record.id`) names one item for ever."""
        return self._h().epoch()

    def _h(self) -> Handle:
        engine = self._engine
        if engine is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        return engine

    def close(self) -> None:
        """Release this process's mapping (idempotent). The queue itself stays — except a
        private queue closed by the process that created it, which also unlinks its name
        (handles already attached elsewhere keep working).

        Calls of this handle waiting in other threads wake up and raise
        :class:`QueueClosed`; the mapping is freed once no call in flight holds it."""
        engine = self._engine
        self._handle = None
        self._engine = None
        bell = self._bell
        self._bell = None
        if bell is not None:
            bell.close(engine)
        if engine is not None:
            engine.shutdown()
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner.release()

    def join_thread(self) -> None:
        """multiprocessing's: wait for the feeder thread. There is none (``put`` has stored
        its item when it returns): does nothing."""

    def cancel_join_thread(self) -> None:
        """multiprocessing's: do not wait for the feeder thread at exit. There is none:
        does nothing."""

    @property
    def maxsize(self) -> int:
        """The most items the queue holds (``queue.Queue``'s name for ``max_items``);
        0: no limit."""
        return self.max_items

    def _shm_path(self) -> str:
        return os.path.join(E.SHM_DIR, self._shm.decode("ascii")[1:])

    def _sweep_stale(self) -> None:
        """Unlink the private queues of this namespace whose creator died (SIGKILL) and
        whose forked children are all gone."""
        prefix = f"{E.PREFIX}{self._namespace}." if self._namespace else E.PREFIX
        _private.sweep_stale(E.SHM_DIR, prefix)

    def unlink(self) -> None:
        """Remove the queue from the host (idempotent); attached handles keep working
        until they close, as with files."""
        E.unlink(self._shm, self._name)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Private queues are multiprocessing's drop-in, which never asks for close().
        if getattr(self, "_handle", None) is not None and not getattr(self, "_private", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _attach,
            (
                self._raw_name,
                self._namespace,
                self._serializer,
                self._mode,
                self._trusted,
                type(self),
                self._private,
            ),
        )

    def __repr__(self) -> str:
        where = f"0x{id(self):x}"
        kind = f"pymqueue.{type(self).__name__}"
        engine = self._engine
        if engine is None:
            return f"<{kind} {self._name!r} closed at {where}>"
        n = engine.count_hint()  # never waits for the lock (a stopped holder, __del__)
        limit = f"/{self.max_items}" if self.max_items else ""
        extra = ""
        if self.policy != Overflow.DROP_OLDEST:
            extra += f" policy={self.policy.name.lower()}"
        if self.addmode != AddMode.APPEND:
            extra += f" addmode={int(self.addmode)}"
        if self._namespace:
            extra += f" namespace={self._namespace!r}"
        return f"<{kind} {self._name!r} items={n}{limit}{extra} at {where}>"

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
        try:  # bytes go to C as they are; cffi refuses anything else (TypeError)
            rc: int = _pmq_add(handle, key, len(key), value, len(value), 0)
        except TypeError:
            key = to_bytes(key)
            value = to_bytes(value)
            rc = _pmq_add(handle, key, len(key), value, len(value), 0)
        if rc == _OK:
            return True
        return self._add_slow(handle, key, value, rc, timeout)

    def _add_slow(self, handle: Any, key: Key, value: Key, rc: int, timeout: float | None) -> bool:
        """add() after a first try that did not store the item (out of line: the closure
        below would make every add allocate cells for handle, k and v)."""
        k = to_bytes(key)
        v = to_bytes(value)
        waits = rc == _E_FULL and self._block and timeout != 0
        if waits or rc == _E_LOCKTIMEOUT:
            rc = wait_loop(
                lambda ns: _pmq_add(handle, k, len(k), v, len(v), ns),
                timeout if self._block else 0,
                _E_FULL if self._block else None,
            )
            if rc == _OK:
                return True
        engine = self._engine
        if rc == _E_FULL and self._block and engine is not None:
            engine.note_rejected(1)
        if rc == _DUPLICATE:
            return False
        self._fail(rc, len(k), len(v))

    def _fail(self, rc: int, klen: int = 0, vlen: int = 0) -> NoReturn:
        detail = ""
        if rc == E.E_TOOBIG:
            detail = (
                f"key {klen} + value {vlen} bytes + {E.RECORD_OVERHEAD} overhead "
                f"> capacity {self.capacity}"
            )
        E.raise_for(rc, self._name, detail)

    def fetch(self, timeout: float | None = 0) -> tuple[bytes, bytes] | None:
        """Remove and return the oldest ``(key, value)``, or None if there is none within
        ``timeout`` (0: try once, the default; None: wait forever)."""
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        bufs = self._bufs
        buf = bufs.pop() if bufs else Buf(_BUF_SIZE)
        lens: int = _pmq_try_fetch(handle, buf.cdata, buf.size)
        if lens >= 0:
            cut = _cuts_get(lens)
            if cut is not None:
                item: tuple[bytes, bytes] = cut(buf.view)
            else:
                view = buf.view
                k = lens >> 32
                item = (view[0:k], view[k : k + (lens & _LEN_MASK)])
                if _CUTS_ROOM[0]:
                    _cut_learn(lens)
            bufs.append(buf)
            return item
        return self._fetch_slow(handle, buf, lens, timeout)

    def _fetch_slow(
        self, handle: Any, buf: Buf, rc: int, timeout: float | None
    ) -> tuple[bytes, bytes] | None:
        """fetch() after a first try that found nothing, or an item too big for the buffer."""
        try:
            if rc == _E_BUFSMALL:  # the first try did not say how big: ask with the lengths
                rc = _pmq_fetch(handle, buf.cdata, buf.size, buf.clens, 0)
            while True:
                if (rc == _E_EMPTY and timeout != 0) or rc == _E_LOCKTIMEOUT:
                    rc = wait_loop(
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
                buf = Buf(max(buf.lens[0] + buf.lens[1], 2 * buf.size))
                rc = _pmq_fetch(handle, buf.cdata, buf.size, buf.clens, 0)
        finally:
            self._bufs.append(buf)

    def size(self) -> int:
        """The number of items in the queue now."""
        return self._h().count()

    __len__ = size

    def add_many(
        self,
        items: Iterable[tuple[Key, Key]],
        timeout: float | None = None,
        *,
        released: bool = False,
    ) -> int:
        """Add items in order under one lock acquisition; returns how many were handled
        (stored, or ignored as duplicates by addmode 1). With the reject policy it stops at
        the first that does not fit and raises :class:`Full` (``.done`` tells how many were
        handled before). An item that can never fit refuses the whole batch.

        ``released``: never held, even while the queue holds (:meth:`hold`) — how a
        forwarder adds what it received, which must not be forwarded again."""
        flags = E.ADD_RELEASED if released else 0
        pairs = items if type(items) is list else list(items)
        split = _split(pairs)
        if split is not None:
            done = self._add_flat(split[0], split[1], timeout, split[2], flags)
            if done >= 0:
                return done
        _, lens, data = _flatten(pairs)
        return self._add_flat(lens, data, timeout, None, flags)

    def _add_flat(
        self,
        lens: array[int],
        data: bytes,
        timeout: float | None,
        values: bytes | None = None,
        flags: int = 0,
    ) -> int:
        """add_many() of items already flat: key and value lengths, and their bytes in order
        in ``data`` or (``values`` given) the keys in ``data`` and the values in ``values``;
        -1 (nothing added) if ``values`` is given and the lengths do not add up to the sizes
        (``len`` of a memoryview of wide items counts items, not bytes). ``flags``:
        ``PMQ_ADD_*``."""
        n = len(lens) // 2
        if n == 0:
            return 0
        engine = self._h()
        if values is None:
            rc, total = engine.add_many(lens, data, n, 0, flags)
        else:
            rc, total = engine.add_many_split(lens, data, values, n, 0, flags=flags)
            if rc == E.E_INVAL:  # lengths that are not byte counts (a memoryview of wide items)
                return -1  # nothing added: the caller converts item by item
            if rc != _OK:  # what follows resumes within one buffer in item order
                data = _interleave(lens, data, values)
        if (rc == _E_FULL and self._block and timeout != 0) or rc == _E_LOCKTIMEOUT:
            # Each slice resumes where the previous one stopped.
            offset = sum(lens[: 2 * total])

            def call(ns: int) -> int:
                nonlocal total, offset
                rc, done = engine.add_many(lens[2 * total :], data[offset:], n - total, ns, flags)
                for i in range(total, total + done):
                    offset += lens[2 * i] + lens[2 * i + 1]
                total += done
                return rc

            rc = wait_loop(call, timeout if self._block else 0, _E_FULL if self._block else None)
        if rc == _OK:
            return total
        if rc == E.E_TOOBIG:
            big = max(range(n), key=lambda i: lens[2 * i] + lens[2 * i + 1])
            if lens[2 * big] + lens[2 * big + 1] + E.RECORD_OVERHEAD > self.capacity:
                self._fail(rc, lens[2 * big], lens[2 * big + 1])
        if rc == _E_FULL and self._block:
            engine.note_rejected(n - total)
        try:
            self._fail(rc)
        except Full as exc:
            exc.done = total  # type: ignore[attr-defined]
            raise

    def fetch_many(self, max_items: int, timeout: float | None = 0) -> list[tuple[bytes, bytes]]:
        """Remove and return up to ``max_items`` of the oldest items under one lock (more
        calls if they do not fit the buffer); waits (per ``timeout``) for the first only."""
        if max_items <= 0:
            return []
        engine = self._h()
        bufs = self._bufs
        buf = bufs.pop() if bufs else Buf(_BUF_SIZE)
        batch = Batch(min(max_items, _CHUNK_ITEMS))
        out: list[tuple[bytes, bytes]] = []
        wait = timeout
        try:
            while len(out) < max_items:
                want = min(max_items - len(out), _CHUNK_ITEMS)
                rc = engine.fetch_many(buf, batch, want, 0) if wait == 0 else _E_LOCKTIMEOUT
                if rc == _E_LOCKTIMEOUT:
                    rc = wait_loop(
                        lambda ns, b=buf, n=want: engine.fetch_many(b, batch, n, ns),
                        wait,
                        _E_EMPTY,
                    )
                if rc == _E_BUFSMALL:
                    buf = Buf(max(batch.first_size(), 2 * buf.size))
                    continue
                if rc == _E_EMPTY:
                    break
                if rc != _OK:
                    self._fail(rc)
                wait = 0
                batch.unpack(buf, out)
        finally:
            self._bufs.append(buf)
        return out

    def fetch_batch(self, max_items: int, timeout: float | None = 0) -> ItemBatch:
        """Like :meth:`fetch_many`, but the items stay in one buffer of their own, copied
        there by one C call, and are cut out only when asked: an :class:`ItemBatch`
        (``len``, indexing, iteration over ``(key, value)``; ``values()``/``keys()``/
        ``items()`` cut all in one call each; ``view(i)`` without copying)."""
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        if max_items <= 0:
            return ItemBatch(b"", array("I"), 0)
        rc, buf, lens, n = _fetch_chunk(handle, _BUF_SIZE, min(max_items, _CHUNK_ITEMS), 0)
        if rc == _OK and n == max_items:
            return ItemBatch(buf, lens, n)
        return self._fetch_batch_slow(handle, (rc, buf, lens, n), max_items, timeout)

    def _fetch_batch_slow(
        self,
        handle: Any,
        first: tuple[int, Any, array[int], int],
        max_items: int,
        timeout: float | None,
    ) -> ItemBatch:
        """fetch_batch() after a first call that did not fill the batch: waits (for the first
        item only), a buffer too small for one item, more calls until empty or full."""
        chunks: list[tuple[Any, array[int], int]] = []
        got = 0
        size = _BUF_SIZE
        waited = False
        last = first
        while True:
            rc, buf, lens, n = last
            if rc == _OK:
                chunks.append((buf, lens, n))
                got += n
                if got >= max_items or n == 0:
                    break
            elif rc == _E_BUFSMALL:
                size = max(lens[0] + lens[1], 2 * size)
            elif chunks:
                break  # empty now (or an error after items were taken: return those)
            elif rc == _E_EMPTY and (timeout == 0 or waited):
                break
            elif rc not in (_E_EMPTY, _E_LOCKTIMEOUT) or waited:
                self._fail(rc)
            want = min(max_items - got, _CHUNK_ITEMS)
            if rc in (_E_EMPTY, _E_LOCKTIMEOUT) and not chunks:

                def call(ns: int, size: int = size, want: int = want) -> int:
                    nonlocal last
                    last = _fetch_chunk(handle, size, want, ns)
                    return last[0]

                wait_loop(call, timeout, _E_EMPTY)
                waited = True
            else:
                last = _fetch_chunk(handle, size, want, 0)
        if len(chunks) == 1:
            return ItemBatch(*chunks[0])
        all_lens: array[int] = array("I")
        data = []
        for buf, lens, n in chunks:
            used = lens[: 2 * n]
            all_lens.extend(used)
            data.append(buf[0 : sum(used)])
        return ItemBatch(b"".join(data), all_lens, got)

    def peek_many(self, max_items: int) -> list[tuple[bytes, bytes]]:
        """Up to ``max_items`` of the oldest items, oldest first, WITHOUT removing them.

        Read in batches (one lock each), so under concurrent fetches the result is the
        items that were present at some point, in order, never one twice."""
        engine = self._h()
        buf = Buf(_BUF_SIZE)
        size = min(max(max_items, 1), 4096)
        batch = Batch(size, cursor=True)
        out: list[tuple[bytes, bytes]] = []
        while len(out) < max_items:
            want = min(size, max_items - len(out))
            rc = engine.peek_many(buf, batch, want)
            if rc == _E_BUFSMALL:
                buf = Buf(max(batch.first_size(), 2 * buf.size))
                continue
            if rc != _OK:
                self._fail(rc)
            if batch.count == 0:
                break
            batch.unpack(buf, out)
        return out

    def peek_records(
        self,
        max_items: int,
        *,
        after_id: int = 0,
        max_bytes: int | None = None,
        held_only: bool = False,
    ) -> list[Record]:
        """Up to ``max_items`` of the oldest items whose id is > ``after_id``, oldest first,
        with their ids, WITHOUT removing them; at most ``max_bytes`` key + value bytes in all
        (None: no limit), though always the first item if there is one, however big.

        With :meth:`discard_through` this is a forwarder's loop: peek a batch, send it, and
        once it is acknowledged discard exactly what was sent. One lock per call.
        ``held_only``: only the items held back (:meth:`hold`), for :meth:`release_through`."""
        if max_items < 0 or after_id < 0 or (max_bytes is not None and max_bytes < 0):
            raise ValueError("max_items, after_id and max_bytes must be >= 0")
        if max_items == 0:
            return []
        engine = self._h()
        limit = max_bytes if max_bytes is not None else _BUF_SIZE
        size = min(max_items, 65536)
        batch = Batch(size, cursor=True, ids=True)
        batch.cursor_id[0] = after_id + 1  # type: ignore[index]
        out: list[Record] = []
        buf = Buf(max(min(limit, _BUF_SIZE), 1))
        while len(out) < max_items:
            want = min(size, max_items - len(out))
            rc = engine.peek_many(buf, batch, want, E.PEEK_HELD if held_only else 0)
            if rc == _E_BUFSMALL:
                if max_bytes is not None:
                    if out:
                        break  # the next item would pass max_bytes
                    buf = Buf(batch.first_size())  # the first item alone, however big
                    continue
                buf = Buf(max(batch.first_size(), 2 * buf.size))
                continue
            if rc != _OK:
                self._fail(rc)
            got = batch.count
            if got == 0:
                break
            pairs: list[tuple[bytes, bytes]] = []
            batch.unpack(buf, pairs)
            ids = batch.ids[:got]  # type: ignore[index]
            # Records built at C speed: tuple.__new__(Record, (id, key, value)) per item
            out.extend(map(_new_record, zip(ids, *zip(*pairs, strict=True), strict=True)))
            if max_bytes is not None:
                limit -= sum(len(k) + len(v) for k, v in pairs)
                if limit <= 0:
                    break
                if limit < buf.size:
                    buf = Buf(limit)
        return out

    def hold(self, on: bool = True) -> None:
        """Hold back the items added from now on (``on``), or stop holding and release every
        held item. A held item counts in ``len()`` but no fetch takes it — nor any item
        behind it: order is kept — until :meth:`release_through` releases it. A mirror
        forwarder holds its queue so it sees every local add before any consumer does
        (:meth:`peek_records` with ``held_only``, send, release). The setting lives in the
        segment: it outlives the process that set it."""
        self._h().set_hold(on)

    def release_through(self, last_id: int) -> int:
        """Release the held items whose id is <= ``last_id``; returns how many. Fetchers
        waiting for them are woken and doorbells ring."""
        if last_id < 0:
            raise ValueError("last_id must be >= 0")
        return self._h().release_through(last_id)

    def discard_through(self, last_id: int) -> int:
        """Remove the items at the head whose id is <= ``last_id`` (stopping at the first
        with a larger id) and return how many; they count as fetched. What a forwarder
        peeked, sent and had acknowledged: items a consumer fetched meanwhile are simply
        gone already."""
        if last_id < 0:
            raise ValueError("last_id must be >= 0")
        return self._h().discard_through(last_id)

    # ---- standard-library vocabulary --------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Serialise ``obj`` (outside the lock) and add it with an empty key.

        Raises :class:`Full` (also ``queue.Full``) when there is no room: at once with the
        reject policy or ``block=False``, after ``timeout`` with the block policy."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        ser = self._serializer
        data = _pickle_dumps(obj, _PICKLE_PROTOCOL) if ser is PICKLE else ser.dumps(obj)
        handle = self._handle
        if handle is not None and type(data) is bytes:  # the fast path of add(), inline
            rc: int = _pmq_add(handle, b"", 0, data, len(data), 0)
            if rc == _OK:
                return
            added = self._add_slow(handle, b"", data, rc, timeout if block else 0)
        else:
            added = self.add(b"", data, timeout=timeout if block else 0)
        if not added:
            raise AssertionError("put into an addmode 1 queue with an empty key was ignored")

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove the oldest item and return its value deserialised; raise :class:`Empty`
        (also ``queue.Empty``) if none arrives within ``timeout`` (None: wait forever)."""
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        handle = self._handle
        bufs = self._bufs
        if handle is not None and bufs:  # the fast path of fetch(), inline: values only
            buf = bufs.pop()
            lens: int = _pmq_try_fetch(handle, buf.cdata, buf.size)
            if lens >= 0:
                k = lens >> 32
                value = buf.view[k : k + (lens & _LEN_MASK)]
                bufs.append(buf)
                ser = self._serializer
                return _pickle_loads(value) if ser is PICKLE else ser.loads(value)
            # nothing yet, or too big: fetch()'s slow path waits or grows the buffer
            item = self._fetch_slow(handle, buf, lens, timeout if block else 0)
        else:
            item = self.fetch(timeout=timeout if block else 0)
        if item is None:
            raise Empty(f"queue {self._name!r} is empty", self._name)
        return self._serializer.loads(item[1])

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> int:
        values = list(map(self._serializer.dumps, objs))
        timeout = timeout if block else 0
        lens = array("I", bytes(8 * len(values)))  # keys: all empty
        try:
            lens[1::2] = array("I", map(len, values))
            data = b"".join(values)
        except TypeError:  # a serializer that does not return bytes: converted item by item
            return self.add_many([(b"", v) for v in values], timeout=timeout)
        done = self._add_flat(lens, b"", timeout, data)
        if done < 0:  # a memoryview of wide items
            return self.add_many([(b"", v) for v in values], timeout=timeout)
        return done

    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[Any]:
        """Up to ``max_items`` objects, oldest first; :class:`Empty` if none arrives."""
        batch = self.fetch_batch(max_items, timeout=timeout if block else 0)
        if not batch:
            raise Empty(f"queue {self._name!r} is empty", self._name)
        return list(map(self._serializer.loads, batch.values()))

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return bool(self.max_items) and self.size() >= self.max_items

    # ---- observation ------------------------------------------------------------------

    def stats(self) -> QueueStats:
        """The queue's counters, read under its lock."""
        s = self._h().stats()
        return QueueStats(name=self._name, max_items=self.max_items, capacity=self.capacity, **s)

    def wait(self, readable: bool = True, timeout: float | None = None, need: int = 0) -> bool:
        """Wait until the queue has an item (``readable``) or room for an item of ``need``
        key + value bytes (0: any item); nothing is taken. Returns False on timeout.
        :class:`ItemTooLarge` if such an item can never fit."""
        engine = self._h()
        give_up = _E_EMPTY if readable else _E_FULL
        rc = wait_loop(lambda ns: engine.wait(readable, need, ns), timeout, give_up)
        if rc == _OK:
            return True
        if rc == give_up:
            return False
        self._fail(rc, need)

    # ---- event loops: the doorbell -----------------------------------------------------

    def fileno(self) -> int:
        """A file descriptor that becomes readable when the queue may have items, for
        ``selectors``, ``select``/``poll``, ``multiprocessing.connection.wait`` and asyncio's
        ``loop.add_reader``. Every call also does what :meth:`arm` does.

        The descriptor is this handle's *doorbell* (a datagram socket, one per handle and
        process, made on first use and closed by :meth:`close`). The protocol:

        1. :meth:`arm` (or ``fileno()``): if the queue has items now, the descriptor is made
           readable at once; otherwise the next add to the queue, from any process, makes it
           readable. Either way, pending rings are read first, so a descriptor armed on an
           empty queue is not readable.
        2. Readable means "look": ``fetch()`` until it returns None (another consumer may
           have been faster; the descriptor says *may* have items).
        3. Call :meth:`arm` again before waiting again: a bell rings once per arm. Helpers
           that call ``fileno()`` each time they wait (``multiprocessing.connection.wait``,
           ``select.select``, a selector registered anew) do it themselves; a selector or
           ``add_reader`` registered once needs ``arm()`` after each wake-up.

        Cost: nothing for producers while no bell is armed (one load per add); one datagram
        per armed bell at the next add, sent after the queue's lock is released. A queue
        holds 64 doorbells; bells of dead processes are freed when a ring or a full table
        finds them gone. Doorbells work between processes of the same network namespace
        (they are abstract AF_UNIX sockets).

        :raises BellTableFull: 64 live processes or handles hold the queue's doorbells
            (also an ``OSError``).
        :raises QueueClosed: the handle is closed.
        """
        bell = self._bell_here()
        if bell.arm(self._h()):
            bell.ring_self()
        return bell.fileno()

    def arm(self, *, held: bool = False) -> bool:
        """Re-arm the doorbell of :meth:`fileno` (see its protocol). Returns True when the
        queue has items a fetch would take now (``held``: items held back, for a mirror
        forwarder) — the descriptor is then readable at once — and False when the next add
        will ring it."""
        bell = self._bell_here()
        if bell.arm(self._h(), held=held):
            bell.ring_self()
            return True
        return False

    def _bell_here(self) -> Bell:
        """This handle's doorbell in this process (a forked child makes its own)."""
        bell = self._bell
        pid = os.getpid()
        if bell is not None and bell.pid == pid:
            return bell
        engine = self._h()
        with _BELL_LOCK:
            bell = self._bell
            if bell is not None and bell.pid == pid:
                return bell
            if bell is not None:
                bell.close(None)  # our copy of the parent's socket; its slot stays the parent's
            self._bell = None
            bell = self._bell = Bell(engine)
            return bell

    def _add_once(self, key: bytes, value: bytes) -> int:
        """One add that does not wait for room (the lock only): the engine's return code."""
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        rc: int = _pmq_add(handle, key, len(key), value, len(value), 0)
        if rc == _E_LOCKTIMEOUT:
            rc = wait_loop(
                lambda ns: _pmq_add(handle, key, len(key), value, len(value), ns), 0, None
            )
        return rc

    def _note_rejected(self, n: int) -> None:
        self._h().note_rejected(n)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Drain: yields items until the queue is empty (does not wait)."""
        while (item := self.fetch()) is not None:
            yield item


def list_queues(namespace: str | None = None) -> list[str]:
    """Names of the queues in a namespace on this host (default: ``$PYMQUEUE_NAMESPACE``)."""
    ns = _check_namespace(namespace)
    names = []
    try:
        entries = sorted(os.listdir(E.SHM_DIR))
    except FileNotFoundError:
        return []
    for entry in entries:
        parts = E.split_shm_name(entry)
        if parts is None or parts[0] != ns:
            continue
        try:
            engine = Handle.open(b"/" + entry.encode(), entry)
        except (OSError, ValueError):
            continue  # not ours, not readable, or being created
        names.append(name_text(engine.stored_name()))
    return names


def unlink(name: str | bytes, namespace: str | None = None) -> bool:
    """Remove a queue by name; returns False if there was none."""
    raw = _raw(name)
    return E.unlink(E.shm_name(raw, _check_namespace(namespace)), name_text(raw))
