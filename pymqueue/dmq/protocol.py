"""The asyncio I/O adapter of the DMQ core: :class:`DmqProtocol`.

Modelled on aioquic's ``QuicConnectionProtocol``: :class:`DmqProtocol` owns the UDP socket and
one timer (``loop.call_at(core.get_timer())``) and feeds :class:`~pymqueue.dmq.DmqCore` with
``loop.time()``; everything the protocol does is in the core. It hands every core event to a
callback; :class:`~pymqueue.dmq.Bus` (in :mod:`pymqueue.dmq.bus`) is the facade built on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from pymqueue.dmq._common import BusStats, log
from pymqueue.dmq.core import DmqCore
from pymqueue.dmq.events import DmqEvent

__all__ = ["DmqProtocol"]


class DmqProtocol(asyncio.DatagramProtocol):
    """Owns the UDP transport and the core's timer; the only code that does DMQ I/O."""

    def __init__(
        self,
        core: DmqCore,
        on_event: Callable[[DmqEvent], None],
        stats: BusStats | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """``on_event`` gets every core event; ``on_idle`` (optional) runs after each batch."""
        self.core = core
        self._on_event = on_event
        self._on_idle = on_idle
        self.stats = stats if stats is not None else BusStats()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = asyncio.Event()

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.stats.received += 1
        self.core.receive_datagram(data, (str(addr[0]), int(addr[1])), self._loop.time())
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

    def _arm(self) -> None:
        when = self.core.get_timer()
        if when == self._timer_at and self._timer is not None:
            return
        self._cancel_timer()
        if when is not None and self._transport is not None:
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
