"""The asyncio facade of the DMQ core: :class:`Bus`, its :class:`EventStream` and :class:`NodeInfo`.

:class:`Bus` binds a :class:`~pymqueue.dmq.DmqProtocol` (the socket and the timer) to a
:class:`~pymqueue.dmq.DmqCore` and turns the core's events into awaitable results::

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

Bounded: an :class:`EventStream` queues at most ``maxsize`` events (oldest dropped, counted);
at most ``max_deferred`` (a :class:`~pymqueue.dmq.DmqConfig` setting, default 4096) async
handlers run at once — a request arriving beyond that is answered ``503 Service Unavailable``
without running its handler (counted in :attr:`BusStats.overloaded`); the core bounds its
reply cache and deferred requests (``docs/dmq.md``, "Under load").

For code that is not async, :class:`~pymqueue.dmq.BusThread` (in :mod:`pymqueue.dmq.thread`)
runs a :class:`Bus` in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymqueue.dmq._common import BusStats, NodeRef, log, node_id
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
from pymqueue.dmq.protocol import DEFAULT_RCVBUF, DmqProtocol, open_socket
from pymqueue.errors import ConfigError, DmqError, DmqTimeout

__all__ = [
    "EVENT_STREAM_MAXSIZE",
    "Bus",
    "BusHandler",
    "EventStream",
    "NodeInfo",
    "ReplyLike",
    "Result",
    "to_reply",
]

ReplyLike = PeerReply | tuple[Any, ...] | int | bytes | str | None
BusHandler = Callable[[IncomingRequest], ReplyLike | Awaitable[ReplyLike]]
Result = PeerReply | DmqTimeout
"""Outcome of a request to one node: its final reply, or the timeout (as an exception)."""

EVENT_STREAM_MAXSIZE = 1024
"""Default bound of an :class:`EventStream`'s queue (see there for what happens when full)."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One entry of :meth:`Bus.nodes` (a snapshot)."""

    node: NodeId
    status: NodeStatus
    local: bool
    notification_address: bool


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


RECEIVE_BUFFER = 4 << 20
"""SO_RCVBUF asked for the bus socket (the kernel caps it at ``net.core.rmem_max``): a
Kamailio node answers an htable sync request with all its ~60 kB messages at once, which
overflows the usual 208 kB default and costs a retransmission round per buffer-full."""


def _grow_receive_buffer(protocol: DmqProtocol) -> None:
    sock = protocol._transport.get_extra_info("socket") if protocol._transport else None
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class EventStream:
    """An async iterator of bus events (see :meth:`Bus.events`).

    Its queue holds at most ``maxsize`` events. A consumer that falls that far behind loses
    the **oldest** queued events: each new event then pushes the oldest one out and adds one
    to :attr:`dropped` (a debug line is logged at the first drop). The bus never blocks on a
    slow consumer, and the end of the stream (the bus stopping) is always delivered.
    """

    def __init__(
        self,
        subscribers: list[EventStream],
        *,
        closed: bool,
        maxsize: int = EVENT_STREAM_MAXSIZE,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        """Events lost because the queue was full (oldest first)."""
        self._queue: asyncio.Queue[DmqEvent | None] = asyncio.Queue(maxsize)
        self._subscribers = subscribers
        self._done = closed
        if not closed:
            subscribers.append(self)

    def _put(self, item: DmqEvent | None) -> None:
        """Queue ``item`` (None = end of stream) without blocking; drop the oldest if full."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1:
                log.debug("dmq event stream full (%d): dropping the oldest events", self.maxsize)
        self._queue.put_nowait(item)

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
            self._subscribers.remove(self)

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
    ``via_rport``, ``max_deferred``, ``reply_cache_size``, …); or pass a ready ``config=``.
    ``rcvbuf`` is the socket receive buffer asked for (bytes; None = system default); what
    the kernel granted is in :attr:`stats` (``rcvbuf``).
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
        rcvbuf: int | None = DEFAULT_RCVBUF,
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
        self._rcvbuf = rcvbuf
        self._handlers: dict[str, BusHandler] = {}
        self._protocol: DmqProtocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, asyncio.Future[Result]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribers: list[EventStream] = []
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
            sock, self.stats.rcvbuf = open_socket(local_addr, self._rcvbuf)
        except OSError as exc:
            self._state = "closed"
            raise DmqError(f"cannot bind {local_addr[0]}:{local_addr[1]}: {exc}") from exc
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: DmqProtocol(
                    self.core, self._dispatch, self.stats, self._notify_changed, sock=sock
                ),
                sock=sock,
            )
        except BaseException:
            sock.close()
            self._state = "closed"
            raise
        self._protocol = protocol
        _grow_receive_buffer(protocol)
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
        for stream in self._subscribers:
            stream._put(None)
        for _, w in self._watches:
            if not w.done():
                w.set_exception(DmqError("the bus was stopped"))
        self._watches.clear()

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the bus runs in (None before :meth:`start`)."""
        return self._loop

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
        protocol.transmit_soon()
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
        tid = self.core.send(channel, node_id(node), data, content_type, protocol.now)
        fut = self._waiter(tid)
        protocol.transmit_soon()
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
        return self.core.nodes.status(node_id(node))

    def remove_node(self, node: NodeRef) -> None:
        """Forget a node (``dmq.remove``); it comes back with the next list naming it."""
        protocol = self._require()
        self.core.remove_node(node_id(node))
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
        nid = node_id(node)
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

    def events(self, maxsize: int = EVENT_STREAM_MAXSIZE) -> EventStream:
        """Membership events from now on (:class:`NodeUp`, :class:`NodeDown`,
        :class:`NodeStatusChanged`, :class:`Joined`), as an async iterator that ends when the
        bus stops. Subscribed at this call (not at the first ``anext``); ``close()`` it (or
        leave ``async with``) to unsubscribe. It queues at most ``maxsize`` events; a consumer
        further behind loses the oldest ones (counted in :attr:`EventStream.dropped`)."""
        return EventStream(self._subscribers, closed=self._state == "closed", maxsize=maxsize)

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
            for stream in self._subscribers:
                stream._put(event)
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
                if len(self._tasks) >= self.config.max_deferred:
                    if inspect.iscoroutine(value):
                        value.close()  # never started: nothing of it ran
                    self.stats.overloaded += 1
                    return PeerReply(503, "Service Unavailable")
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
            self._protocol.transmit_soon()

    def __repr__(self) -> str:
        active = sum(1 for n in self.core.nodes if not n.local and n.status is NodeStatus.ACTIVE)
        return (
            f"<pymqueue.dmq.Bus {self.config.server_address} {self._state} "
            f"nodes={len(self.core.nodes)} active={active} at {id(self):#x}>"
        )
