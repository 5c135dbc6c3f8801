"""The binding tier: the only module that imports the C library (``ffi``/``lib``).

* :class:`Handle`: one open queue; its methods map one-to-one to the engine's ``pmq_*``
  calls. Calls whose return code is the caller's business (add, fetch, wait …) return it;
  the others raise.
* :func:`raise_for`: the one map from C return codes to pymqueue's exceptions, with the
  queue's name in every message.
* Shared-memory object names (:func:`shm_name`, :func:`split_shm_name`).
* Output buffers (:class:`Buf`, :class:`Batch`) and the sliced wait (:func:`wait_loop`).
* Process-wide settings: the lock timeout and the default spin budget.

The hot paths (``Queue.add``/``Queue.fetch``) call :data:`pmq_add`/:data:`pmq_fetch` on
:attr:`Handle.ptr` directly: bound once at module level, since an attribute lookup per call
costs as much as the C call itself.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import os
import re
import struct
import time
from array import array
from collections.abc import Callable
from typing import Any, NoReturn

from pymqueue import errors
from pymqueue._pmq_c import ffi, lib

__all__ = [
    "Batch",
    "Buf",
    "Handle",
    "Trust",
    "bell_name",
    "fetch_chunk",
    "get_lock_timeout",
    "pmq_add",
    "pmq_fetch",
    "pmq_try_fetch",
    "raise_for",
    "set_default_spin",
    "set_lock_timeout",
    "shm_name",
    "split_shm_name",
    "unlink",
    "valid_namespace",
    "wait_loop",
]

SHM_DIR = "/dev/shm"
PREFIX = "pmq."
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:@+=,")
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_SHM_NAME = 240

OK: int = lib.PMQ_OK
DUPLICATE: int = lib.PMQ_DUPLICATE
E_EMPTY: int = lib.PMQ_E_EMPTY
E_FULL: int = lib.PMQ_E_FULL
E_BUFSMALL: int = lib.PMQ_E_BUFSMALL
E_TOOBIG: int = lib.PMQ_E_TOOBIG
E_LOCKTIMEOUT: int = lib.PMQ_E_LOCKTIMEOUT
E_CLOSED: int = lib.PMQ_E_CLOSED
E_INVAL: int = lib.PMQ_E_INVAL
READY: int = lib.PMQ_READY
PEEK_HELD: int = lib.PMQ_PEEK_HELD
ADD_RELEASED: int = lib.PMQ_ADD_RELEASED
BELLS: int = lib.PMQ_BELLS
E_PENDING: int = lib.PMQ_E_PENDING
DEFAULT_MODE = 0o600
TRUST_MAX_OWNERS: int = lib.PMQ_TRUST_MAX_OWNERS
DEFAULT_SPIN: float = lib.PMQ_DEFAULT_SPIN_NS / 1e9
NAME_MAX: int = lib.PMQ_NAME_MAX
MIN_CAPACITY: int = lib.PMQ_MIN_CAPACITY
RECORD_OVERHEAD: int = lib.PMQ_RECORD_OVERHEAD

WAIT_SLICE = 0.05  # seconds: the longest a wait goes without returning to Python
_NS = 1_000_000_000
SLICE_NS = int(WAIT_SLICE * _NS)
BUF_SIZE = 64 * 1024

#: The hot-path calls, bound once: ``pmq_add(ptr, k, klen, v, vlen, ns)``,
#: ``pmq_fetch(ptr, buf, size, lens, ns)``, ``pmq_try_fetch(ptr, buf, size)`` (timeout 0;
#: ``klen << 32 | vlen`` when >= 0: each argument of a cffi call costs a conversion).
pmq_add: Callable[..., int] = lib.pmq_add
pmq_fetch: Callable[..., int] = lib.pmq_fetch
pmq_try_fetch: Callable[..., int] = lib.pmq_try_fetch
LEN_MASK = 0xFFFFFFFF

_STATS_FIELDS = (
    "items",
    "bytes",
    "ring_used",
    "added",
    "fetched",
    "dropped",
    "rejected",
    "replaced",
    "duplicates",
    "high_water",
    "recoveries",
    "getters_waiting",
    "putters_waiting",
    "bells",
    "bells_armed",
    "held",
    "hold",
    "unfinished",
)


# ---- names ------------------------------------------------------------------------------


def valid_namespace(namespace: str) -> bool:
    return _NAMESPACE.fullmatch(namespace) is not None


def shm_name(raw_name: bytes, namespace: str) -> bytes:
    """The POSIX shared-memory object name of a queue.

    ``/pmq.<name>`` or ``/pmq.<namespace>.<name>``, the name percent-encoded so that any
    bytes are allowed and a dot never appears in it; a name too long for the file system is
    replaced by a hash (the real name is kept in the segment's header).
    """
    encoded = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw_name)
    prefix = f"/{PREFIX}{namespace}." if namespace else f"/{PREFIX}"
    if len(prefix) + len(encoded) > _MAX_SHM_NAME:
        encoded = "~" + hashlib.sha256(raw_name).hexdigest()[:48]
    return (prefix + encoded).encode("ascii")


def split_shm_name(entry: str) -> tuple[str, str] | None:
    """(namespace, encoded name) of a /dev/shm entry that is ours, else None."""
    if not entry.startswith(PREFIX):
        return None
    parts = entry[len(PREFIX) :].split(".")
    if len(parts) == 1:
        return "", parts[0]
    if len(parts) == 2 and valid_namespace(parts[0]):
        return parts[0], parts[1]
    return None


# ---- return codes -> exceptions ---------------------------------------------------------

_MESSAGES: dict[int, tuple[type[errors.QueueError], str]] = {
    lib.PMQ_E_EMPTY: (errors.Empty, "queue {name!r} is empty"),
    lib.PMQ_E_FULL: (errors.Full, "queue {name!r} is full"),
    lib.PMQ_E_TOOBIG: (errors.ItemTooLarge, "item can never fit in queue {name!r}{detail}"),
    lib.PMQ_E_NOTFOUND: (errors.QueueNotFound, "no queue {name!r}{detail}"),
    lib.PMQ_E_EXISTS: (errors.QueueExists, "queue {name!r} already exists{detail}"),
    lib.PMQ_E_BADSEG: (
        errors.InvalidSegment,
        "shared-memory object of queue {name!r} is not a valid pymqueue segment "
        "(foreign, truncated, never initialised or inconsistent){detail}",
    ),
    lib.PMQ_E_VERSION: (
        errors.InvalidSegment,
        "queue {name!r} was made by a pymqueue of another layout version{detail}",
    ),
    lib.PMQ_E_LOCKTIMEOUT: (
        errors.LockTimeout,
        "the lock of queue {name!r} stayed held by a live process (stopped?){detail}",
    ),
    lib.PMQ_E_CORRUPT: (
        errors.InvalidSegment,
        "queue {name!r} failed validation (its shared memory was overwritten, its lock names "
        "a holder that does not exist, or a failed recovery poisoned it){detail}",
    ),
    lib.PMQ_E_CLOSED: (errors.QueueClosed, "queue {name!r} is closed{detail}"),
    lib.PMQ_E_NOTASK: (
        errors.TaskDoneError,
        "task_done() called more times than items were put in queue {name!r}{detail}",
    ),
    lib.PMQ_E_UNTRUSTED: (
        errors.UntrustedSegment,
        "shared-memory object of queue {name!r} is owned by a user not trusted or carries "
        "permission bits beyond the allowed mode; not used{detail}",
    ),
}


def raise_for(rc: int, name: str, detail: str = "") -> NoReturn:
    """Raise the exception for C return code ``rc`` about queue ``name``."""
    if detail:
        detail = f": {detail}"
    if rc in _MESSAGES:
        cls, template = _MESSAGES[rc]
        raise cls(template.format(name=name, detail=detail), name)
    if rc == lib.PMQ_E_INVAL:
        raise errors.QueueError(f"invalid argument for queue {name!r}{detail}", name)
    if rc == lib.PMQ_E_SYS:
        code = ffi.errno
        err = OSError(code, f"queue {name!r}: {os.strerror(code)}{detail}")
        if code in (_errno.EACCES, _errno.EPERM):
            raise PermissionError(code, f"queue {name!r}: {os.strerror(code)}{detail}") from err
        raise err
    raise errors.QueueError(f"queue {name!r}: unexpected engine code {rc}{detail}", name)


# ---- settings ---------------------------------------------------------------------------


def set_lock_timeout(seconds: float) -> None:
    """How long a call without a deadline waits for a queue's lock held by a live process
    before it raises :class:`~pymqueue.LockTimeout` (process-wide; default 5 s). A call with
    a timeout waits for the lock only within its own deadline."""
    if not seconds > 0:
        raise ValueError("the lock timeout must be > 0 seconds")
    lib.pmq_set_lock_timeout(int(seconds * _NS))


def get_lock_timeout() -> float:
    """The process-wide lock timeout, in seconds."""
    return float(lib.pmq_get_lock_timeout()) / _NS


def set_default_spin(seconds: float) -> None:
    """How long a waiter watches the queue before it sleeps, for queues opened from now on
    in this process (default 20 µs; 0: sleep at once). ``Queue(spin=...)`` sets one."""
    if seconds < 0:
        raise ValueError("the spin budget must be >= 0 seconds")
    lib.pmq_set_default_spin(int(seconds * _NS))


class Trust:
    """Who may have made a segment this process uses: its permission bits may not go beyond
    ``mode``, and its owner must be the effective uid or one of ``owners``."""

    __slots__ = ("cdata",)

    def __init__(self, mode: int, owners: tuple[int, ...]) -> None:
        if len(owners) > TRUST_MAX_OWNERS:
            raise errors.ConfigError(f"at most {TRUST_MAX_OWNERS} trusted owners")
        self.cdata = ffi.new(
            "pmq_trust *",
            {"allowed_mode": mode, "n_owners": len(owners), "owners": list(owners)},
        )


# ---- buffers ----------------------------------------------------------------------------


class Buf:
    """A reusable output buffer; each operation takes one, so threads never share one.

    ``lens`` is an ``array`` that C writes through ``clens``: reading it from Python is far
    cheaper than indexing cdata."""

    __slots__ = ("cdata", "clens", "lens", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.cdata = ffi.new("uint8_t[]", size)
        self.view = ffi.buffer(self.cdata)
        self.lens = array("I", (0, 0))
        self.clens = ffi.from_buffer("uint32_t[]", self.lens)


class Batch:
    """The out-parameters of a batch call (fetch_many, peek_many): item lengths, count,
    and (``cursor=True``) the position peek_many resumes from."""

    __slots__ = ("cids", "clens", "cursor_id", "cursor_pos", "got", "ids", "lens")

    def __init__(self, max_items: int, *, cursor: bool = False, ids: bool = False) -> None:
        self.lens = array("I", bytes(8 * max_items))  # C writes it through clens
        self.clens = ffi.from_buffer("uint32_t[]", self.lens)
        self.got = ffi.new("size_t *")
        self.cursor_pos = ffi.new("uint64_t *") if cursor else None
        self.cursor_id = ffi.new("uint64_t *") if cursor else None
        # peek_many with ids: C writes each item's record id through cids
        self.ids = array("Q", bytes(8 * max_items)) if ids else None
        self.cids = ffi.from_buffer("uint64_t[]", self.ids) if ids else ffi.NULL

    @property
    def count(self) -> int:
        return int(self.got[0])

    def first_size(self) -> int:
        """Key + value bytes of the first item (what a too-small buffer must hold)."""
        return int(self.lens[0] + self.lens[1])

    def unpack(self, buf: Buf, out: list[tuple[bytes, bytes]]) -> None:
        """Append the items the last call left in ``buf`` (key, value, key, value …).

        No Python loop: a ``struct`` format of the lengths (``"16s64s16s64s…"``) cuts every
        key and value out of the buffer in one C call, and ``zip`` pairs them."""
        parts = iter(_layout(self.lens[: 2 * self.got[0]]).unpack_from(buf.view))
        out.extend(zip(parts, parts, strict=True))


_LAYOUTS: dict[bytes, struct.Struct] = {}
_LAYOUTS_MAX = 64


def _layout(lens: array[int]) -> struct.Struct:
    """The ``struct`` that cuts a batch with these lengths; batches of the same shape (the
    usual case: same-sized keys and values) reuse it."""
    shape = lens.tobytes()
    layout = _LAYOUTS.get(shape)
    if layout is None:
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        layout = _LAYOUTS[shape] = struct.Struct("s".join(map(str, lens)) + "s" if lens else "")
    return layout


# ---- fetch_batch: a buffer per batch ------------------------------------------------------

_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)
_pmq_fetch_many = lib.pmq_fetch_many
_from_buffer = ffi.from_buffer
_ffi_buffer = ffi.buffer
_ffi_new = ffi.new


def fetch_chunk(ptr: Any, size: int, want: int, ns: int) -> tuple[int, Any, array[int], int]:
    """``pmq_fetch_many`` of up to ``want`` items into a NEW buffer of ``size`` bytes (not
    cleared: the engine writes before anyone reads), for a batch to keep: (return code,
    the buffer, the key and value lengths, items taken). With ``PMQ_E_BUFSMALL`` the first
    item's lengths are in lengths[0:2]."""
    cdata = _new_uncleared("uint8_t[]", size)
    lens = array("I", bytes(8 * want))  # C writes it through the cdata view
    got = _ffi_new("size_t *")
    rc: int = _pmq_fetch_many(ptr, cdata, size, _from_buffer("uint32_t[]", lens), want, got, ns)
    return rc, _ffi_buffer(cdata), lens, got[0]


# ---- the handle -------------------------------------------------------------------------


class Handle:
    """One open queue. ``ptr`` is the engine's ``pmq_queue *``, closed by the garbage
    collector once no operation holds it; ``name`` (text) goes into error messages."""

    __slots__ = ("name", "ptr")

    def __init__(self, ptr: Any, name: str) -> None:
        self.ptr = ffi.gc(ptr, lib.pmq_close)
        self.name = name

    @classmethod
    def create(
        cls,
        shm: bytes,
        raw_name: bytes,
        name: str,
        *,
        max_items: int,
        capacity: int,
        policy: int,
        addmode: int,
        exclusive: bool,
        mode: int = DEFAULT_MODE,
        trust: Trust | None = None,
    ) -> tuple[Handle, bool]:
        """``pmq_create``: create the queue, or attach if it exists and not ``exclusive``;
        returns (handle, created)."""
        cfg = ffi.new(
            "pmq_config *",
            {
                "max_items": max_items,
                "capacity": capacity,
                "policy": policy,
                "addmode": addmode,
                "mode": mode,
            },
        )
        out = ffi.new("pmq_queue **")
        created = ffi.new("int *")
        rc = lib.pmq_create(
            shm,
            raw_name,
            len(raw_name),
            cfg,
            int(exclusive),
            ffi.NULL if trust is None else trust.cdata,
            out,
            created,
        )
        if rc != OK:
            raise_for(rc, name)
        return cls(out[0], name), bool(created[0])

    @classmethod
    def open(cls, shm: bytes, name: str, trust: Trust | None = None) -> Handle:
        """``pmq_open``: attach to an existing queue (owner and mode checked first)."""
        out = ffi.new("pmq_queue **")
        rc = lib.pmq_open(shm, ffi.NULL if trust is None else trust.cdata, out)
        if rc != OK:
            raise_for(rc, name)
        return cls(out[0], name)

    def config(self) -> tuple[int, int, int, int]:
        """``pmq_get_config``: (max_items, capacity, policy, addmode)."""
        cfg = ffi.new("pmq_config *")
        lib.pmq_get_config(self.ptr, cfg)
        return cfg.max_items, cfg.capacity, cfg.policy, cfg.addmode

    def stored_name(self) -> bytes:
        """``pmq_get_name``: the name kept in the segment's header."""
        buf = ffi.new("uint8_t[]", NAME_MAX)
        n = lib.pmq_get_name(self.ptr, buf, NAME_MAX)
        return bytes(ffi.buffer(buf, n))

    def stats(self) -> dict[str, int]:
        """``pmq_get_stats``: the counters, read under the lock."""
        st = ffi.new("pmq_stats *")
        rc = lock_loop(lambda: lib.pmq_get_stats(self.ptr, st))
        if rc != OK:
            raise_for(rc, self.name)
        return {f: int(getattr(st, f)) for f in _STATS_FIELDS}

    def count(self) -> int:
        """``pmq_count``: the number of items now."""
        out = ffi.new("uint64_t *")
        rc = lock_loop(lambda: lib.pmq_count(self.ptr, out))
        if rc != OK:
            raise_for(rc, self.name)
        return int(out[0])

    def epoch(self) -> int:
        """``pmq_epoch``: the segment's incarnation number (random, non-zero)."""
        return int(lib.pmq_epoch(self.ptr))

    def set_hold(self, on: bool) -> None:
        """``pmq_set_hold``: hold the items added from now on, or stop and release all."""
        rc = lock_loop(lambda: lib.pmq_set_hold(self.ptr, 1 if on else 0))
        if rc != OK:
            raise_for(rc, self.name)

    def release_through(self, last_id: int) -> int:
        """``pmq_release_through``: release the held items with id <= ``last_id``."""
        out = ffi.new("uint64_t *")
        rc = lock_loop(lambda: lib.pmq_release_through(self.ptr, last_id, out))
        if rc != OK:
            raise_for(rc, self.name)
        return int(out[0])

    def discard_through(self, last_id: int) -> int:
        """``pmq_discard_through``: remove the head's items with id <= ``last_id``."""
        out = ffi.new("uint64_t *")
        rc = lock_loop(lambda: lib.pmq_discard_through(self.ptr, last_id, out))
        if rc != OK:
            raise_for(rc, self.name)
        return int(out[0])

    def count_hint(self) -> int:
        """``pmq_count_hint``: the item count read without the lock (never waits)."""
        return int(lib.pmq_count_hint(self.ptr))

    def add_many(
        self, lens: array[int], data: bytes, n: int, ns: int, flags: int = 0
    ) -> tuple[int, int]:
        """``pmq_add_many_flags`` of ``n`` items (``lens``: key, value lengths; ``data``: their
        bytes in order; ``flags``: ``PMQ_ADD_*``): (return code, items handled)."""
        done = ffi.new("size_t *")
        clens = ffi.from_buffer("uint32_t[]", lens)
        rc: int = lib.pmq_add_many_flags(self.ptr, clens, data, n, flags, done, ns)
        return rc, int(done[0])

    def add_many_split(
        self, lens: array[int], keys: bytes, values: bytes, n: int, ns: int, *, flags: int = 0
    ) -> tuple[int, int]:
        """``pmq_add_many_split``: :meth:`add_many` with the keys joined in ``keys`` and the
        values in ``values`` (``E_INVAL`` unless the lengths add up to their sizes)."""
        done = ffi.new("size_t *")
        clens = ffi.from_buffer("uint32_t[]", lens)
        rc: int = lib.pmq_add_many_split(
            self.ptr, clens, keys, len(keys), values, len(values), n, flags, done, ns
        )
        return rc, int(done[0])

    def fetch_many(self, buf: Buf, batch: Batch, want: int, ns: int) -> int:
        """``pmq_fetch_many``: up to ``want`` items into ``buf``/``batch``."""
        rc: int = lib.pmq_fetch_many(
            self.ptr, buf.cdata, buf.size, batch.clens, want, batch.got, ns
        )
        return rc

    def peek_many(self, buf: Buf, batch: Batch, want: int, only: int = 0) -> int:
        """``pmq_peek_many``: up to ``want`` items after ``batch``'s cursor, not removed
        (``only``: ``PMQ_PEEK_HELD`` for the held ones alone)."""
        return lock_loop(
            lambda: lib.pmq_peek_many(
                self.ptr,
                buf.cdata,
                buf.size,
                batch.clens,
                batch.cids,
                want,
                only,
                batch.cursor_pos,
                batch.cursor_id,
                batch.got,
            )
        )

    def wait(self, readable: bool, need: int, ns: int) -> int:
        """``pmq_wait``: until the queue has an item (``readable``) or room for an item of
        ``need`` key + value bytes, up to ``ns``."""
        what = lib.PMQ_WAIT_READABLE if readable else lib.PMQ_WAIT_WRITABLE
        rc: int = lib.pmq_wait(self.ptr, what, need, ns)
        return rc

    def set_spin(self, seconds: float) -> None:
        """``pmq_set_spin``: this handle's spin budget before a waiter sleeps."""
        if seconds < 0:
            raise ValueError("the spin budget must be >= 0 seconds")
        lib.pmq_set_spin(self.ptr, int(seconds * _NS))

    def shutdown(self) -> None:
        """``pmq_shutdown``: calls of this handle waiting now (other threads) or later
        return ``PMQ_E_CLOSED``; the mapping goes when the last reference does."""
        lib.pmq_shutdown(self.ptr)

    def note_rejected(self, n: int) -> None:
        """``pmq_note_rejected``: count ``n`` items a blocked add gave up on."""
        lock_loop(lambda: lib.pmq_note_rejected(self.ptr, n))

    def task_done(self, n: int) -> None:
        """``pmq_task_done``: mark ``n`` items done (:class:`TaskDoneError` if fewer are
        unfinished; nothing changes then)."""
        rc = lock_loop(lambda: lib.pmq_task_done(self.ptr, n))
        if rc != OK:
            raise_for(rc, self.name)

    def join(self, ns: int) -> int:
        """``pmq_join``: until no item is unfinished, up to ``ns``; ``E_PENDING`` if some
        still are at the deadline."""
        rc: int = lib.pmq_join(self.ptr, ns)
        return rc

    def unfinished(self) -> int:
        """``pmq_unfinished``: items put and not yet done, dropped or replaced."""
        out = ffi.new("uint64_t *")
        rc = lock_loop(lambda: lib.pmq_unfinished(self.ptr, out))
        if rc != OK:
            raise_for(rc, self.name)
        return int(out[0])

    def bell_register(self, token: int) -> int:
        """``pmq_bell_register``: the slot of the doorbell bound to :func:`bell_name`
        (``token``); raises :class:`~pymqueue.errors.BellTableFull` when none is free."""
        slot = ffi.new("uint32_t *")
        rc = lock_loop(lambda: lib.pmq_bell_register(self.ptr, token, slot))
        if rc == E_FULL:
            raise errors.BellTableFull(
                f"queue {self.name!r}: all {BELLS} doorbells are taken by live processes",
                self.name,
            )
        if rc != OK:
            raise_for(rc, self.name)
        return int(slot[0])

    def bell_arm(self, slot: int, token: int) -> int:
        """``pmq_bell_arm``: OK (armed), READY (items now, not armed) or E_INVAL (the slot
        was freed: register again); other codes raise."""
        rc = lock_loop(lambda: lib.pmq_bell_arm(self.ptr, slot, token))
        if rc not in (OK, READY, E_INVAL):
            raise_for(rc, self.name)
        return rc

    def bell_arm_held(self, slot: int, token: int) -> int:
        """``pmq_bell_arm_held``: like :meth:`bell_arm`, READY when items are held now."""
        rc = lock_loop(lambda: lib.pmq_bell_arm_held(self.ptr, slot, token))
        if rc not in (OK, READY, E_INVAL):
            raise_for(rc, self.name)
        return rc

    def bell_unregister(self, slot: int, token: int) -> None:
        """``pmq_bell_unregister``: free the slot if it still holds ``token``. Never raises:
        a slot left behind is freed by the first ring or probe that finds its socket gone."""
        lock_loop(lambda: lib.pmq_bell_unregister(self.ptr, slot, token))


def bell_name(token: int) -> bytes:
    """``pmq_bell_name``: the abstract AF_UNIX address (leading NUL) of a doorbell."""
    buf = ffi.new("uint8_t[]", lib.PMQ_BELL_NAME_MAX)
    n = lib.pmq_bell_name(token, buf, lib.PMQ_BELL_NAME_MAX)
    return bytes(ffi.buffer(buf, n))


def unlink(shm: bytes, name: str) -> bool:
    """``pmq_unlink``: remove the segment; False if there was none."""
    rc = lib.pmq_unlink(shm)
    if rc == lib.PMQ_E_NOTFOUND:
        return False
    if rc != OK:
        raise_for(rc, name)
    return True


# ---- waits ------------------------------------------------------------------------------


# Calls that only need the lock give up after a slice in C, so that Python runs signal
# handlers between tries (Ctrl-C reaches them too); lock_loop tries again up to the lock
# timeout. A C caller that never sets the slice keeps waiting the whole lock timeout.
lib.pmq_set_lock_slice(SLICE_NS)


def lock_loop(call: Callable[[], int]) -> int:
    """Run ``call`` (a C call that only takes the lock) until it gets the lock or the lock
    has stayed out of reach for the process lock timeout (``PMQ_E_LOCKTIMEOUT``)."""
    rc = call()
    if rc == E_LOCKTIMEOUT:
        rc = wait_loop(lambda _ns: call(), 0, None)
    return rc


def wait_loop(call: Callable[..., int], timeout: float | None, give_up: int | None) -> int:
    """Call ``call(slice_ns)`` until it answers something other than ``give_up`` (the code
    for "not yet": nothing to fetch, no room) or the deadline passes; between slices Python
    runs signal handlers, so Ctrl-C reaches every wait.

    ``timeout``: None waits for ever, 0 looks once, > 0 is a deadline for the whole call.
    ``give_up=None``: the call has no condition to wait for (it only needs the lock). A slice
    that did not get the lock (``PMQ_E_LOCKTIMEOUT``; C bounds each lock wait by the slice)
    is tried again until the deadline, or, for a call without one (None or 0), until the
    lock has stayed out of reach for the process lock timeout (:func:`set_lock_timeout`).
    """
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be None or >= 0")
    now = time.monotonic()
    deadline = None if timeout is None else now + timeout
    lock_limit: float | None = None
    while True:
        if deadline is None:
            ns = SLICE_NS
        else:
            remaining = deadline - now
            ns = int(min(remaining, WAIT_SLICE) * _NS) if remaining > 0 else 0
        rc = call(ns)
        now = time.monotonic()
        if rc == E_LOCKTIMEOUT:
            if timeout:  # a deadline bounds the lock waits too
                if deadline is not None and now >= deadline:
                    return rc
            elif lock_limit is None:
                lock_limit = now + get_lock_timeout()
            elif now >= lock_limit:
                return rc
            continue
        lock_limit = None
        if rc != give_up or give_up is None or (deadline is not None and now >= deadline):
            return rc
