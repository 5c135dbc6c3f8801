"""Private queues: what ``pymqueue.Queue()`` without a name makes (the drop-in for
``multiprocessing.Queue``).

* A unique name, ``mp-<pid>-<counter>-<8 hex>``, in the caller's namespace.
* The creating process owns it (:class:`Owner`): it unlinks the name on ``close()``, when
  the object is collected and at exit (also the exit of a ``multiprocessing`` child). Only the
  creating PID unlinks: a forked child that inherits the object, closes it or exits (or
  crashes) leaves the queue to its creator. Handles that are already attached keep working
  after the unlink, as with files; only attaching by name is no longer possible.
* A creator killed with SIGKILL cannot unlink. Its queue is found by the next private queue
  made in the same namespace (:func:`sweep_stale`): the creator holds a shared ``flock`` on
  the segment for its lifetime (inherited by its forked children, released by the kernel when
  the last of them dies), so a name whose creator PID is gone and whose lock is free is
  unlinked. Nothing else is ever touched: the name must be a private name, the file ours.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import secrets
import stat
from collections.abc import Callable

__all__ = ["PRIVATE_PREFIX", "Owner", "new_name", "sweep_stale"]

PRIVATE_PREFIX = "mp-"
_PRIVATE = re.compile(r"mp-(\d{1,10})-\d{1,20}-[0-9a-f]{8}")
_counter = itertools.count()


def new_name() -> str:
    """A fresh private queue name: ``mp-<pid>-<counter>-<random>``."""
    return f"{PRIVATE_PREFIX}{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _open_nofollow(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)


class Owner:
    """What the creator of a private queue holds: a shared ``flock`` on the segment (its
    "alive" mark for :func:`sweep_stale`) and the finaliser that unlinks the name.

    The finaliser is ``multiprocessing.util.Finalize`` (a weak reference's callback plus an
    exit hook) rather than ``weakref.finalize``: it also runs when a ``multiprocessing``
    child exits (those end in ``os._exit``, skipping ``atexit``), only in the process that
    made it, and its negative exit priority runs it after the exiting process has joined its
    non-daemon children, so a ``spawn`` child started just before the parent's exit still
    finds the name to attach to.
    """

    __slots__ = ("_finalizer", "pid")

    def __init__(self, obj: object, path: str, unlink: Callable[[], object]) -> None:
        from multiprocessing import util  # noqa: PLC0415 - only for private queues

        self.pid = os.getpid()
        fd = _open_nofollow(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            raise
        self._finalizer = util.Finalize(obj, _release, (fd, unlink), exitpriority=-10)

    def release(self) -> None:
        """Unlink and drop the lock, in the creating process only (elsewhere nothing);
        idempotent."""
        self._finalizer()


def _release(fd: int, unlink: Callable[[], object]) -> None:
    try:
        unlink()
    finally:
        os.close(fd)


def sweep_stale(shm_dir: str, prefix: str) -> list[str]:
    """Unlink the private queues under ``shm_dir`` whose file name is ``prefix`` followed by
    a private name, owned by our effective uid, whose creator PID is gone and whose lock
    nobody holds (neither the creator nor a forked child of it). Returns the file names."""
    removed: list[str] = []
    try:
        entries = os.listdir(shm_dir)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        m = _PRIVATE.fullmatch(entry[len(prefix) :])
        if m is None or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(shm_dir, entry)
        try:
            fd = _open_nofollow(path)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live holder: the creator's forked children
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # the name was reused meanwhile
            os.unlink(path)
            removed.append(entry)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed
