"""The asyncio I/O adapter of the DMQ core: :class:`DmqProtocol`.

Modelled on aioquic's ``QuicConnectionProtocol``: :class:`DmqProtocol` owns the UDP socket and
one timer (``loop.call_at(core.get_timer())``) and feeds :class:`~pymqueue.dmq.DmqCore` with
``loop.time()``; everything the protocol does is in the core. It hands every core event to a
callback; :class:`~pymqueue.dmq.Bus` (in :mod:`pymqueue.dmq.bus`) is the facade built on it.

Under load (see ``docs/dmq.md``, "Under load"):

* :func:`open_socket` makes the UDP socket with a receive buffer sized for bursts
  (``SO_RCVBUF``, :data:`DEFAULT_RCVBUF`; the kernel caps it at ``net.core.rmem_max`` and
  reports the doubled figure it grants, kept in :attr:`BusStats.rcvbuf`);
* asyncio reads one datagram per wake-up; given that socket, :class:`DmqProtocol` drains it
  (up to :data:`MAX_BATCH` datagrams, non-blocking ``recvfrom``) and feeds them all to the
  core before it sends, dispatches and re-arms its timer once for the batch;
* requests started by coroutines (:meth:`DmqProtocol.transmit_soon`) are sent together at the
  end of the loop iteration, so many senders woken at once cost one transmit;
* the timer is moved only when the core wants an earlier one; a timer that fires early
  finds nothing due and is re-armed (so finishing the head transaction costs no timer churn).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from pymqueue.dmq._common import BusStats, log
from pymqueue.dmq.core import DmqCore
from pymqueue.dmq.events import DmqEvent

__all__ = ["DEFAULT_RCVBUF", "MAX_BATCH", "DmqProtocol", "open_socket"]

DEFAULT_RCVBUF = 4 * 1024 * 1024
"""Receive buffer asked for (bytes): ~1 000 in-flight 500-byte requests cost ~2.5 MB of kernel
memory on loopback (each datagram is charged its buffer's true size, not its length)."""
MAX_BATCH = 256
"""Most datagrams read and fed to the core per socket wake-up before sending."""
_MAX_DATAGRAM = 65535


def open_socket(
    local_addr: tuple[str, int], rcvbuf: int | None = DEFAULT_RCVBUF
) -> tuple[socket.socket, int]:
    """A bound, non-blocking UDP socket and the receive buffer the kernel granted (bytes).

    ``rcvbuf`` None keeps the system default (``net.core.rmem_default``). Raises OSError.
    """
    host, port = local_addr
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        if rcvbuf is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            except OSError as exc:  # pragma: no cover - Linux caps instead of failing
                log.debug("dmq SO_RCVBUF %d refused: %s", rcvbuf, exc)
        sock.bind(sockaddr)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except BaseException:
        sock.close()
        raise
    if rcvbuf is not None and granted < rcvbuf:
        log.debug("dmq receive buffer: asked %d bytes, kernel granted %d", rcvbuf, granted)
    return sock, granted


class DmqProtocol(asyncio.DatagramProtocol):
    """Owns the UDP transport and the core's timer; the only code that does DMQ I/O."""

    def __init__(
        self,
        core: DmqCore,
        on_event: Callable[[DmqEvent], None],
        stats: BusStats | None = None,
        on_idle: Callable[[], None] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """``on_event`` gets every core event; ``on_idle`` (optional) runs after each batch.
        ``sock``, the socket given to the transport (non-blocking), lets the protocol drain
        it per wake-up; without it, one datagram is processed per wake-up."""
        self.core = core
        self._sock = sock
        self._on_event = on_event
        self._on_idle = on_idle
        self.stats = stats if stats is not None else BusStats()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._soon = False
        self.closed = asyncio.Event()

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        core = self.core
        now = self._loop.time()
        receive = core.receive_datagram  # it normalises the address itself
        receive(data, addr, now)
        n = 1
        sock = self._sock
        if sock is not None:
            recvfrom = sock.recvfrom
            while n < MAX_BATCH:
                try:
                    data, addr = recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self.error_received(exc)
                    break
                n += 1
                receive(data, addr, now)
        stats = self.stats
        stats.received += n
        stats.batches += 1
        stats.max_batch = max(stats.max_batch, n)
        self.transmit()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable & co: ignored, as Kamailio does (the transaction times out)
        log.debug("dmq socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        self.closed.set()

    # -- driving the core
    @property
    def now(self) -> float:
        return self._loop.time()

    def transmit(self) -> None:
        """Send what the core queued, dispatch its events and re-arm the timer."""
        core = self.core
        transport = self._transport
        for data, addr in core.datagrams_to_send(self._loop.time()):
            if transport is None or transport.is_closing():
                break
            try:
                transport.sendto(data, addr)
                self.stats.sent += 1
            except OSError as exc:  # pragma: no cover - sendto on UDP rarely raises
                self.stats.send_errors += 1
                log.debug("dmq sendto %s failed: %s", addr, exc)
        while (event := core.next_event()) is not None:
            try:
                self._on_event(event)
            except Exception:  # pragma: no cover - the bus's dispatcher does not raise
                log.exception("dmq event dispatch failed")
        if self._on_idle is not None:
            self._on_idle()
        self._arm()

    def transmit_soon(self) -> None:
        """:meth:`transmit` once at the end of this loop iteration (coalesces callers)."""
        if not self._soon:
            self._soon = True
            self._loop.call_soon(self._transmit_soon)

    def _transmit_soon(self) -> None:
        self._soon = False
        self.transmit()

    def _arm(self) -> None:
        when = self.core.get_timer()
        if when is None or self._transport is None:
            return  # an armed timer may stay: firing with nothing due is harmless
        at = self._timer_at
        if self._timer is not None and at is not None and at <= when:
            return  # fires no later than needed; re-armed then
        self._cancel_timer()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self.transmit()

    def close(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()
