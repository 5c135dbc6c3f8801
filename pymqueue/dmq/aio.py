"""The asyncio adapter of the DMQ core: :class:`DmqProtocol`, :class:`Bus` and :class:`BusThread`.

Modelled on aioquic's ``QuicConnectionProtocol``: :class:`DmqProtocol` owns the UDP socket and
one timer (``loop.call_at(core.get_timer())``) and feeds :class:`~pymqueue.dmq.DmqCore` with
``loop.time()``; everything the protocol does is in the core. :class:`Bus` is the facade::

    async with Bus("sip:127.0.0.1:5099", "sip:127.0.0.1:5091", ping_interval=5) as bus:
        bus.register("mqueue", lambda req: (200, "OK"))      # sync or async handler
        replies = await bus.broadcast("mqueue", b"hello")     # {NodeId: PeerReply | DmqTimeout}
        reply = await bus.send("mqueue", "sip:127.0.0.1:5091", b"hi")   # or DmqTimeout
        async for event in bus.events(): ...                 # NodeUp / NodeDown / …

A handler gets an :class:`~pymqueue.dmq.IncomingRequest` and returns (or, if async, resolves
to) a :class:`~pymqueue.dmq.PeerReply`, a ``(code, reason[, body[, content_type]])`` tuple, an
``int`` code, ``bytes``/``str`` (200 with that body) or None (200 OK, no body); a body
without a content type is sent as ``text/plain``. It runs once
per request: retransmissions are answered from the core's reply cache.

:class:`BusThread` runs a :class:`Bus` in a background thread with its own event loop and
offers blocking ``broadcast``/``send``/``nodes``/``stop`` for code that is not async; its
handlers run in that thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pymqueue.dmq.core import DmqConfig, DmqCore, IncomingRequest, PeerReply
from pymqueue.dmq.events import (
    DatagramDropped,
    DmqEvent,
    HandlerFailed,
    Joined,
    NodeDown,
    NodeStatusChanged,
    NodeUp,
    ReplyReceived,
    TransactionTimedOut,
)
from pymqueue.dmq.nodes import NodeId, NodeStatus
from pymqueue.errors import ConfigError, DmqError, DmqNodeNotFound, DmqProtocolError, DmqTimeout

__all__ = [
    "Bus",
    "BusHandler",
    "BusStats",
    "BusThread",
    "DmqProtocol",
    "EventStream",
    "NodeInfo",
    "ReplyLike",
    "Result",
]

log = logging.getLogger("pymqueue.dmq")

ReplyLike = PeerReply | tuple[Any, ...] | int | bytes | str | None
BusHandler = Callable[[IncomingRequest], ReplyLike | Awaitable[ReplyLike]]
Result = PeerReply | DmqTimeout
"""Outcome of a request to one node: its final reply, or the timeout (as an exception)."""
NodeRef = NodeId | str
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One entry of :meth:`Bus.nodes` (a snapshot)."""

    node: NodeId
    status: NodeStatus
    local: bool
    notification_address: bool


