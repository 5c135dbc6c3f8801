"""The binding tier: the only module that touches the C library.

It turns names into shared-memory object names, opens handles (freed by the garbage
collector once no operation holds them), and maps the C return codes to pymqueue's
exceptions, with the queue's name in every message.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import os
import re
from typing import Any, NoReturn

from pymqueue import errors
from pymqueue._pmq_c import ffi, lib

__all__ = ["ffi", "lib", "raise_for", "shm_name", "split_shm_name", "valid_namespace"]

SHM_DIR = "/dev/shm"
PREFIX = "pmq."
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:@+=,")
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_SHM_NAME = 240

OK = lib.PMQ_OK
DUPLICATE = lib.PMQ_DUPLICATE
E_EMPTY = lib.PMQ_E_EMPTY
E_FULL = lib.PMQ_E_FULL
E_BUFSMALL = lib.PMQ_E_BUFSMALL
E_LOCKTIMEOUT = lib.PMQ_E_LOCKTIMEOUT
NAME_MAX = lib.PMQ_NAME_MAX
MIN_CAPACITY = lib.PMQ_MIN_CAPACITY
RECORD_OVERHEAD = lib.PMQ_RECORD_OVERHEAD


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
        "queue {name!r} failed validation: its shared memory was overwritten{detail}",
    ),
    lib.PMQ_E_CLOSED: (errors.QueueClosed, "queue {name!r} is closed{detail}"),
    lib.PMQ_E_UNTRUSTED: (
        errors.UntrustedSegment,
        "shared-memory object of queue {name!r} is owned by another user or writable by "
        "others; not used{detail}",
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


def new_config(max_items: int, capacity: int, policy: int, addmode: int) -> Any:
    return ffi.new(
        "pmq_config *",
        {
            "max_items": max_items,
            "capacity": capacity,
            "policy": policy,
            "addmode": addmode,
            "mode": 0o600,
        },
    )


def create(shm: bytes, raw_name: bytes, cfg: Any, exclusive: bool, name: str) -> tuple[Any, bool]:
    out = ffi.new("pmq_queue **")
    created = ffi.new("int *")
    rc = lib.pmq_create(shm, raw_name, len(raw_name), cfg, int(exclusive), ffi.NULL, out, created)
    if rc != OK:
        raise_for(rc, name)
    return ffi.gc(out[0], lib.pmq_close), bool(created[0])


def open_(shm: bytes, name: str) -> Any:
    out = ffi.new("pmq_queue **")
    rc = lib.pmq_open(shm, ffi.NULL, out)
    if rc != OK:
        raise_for(rc, name)
    return ffi.gc(out[0], lib.pmq_close)


def unlink(shm: bytes, name: str) -> bool:
    rc = lib.pmq_unlink(shm)
    if rc == lib.PMQ_E_NOTFOUND:
        return False
    if rc != OK:
        raise_for(rc, name)
    return True


def read_config(handle: Any) -> tuple[int, int, int, int]:
    cfg = ffi.new("pmq_config *")
    lib.pmq_get_config(handle, cfg)
    return cfg.max_items, cfg.capacity, cfg.policy, cfg.addmode


def read_name(handle: Any) -> bytes:
    buf = ffi.new("uint8_t[]", NAME_MAX)
    n = lib.pmq_get_name(handle, buf, NAME_MAX)
    return bytes(ffi.buffer(buf, n))


def read_stats(handle: Any, name: str) -> dict[str, int]:
    st = ffi.new("pmq_stats *")
    rc = lib.pmq_get_stats(handle, st)
    if rc != OK:
        raise_for(rc, name)
    fields = (
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
    )
    return {f: int(getattr(st, f)) for f in fields}
