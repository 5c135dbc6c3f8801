"""Helpers for the C engine's tests: raw C calls, process states, the segment's bytes.

Workers are module-level functions so that both ``fork`` and ``spawn`` can run them.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymqueue._pmq_c import ffi, lib

import pymqueue
from pymqueue.queue import _engine

SEC = 1_000_000_000
FOREVER = -1

# Header offsets that are part of the layout's stable prefix (see csrc/pmq_internal.h).
OFF_VERSION = 8
OFF_DATA_OFF = 32
OFF_DATA_CAP = 40
OFF_INDEX_SLOTS = 56
OFF_MAX_ITEMS = 64
OFF_POLICY = 72
OFF_ADDMODE = 76
OFF_EPOCH = 80
REC_CHECK = 20  # offset of a record's check field


def shm_path(q_or_name: pymqueue.Queue | str) -> Path:
    name = q_or_name.name if isinstance(q_or_name, pymqueue.Queue) else q_or_name
    shm = _engine.shm_name(name.encode(), os.environ["PYMQUEUE_NAMESPACE"])
    return Path("/dev/shm") / shm.decode()[1:]


@contextmanager
def mapped(q_or_name: pymqueue.Queue | str) -> Iterator[mmap.mmap]:
    """The segment's bytes, writable (as any process with access could write them)."""
    with open(shm_path(q_or_name), "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        yield m


def read_u64(m: mmap.mmap, off: int) -> int:
    return int(struct.unpack_from("<Q", m, off)[0])


def c_fetch(q: pymqueue.Queue, timeout_ns: int) -> tuple[int, bytes]:
    """pmq_fetch straight from C: no Python slices, so a missed wake-up is not papered over."""
    buf = ffi.new("uint8_t[]", 4096)
    lens = ffi.new("uint32_t[2]")
    rc = lib.pmq_fetch(q._handle, buf, 4096, lens, timeout_ns)
    if rc != 0:
        return rc, b""
    return rc, bytes(ffi.buffer(buf, lens[0] + lens[1]))[lens[0] :]


def c_add(q: pymqueue.Queue, key: bytes, value: bytes, timeout_ns: int) -> int:
    return int(lib.pmq_add(q._handle, key, len(key), value, len(value), timeout_ns))


def proc_state(pid: int) -> tuple[str, str]:
    """(state letter, wchan) of a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "X", ""
    return stat.rsplit(")", 1)[1].split()[0], wchan


def asleep_in_futex(pid: int) -> bool:
    state, wchan = proc_state(pid)
    return state == "S" and "futex" in wchan


def wait_until(cond: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll a state (not a sleep as synchronisation); fail if it never comes."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.002)


def wait_all_asleep(q: pymqueue.Queue, pids: list[int], flag: str) -> None:
    """Every pid asleep in a futex wait with the queue's sleep flag up, seen twice in a row
    (a process between two waits is not asleep for long)."""

    def check() -> bool:
        return getattr(q.stats(), flag) == 1 and all(asleep_in_futex(p) for p in pids)

    wait_until(lambda: check() and check(), f"{len(pids)} processes sleep ({flag})")


def stopped(pid: int) -> bool:
    return proc_state(pid)[0] in ("T", "t")


def kill_and_reap(procs: list[Any], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, sig)
    for p in procs:
        p.join(10)


def set_lock_timeout(ns: int) -> None:
    lib.pmq_set_lock_timeout(ns)