@dataclass(slots=True)
class BusStats:
    """Counters of one bus (datagrams in/out, drops, handler failures)."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    handler_failures: int = 0
    send_errors: int = 0


def to_reply(value: object) -> PeerReply:
    """Normalise what a handler returned into a :class:`PeerReply` (TypeError if unusable)."""
    if value is None:
        return PeerReply()
    if isinstance(value, PeerReply):
        return value
    if isinstance(value, bool):
        raise TypeError("a handler returned a bool; return a PeerReply or a status code")
    if isinstance(value, int):
        return PeerReply(value, "OK" if value == 200 else "Reply")
    if isinstance(value, bytes | bytearray | memoryview):
        return PeerReply(200, "OK", bytes(value), "text/plain" if value else None)
    if isinstance(value, str):
        return PeerReply(200, "OK", value.encode("utf-8"), "text/plain" if value else None)
    if isinstance(value, tuple) and 1 <= len(value) <= 4:
        padded: list[Any] = [*value, None, None, None][:4]
        code, reason, body, ctype = padded
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"reply code must be an int, got {code!r}")
        if isinstance(body, str):
            body = body.encode("utf-8")
        return PeerReply(
            code,
            reason if isinstance(reason, str) else ("OK" if code == 200 else "Reply"),
            bytes(body) if body is not None else b"",
            str(ctype) if ctype is not None else ("text/plain" if body else None),
        )
    raise TypeError(f"a handler returned {type(value).__name__}, not a reply")


def _node(ref: NodeRef) -> NodeId:
    if isinstance(ref, NodeId):
        return ref
    try:
        return NodeId.parse(ref if ref.startswith("sip:") else "sip:" + ref)
    except (DmqProtocolError, AttributeError) as exc:
        raise DmqNodeNotFound(f"bad node URI {ref!r}: {exc}") from None


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


class EventStream:
    """An async iterator of bus events (see :meth:`Bus.events`)."""

    def __init__(self, subscribers: list[asyncio.Queue[DmqEvent | None]], *, closed: bool) -> None:
        self._queue: asyncio.Queue[DmqEvent | None] = asyncio.Queue()
        self._subscribers = subscribers
        self._done = closed
        if not closed:
            subscribers.append(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> DmqEvent:
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        ev = await self._queue.get()
        if ev is None:
            self.close()
            raise StopAsyncIteration
        return ev

    def close(self) -> None:
        self._done = True
        with contextlib.suppress(ValueError):
            self._subscribers.remove(self._queue)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Bus:
    """A DMQ node on asyncio: join at :meth:`start`, leave at :meth:`stop`.

    ``notification_address`` is one node URI or a sequence of them (Kamailio's repeated
    ``notification_address``). ``bind`` overrides the address the socket binds to (default:
    the host and port of ``server_address``). Further keyword arguments go to
    :class:`~pymqueue.dmq.DmqConfig` (``t1``, ``t2``, ``max_nodes``, ``user_agent``,
    ``via_rport``, …); or pass a ready ``config=``.
    """

    def __init__(
        self,
        server_address: str | None = None,
        notification_address: str | Sequence[str] | None = None,
        *,
        ping_interval: float = 60.0,
        fr_timer: float = 30.0,
        notification_channel: str = "notification_peer",
        allow_networks: Sequence[str] | None = None,
        secret: bytes | str | None = None,
        bind: tuple[str, int] | None = None,
        config: DmqConfig | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            if server_address is None:
                raise ConfigError("server_address is required")
            if notification_address is None:
                addrs: tuple[str, ...] = ()
            elif isinstance(notification_address, str):
                addrs = (notification_address,)
            else:
                addrs = tuple(notification_address)
            if isinstance(secret, str):
                secret = secret.encode("utf-8")
            config = DmqConfig(
                server_address,
                notification_addresses=addrs,
                notification_channel=notification_channel,
                ping_interval=ping_interval,
                fr_timer=fr_timer,
                allow_networks=tuple(allow_networks) if allow_networks is not None else None,
                secret=secret,
                **options,
            )
        elif server_address is not None or notification_address is not None or options:
            raise ConfigError("give either config= or the individual settings, not both")
        self.config = config
        self.core = DmqCore(config)
        self.stats = BusStats()
        self._bind = bind
        self._handlers: dict[str, BusHandler] = {}
        self._protocol: DmqProtocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, asyncio.Future[Result]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribers: list[asyncio.Queue[DmqEvent | None]] = []
        self._listeners: list[Callable[[DmqEvent], object]] = []
        self._watches: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._joined: asyncio.Event | None = None
        self._state = "new"

    # -- configuration ---------------------------------------------------------------------
    @property
    def local(self) -> NodeId:
        return self.config.local

    def register(self, channel: str, handler: BusHandler) -> None:
        """Serve ``channel`` with ``handler`` (sync or async; see the module docstring)."""
        self.core.register_peer(channel, self._wrap(channel, handler))
        self._handlers[channel] = handler

    def unregister(self, channel: str) -> None:
        self.core.unregister_peer(channel)
        self._handlers.pop(channel, None)

    def add_listener(self, callback: Callable[[DmqEvent], object]) -> None:
        """Call ``callback(event)`` (in the loop) for every membership event:
        :class:`NodeUp`, :class:`NodeDown`, :class:`NodeStatusChanged`, :class:`Joined`."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[DmqEvent], object]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> Bus:
        """Bind the socket and join (send our line to the notification addresses)."""
        if self._state != "new":
            if self._state == "running":
                return self
            raise DmqError("a bus cannot be restarted; create a new one")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._joined = asyncio.Event()
        local_addr = self._bind or self.config.local.address
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: DmqProtocol(self.core, self._dispatch, self.stats, self._notify_changed),
                local_addr=local_addr,
            )
        except OSError as exc:
            self._state = "closed"
            raise DmqError(f"cannot bind {local_addr[0]}:{local_addr[1]}: {exc}") from exc
        self._protocol = protocol
        self._state = "running"
        self.core.start(loop.time())
        protocol.transmit()
        return self

    async def stop(self, timeout: float | None = None) -> None:
        """Leave (our line ``status=disabled`` to every node), wait for our pending
        transactions until ``timeout`` (default ``min(fr_timer, 5)`` s), then close.
        Requests still waiting then fail with :class:`DmqError`. Idempotent."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "leaving"
        protocol = self._protocol
        assert protocol is not None
        self.core.leave(protocol.now)
        protocol.transmit()
        wait = min(self.config.fr_timer, 5.0) if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            await self._until(lambda: self.core.pending_transactions == 0, wait)
        self._close()

    def abort(self) -> None:
        """Close at once without leaving (peers will detect us as dead)."""
        self._close()

    def _close(self) -> None:
        self._state = "closed"
        if self._protocol is not None:
            self._protocol.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(DmqError("the bus was stopped"))
        self._waiters.clear()
        for task in list(self._tasks):
            task.cancel()
        for q in self._subscribers:
            q.put_nowait(None)
        for _, w in self._watches:
            if not w.done():
                w.set_exception(DmqError("the bus was stopped"))
        self._watches.clear()

    @property
    def running(self) -> bool:
        return self._state == "running"

    async def __aenter__(self) -> Bus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- data ------------------------------------------------------------------------------
    def _require(self) -> DmqProtocol:
        if self._state != "running" or self._protocol is None:
            raise DmqError("the bus is not running")
        return self._protocol

    async def broadcast(
        self, channel: str, body: bytes | str, content_type: str | None = "text/plain"
    ) -> dict[NodeId, Result]:
        """Send ``body`` to every ``active`` node; wait for all replies or timeouts.

        Returns ``{node: PeerReply | DmqTimeout}`` (empty if no node is active).
        """
        protocol = self._require()
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        targets = [
            n for n in self.core.nodes.peers(active_only=True) if n.transport in (None, "udp")
        ]
        tids = self.core.broadcast(channel, data, content_type, protocol.now)
        futs = [self._waiter(t) for t in tids]
        protocol.transmit()
        results = await asyncio.gather(*futs)
        return dict(zip(targets, results, strict=True))

    async def send(
        self,
        channel: str,
        node: NodeRef,
        body: bytes | str,
        content_type: str | None = "text/plain",
    ) -> PeerReply:
        """Send ``body`` to one node of the list (any status), like ``dmq_send_message``.

        Returns its final reply (any code); raises :class:`DmqTimeout` without one and
        :class:`DmqNodeNotFound` if the node is not in the list.
        """
        protocol = self._require()
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        tid = self.core.send(channel, _node(node), data, content_type, protocol.now)
        fut = self._waiter(tid)
        protocol.transmit()
        result = await fut
        if isinstance(result, DmqTimeout):
            raise result
        return result

    def _waiter(self, tid: int) -> asyncio.Future[Result]:
        assert self._loop is not None
        fut: asyncio.Future[Result] = self._loop.create_future()
        self._waiters[tid] = fut
        return fut

    # -- membership ------------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        """The node list, newest first, including ourselves (``local``)."""
        return [NodeInfo(n.id, n.status, n.local, n.notification_address) for n in self.core.nodes]

    def status(self, node: NodeRef) -> NodeStatus | None:
        """Status of ``node``, None if not in the list."""
        return self.core.nodes.status(_node(node))

    def remove_node(self, node: NodeRef) -> None:
        """Forget a node (``dmq.remove``); it comes back with the next list naming it."""
        protocol = self._require()
        self.core.remove_node(_node(node))
        protocol.transmit()

    async def wait_joined(self, timeout: float | None = None) -> None:
        """Until the first notification exchange succeeded (:class:`DmqTimeout` after
        ``timeout``)."""
        self._require()
        assert self._joined is not None
        try:
            async with asyncio.timeout(timeout):
                await self._joined.wait()
        except TimeoutError:
            raise DmqTimeout(f"not joined within {timeout}s") from None

    async def wait_status(
        self,
        node: NodeRef,
        status: NodeStatus | Iterable[NodeStatus | None] | None,
        timeout: float | None = None,
    ) -> NodeStatus | None:
        """Wait until ``node`` has ``status`` (None = absent; or one of several);
        :class:`DmqTimeout` after ``timeout``."""
        nid = _node(node)
        wanted: set[NodeStatus | None] = (
            {status} if status is None or isinstance(status, NodeStatus) else set(status)
        )
        self._require()
        try:
            await self._until(lambda: self.core.nodes.status(nid) in wanted, timeout)
        except TimeoutError:
            raise DmqTimeout(
                f"{nid} is {self.core.nodes.status(nid)}, not {sorted(map(str, wanted))} "
                f"after {timeout}s"
            ) from None
        return self.core.nodes.status(nid)

    def events(self) -> EventStream:
        """Membership events from now on (:class:`NodeUp`, :class:`NodeDown`,
        :class:`NodeStatusChanged`, :class:`Joined`), as an async iterator that ends when the
        bus stops. Subscribed at this call (not at the first ``anext``); ``close()`` it (or
        leave ``async with``) to unsubscribe."""
        return EventStream(self._subscribers, closed=self._state == "closed")

    # -- internals -------------------------------------------------------------------------
    def _dispatch(self, event: DmqEvent) -> None:
        if isinstance(event, ReplyReceived | TransactionTimedOut):
            fut = self._waiters.pop(event.transaction_id, None)
            if fut is not None and not fut.done():
                if isinstance(event, ReplyReceived):
                    fut.set_result(
                        PeerReply(event.code, event.reason, event.body, event.content_type)
                    )
                else:
                    fut.set_result(event.exception())
            return
        if isinstance(event, DatagramDropped):
            self.stats.dropped += 1
            log.debug("dmq dropped datagram from %s: %s", event.address, event.reason)
            return
        if isinstance(event, HandlerFailed):
            self.stats.handler_failures += 1
            log.warning("dmq handler of %r failed: %r", event.channel, event.error)
            return
        if isinstance(event, Joined) and self._joined is not None:
            self._joined.set()
        if isinstance(event, NodeUp | NodeDown | NodeStatusChanged | Joined):
            for q in self._subscribers:
                q.put_nowait(event)
            for cb in list(self._listeners):
                try:
                    cb(event)
                except Exception:
                    log.exception("dmq listener failed")

    async def _until(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``predicate()`` is true (checked after every core event);
        TimeoutError after ``timeout``."""
        if predicate():
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        entry = (predicate, fut)
        self._watches.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
        finally:
            with contextlib.suppress(ValueError):
                self._watches.remove(entry)

    def _notify_changed(self) -> None:
        for predicate, fut in list(self._watches):
            if not fut.done() and predicate():
                fut.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wrap(
        self, channel: str, handler: BusHandler
    ) -> Callable[[IncomingRequest], PeerReply | None]:
        def core_handler(req: IncomingRequest) -> PeerReply | None:
            value = handler(req)
            if inspect.isawaitable(value):
                self._spawn(self._answer_later(channel, req.id, value))
                return None  # the core keeps the request pending (retransmits get nothing)
            return to_reply(value)

        return core_handler

    async def _answer_later(self, channel: str, rid: int, value: Awaitable[ReplyLike]) -> None:
        try:
            reply = to_reply(await value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.handler_failures += 1
            log.warning("dmq handler of %r failed: %r", channel, exc)
            reply = PeerReply(500, "Server Internal Error")
        if self._protocol is not None and self._state != "closed":
            self.core.respond(rid, reply, self._protocol.now)
            self._protocol.transmit()

    def __repr__(self) -> str:
        active = sum(1 for n in self.core.nodes if not n.local and n.status is NodeStatus.ACTIVE)
        return (
            f"<pymqueue.dmq.Bus {self.config.server_address} {self._state} "
            f"nodes={len(self.core.nodes)} active={active} at {id(self):#x}>"
        )


class BusThread:
    """A :class:`Bus` running in a background thread with its own event loop.

    Same arguments as :class:`Bus`. :meth:`start` joins and returns once the socket is bound;
    the blocking methods take a ``timeout`` (None: wait for the bus's own timeouts)::

        with BusThread("sip:127.0.0.1:5099", "sip:127.0.0.1:5091", ping_interval=5) as bus:
            bus.register("mqueue", handler)       # runs in the bus thread
            bus.broadcast("mqueue", b"x")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.bus = Bus(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._stop_timeout: float | None = None

    @property
    def local(self) -> NodeId:
        return self.bus.local

    def register(self, channel: str, handler: BusHandler) -> None:
        if self._loop is None:
            self.bus.register(channel, handler)
        else:
            self._call(lambda: self.bus.register(channel, handler))

    def add_listener(self, callback: Callable[[DmqEvent], object]) -> None:
        """``callback(event)`` runs in the bus thread."""
        if self._loop is None:
            self.bus.add_listener(callback)
        else:
            self._call(lambda: self.bus.add_listener(callback))

    def start(self, timeout: float = 10.0) -> BusThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._run, name=f"pymqueue-dmq {self.bus.config.server_address}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DmqTimeout(f"the bus thread did not start within {timeout}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.bus.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.bus.stop(self._stop_timeout)

        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - main() catches the start errors
            log.exception("dmq bus thread crashed")
            self._error = exc
            self._ready.set()

    def _submit(self, coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise DmqError("the bus thread is not running")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        done, _ = concurrent.futures.wait([fut], timeout)
        if not done:
            fut.cancel()
            raise DmqTimeout(f"no result within {timeout}s")
        return fut.result()

    def _call(self, func: Callable[[], _T], timeout: float | None = 10.0) -> _T:
        async def run() -> _T:
            return func()

        return self._submit(run(), timeout)

    def broadcast(
        self,
        channel: str,
        body: bytes | str,
        content_type: str | None = "text/plain",
        timeout: float | None = None,
    ) -> dict[NodeId, Result]:
        return self._submit(self.bus.broadcast(channel, body, content_type), timeout)

    def send(
        self,
        channel: str,
        node: NodeRef,
        body: bytes | str,
        content_type: str | None = "text/plain",
        timeout: float | None = None,
    ) -> PeerReply:
        return self._submit(self.bus.send(channel, node, body, content_type), timeout)

    def nodes(self) -> list[NodeInfo]:
        return self._call(self.bus.nodes)

    def status(self, node: NodeRef) -> NodeStatus | None:
        return self._call(lambda: self.bus.status(node))

    def remove_node(self, node: NodeRef) -> None:
        self._call(lambda: self.bus.remove_node(node))

    def wait_status(
        self,
        node: NodeRef,
        status: NodeStatus | Iterable[NodeStatus | None] | None,
        timeout: float | None = None,
    ) -> NodeStatus | None:
        return self._submit(self.bus.wait_status(node, status, timeout), None)

    def wait_joined(self, timeout: float | None = None) -> None:
        self._submit(self.bus.wait_joined(timeout), None)

    def stop(self, timeout: float | None = None) -> None:
        """Leave, wait for pending transactions (see :meth:`Bus.stop`), stop the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        self._stop_timeout = timeout
        if loop is not None and stop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    def __enter__(self) -> BusThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<pymqueue.dmq.BusThread {self.bus!r}>"
