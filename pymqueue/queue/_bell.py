"""Doorbells: the file descriptor behind :meth:`Queue.fileno` and ``AsyncQueue``'s waits.

A doorbell is a non-blocking AF_UNIX datagram socket bound to an abstract address made from
a random 64-bit token (``csrc/bell.c``): nothing on disk, and the address disappears with
the process. The engine keeps the token in the queue's header; :meth:`Bell.arm` asks for one
datagram at the next add (from any process), or answers at once that the queue has items.

One :class:`Bell` per queue handle and process (a forked child makes its own). The asyncio
side (``loop``, ``futures``, ``reading``, ``armed``) is driven by
:mod:`pymqueue.queue.aio`; it is kept here so that :meth:`close` can wake those waiters.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from pymqueue.errors import QueueError
from pymqueue.queue._engine import E_INVAL, READY, Handle, bell_name

if TYPE_CHECKING:
    import asyncio

__all__ = ["Bell"]

_BIND_TRIES = 8


class Bell:
    """One registered doorbell: its socket, token and slot, and the process that owns it."""

    __slots__ = ("armed", "futures", "loop", "pid", "reading", "slot", "sock", "token")

    def __init__(self, engine: Handle) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for _ in range(_BIND_TRIES):
                token = secrets.randbits(64) or 1
                try:
                    sock.bind(bell_name(token))
                    break
                except OSError as exc:  # a 1-in-2**64 clash with a live bell
                    if exc.errno != errno.EADDRINUSE:
                        raise
            else:
                raise OSError(errno.EADDRINUSE, "no free doorbell address")
            self.slot = engine.bell_register(token)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.token = token
        self.pid = os.getpid()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.futures: set[asyncio.Future[None]] = set()
        self.reading = False  # add_reader is in place on self.loop
        self.armed = False  # asyncio side: armed and no ring seen since

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Read every pending ring (each is one datagram; their bytes mean nothing)."""
        recv = self.sock.recv
        while True:
            try:
                recv(16)
            except (BlockingIOError, InterruptedError):
                return

    def arm(self, engine: Handle, *, held: bool = False) -> bool:
        """Drain, then arm: False when armed (the next add rings), True when the queue has
        items now (``held``: items held back) and was not armed."""
        self.drain()
        arm = engine.bell_arm_held if held else engine.bell_arm
        rc = arm(self.slot, self.token)
        if rc == E_INVAL:
            # A ring found no socket at our address (a process in another network
            # namespace rang, or the header was overwritten): take a slot again.
            self.slot = engine.bell_register(self.token)
            rc = arm(self.slot, self.token)
            if rc == E_INVAL:
                raise QueueError(f"queue {engine.name!r}: its doorbell cannot stay registered")
        return rc == READY

    def ring_self(self) -> None:
        """Make the descriptor readable now (the queue has items)."""
        with contextlib.suppress(BlockingIOError):  # full of rings: readable anyway
            self.sock.sendto(b"!", self.sock.getsockname())

    # ---- asyncio side (see aio.py); every call below runs on self.loop's thread ----------

    def on_ring(self) -> None:
        """add_reader callback: the bell rang. Every waiter looks again."""
        self.drain()
        self.armed = False
        self.wake_all()

    def wake_all(self) -> None:
        futures = self.futures
        self.futures = set()
        for fut in futures:
            if not fut.done():
                fut.set_result(None)
        self.stop_reading()

    def stop_reading(self) -> None:
        if self.reading and not self.futures:
            self.reading = False
            loop = self.loop
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self.sock.fileno())

    def _close_on_loop(self) -> None:
        self.wake_all()
        self.sock.close()

    # ---- lifecycle ---------------------------------------------------------------------

    def close(self, engine: Handle | None) -> None:
        """Unregister (only the process that registered does) and close the socket. Waiters
        on an event loop are woken (on the loop's thread) and find the queue closed."""
        if self.pid != os.getpid():  # inherited over fork: the parent's bell, not ours
            self.sock.close()
            return
        if engine is not None:
            engine.bell_unregister(self.slot, self.token)
        loop = self.loop
        if loop is None or not (self.reading or self.futures) or loop.is_closed():
            self.sock.close()
            return
        import asyncio  # noqa: PLC0415 - loaded already when a loop is in use

        running: Any = None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        if running is loop:
            self._close_on_loop()
        else:
            loop.call_soon_threadsafe(self._close_on_loop)
