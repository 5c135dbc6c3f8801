"""The sans-I/O DMQ node: codec + node list + transactions, driven by its owner.

Modelled on aioquic's ``QuicConnection``: the core never touches a socket or a clock. Its
owner (the asyncio adapter) does four things::

    core = DmqCore(DmqConfig("sip:127.0.0.1:5099", notification_addresses=("sip:127.0.0.1:5091",)))
    core.register_peer("mqueue", handler)          # handler(IncomingRequest) -> PeerReply | None
    core.start(now)
    # on every datagram:      core.receive_datagram(data, addr, now)
    # when core.get_timer():  core.handle_timer(now)
    # after each call:        for data, addr in core.datagrams_to_send(now): sock.sendto(data, addr)
    #                         while (ev := core.next_event()) is not None: dispatch(ev)

Membership follows Kamailio 5.6.3 (spec §3): join with ``Max-Forwards: 2``, merge of received
lists, re-broadcast of a changed list to active nodes, a ping (our list to every node) every
``ping_interval``, 200 → ``active``, timeout → ``disabled`` then deleted (a notification
address → ``pending``, kept), leave with our own line ``status=disabled``.

Data: :meth:`DmqCore.broadcast` (to every active node) and :meth:`DmqCore.send` (to one node
of the list) start one client transaction per node and return its id; the outcome arrives as
:class:`ReplyReceived` or :class:`TransactionTimedOut`. Requests for a channel are handed to
its registered handler once (retransmissions are answered from the reply cache); a handler
returns a :class:`PeerReply`, or None to answer later with :meth:`DmqCore.respond`. Unknown
channel → ``404 User Not Found``, as in Kamailio.

Security (optional): ``allow_networks`` drops datagrams from other source addresses;
``secret`` signs every message we send (HMAC-SHA256 in ``X-Pymqueue-Signature``) and drops
every message without a valid signature — a bus of pymqueue nodes only.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from pymqueue.dmq import message as _msg
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
from pymqueue.dmq.message import DmqRequest, DmqResponse
from pymqueue.dmq.nodes import NodeChange, NodeId, NodeList, NodeStatus, parse_node_list
from pymqueue.dmq.transaction import (
    DEFAULT_FR_TIMER,
    DEFAULT_T1,
    DEFAULT_T2,
    PENDING,
    CacheKey,
    ClientTransaction,
    ClientTransactions,
    ReplyCache,
    TransactionKind,
)
from pymqueue.errors import ConfigError, DmqError, DmqNodeNotFound, DmqProtocolError

__all__ = [
    "MIN_PING_INTERVAL",
    "DmqConfig",
    "DmqCore",
    "Handler",
    "IncomingRequest",
    "PeerReply",
]

MIN_PING_INTERVAL = 5.0
Address = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerReply(NamedTuple):
    """What a channel handler answers: a final SIP status, optionally with a body."""

    code: int = 200
    reason: str = "OK"
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A KDMQ request for a registered channel, as given to its handler.

    ``id`` names it for :meth:`DmqCore.respond` when the handler defers its answer.
    ``node`` is the sender's node identity (From host:port) and ``known`` whether that node
    is in our list; ``address`` is where the datagram came from.
    """

    id: int
    channel: str
    node: NodeId
    known: bool
    address: Address
    body: bytes
    content_type: str | None
    max_forwards: int | None
    message: DmqRequest


Handler = Callable[[IncomingRequest], PeerReply | None]


@dataclass(frozen=True)
class DmqConfig:
    """Settings of one DMQ node (Kamailio's dmq modparams where they exist)."""

    server_address: str
    """Our node URI, ``sip:IP:PORT`` (IP literal, explicit port); also the UDP bind address."""
    notification_addresses: tuple[str, ...] = ()
    """Nodes contacted at start-up (``notification_address``); IP literals."""
    notification_channel: str = "notification_peer"
    ping_interval: float = 60.0
    """Seconds between pings (≥ 5, Kamailio's minimum)."""
    fr_timer: float = DEFAULT_FR_TIMER
    """Seconds before an unanswered request times out (tm's ``fr_timer``)."""
    t1: float = DEFAULT_T1
    t2: float = DEFAULT_T2
    reply_cache_ttl: float | None = None
    """How long replies are kept for retransmissions (default ``fr_timer + t2``)."""
    reply_cache_size: int = 16384
    """Most replies kept for retransmissions; the oldest go first (counted in
    :attr:`DmqCore.reply_cache_evicted`)."""
    max_deferred: int = 4096
    """Most requests whose handler answers later (:meth:`DmqCore.respond`) at once; beyond,
    the oldest is forgotten (counted in :attr:`DmqCore.deferred_dropped`)."""
    max_nodes: int = 1024
    """Cap on the node list; lines naming further new nodes are ignored."""
    allow_networks: tuple[str | Network, ...] | None = None
    """If set, datagrams from other source addresses are dropped, and node lines naming
    addresses outside these networks are ignored (we never send to them)."""
    secret: bytes | None = None
    """If set, every message is signed and every unsigned or badly signed one dropped."""
    user_agent: str = "pymqueue"
    via_rport: bool = False
    """Add ``;rport`` to our Via (replies then come back to the source port)."""
    local: NodeId = field(init=False)
    notification_nodes: tuple[NodeId, ...] = field(init=False)
    networks: tuple[Network, ...] | None = field(init=False)

    def __post_init__(self) -> None:
        def node(text: str, what: str) -> NodeId:
            try:
                n = NodeId.parse(text)
            except (DmqProtocolError, TypeError) as exc:
                raise ConfigError(f"bad {what} {text!r}: {exc}") from None
            if n.transport not in (None, "udp"):
                raise ConfigError(f"{what} {text!r}: only UDP is supported")
            return n

        local = node(self.server_address, "server_address")
        if not local.port:
            raise ConfigError(f"server_address {self.server_address!r} needs a port")
        object.__setattr__(self, "local", local)
        object.__setattr__(
            self,
            "notification_nodes",
            tuple(node(a, "notification_address") for a in self.notification_addresses),
        )
        try:
            _msg.build_request(
                channel=self.notification_channel,
                target=local.uri,
                local=local.uri,
                body=b"",
                content_type=None,
                user_agent=self.user_agent,
            )
        except DmqProtocolError as exc:
            raise ConfigError(f"bad channel name or user agent: {exc}") from None
        if not self.ping_interval >= MIN_PING_INTERVAL:
            raise ConfigError(f"ping_interval must be >= {MIN_PING_INTERVAL}")
        if not (0 < self.t1 <= self.t2 and self.fr_timer > 0):
            raise ConfigError("timers must satisfy 0 < t1 <= t2 and fr_timer > 0")
        if self.reply_cache_ttl is not None and not self.reply_cache_ttl > 0:
            raise ConfigError("reply_cache_ttl must be > 0")
        if self.max_nodes < 1:
            raise ConfigError("max_nodes must be >= 1")
        if self.reply_cache_size < 1:
            raise ConfigError("reply_cache_size must be >= 1")
        if self.max_deferred < 1:
            raise ConfigError("max_deferred must be >= 1")
        if self.secret is not None and (not isinstance(self.secret, bytes) or not self.secret):
            raise ConfigError("secret must be non-empty bytes")
        nets: tuple[Network, ...] | None = None
        if self.allow_networks is not None:
            try:
                nets = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_networks)
            except ValueError as exc:
                raise ConfigError(f"bad allow_networks: {exc}") from None
        object.__setattr__(self, "networks", nets)


@dataclass(slots=True)
class _Deferred:
    key: CacheKey
    request: DmqRequest
    address: Address
    deadline: float


class DmqCore:
    """One DMQ node, sans-I/O. Not thread-safe: drive it from one thread (the event loop).

    No call scans the pending work: client transactions are timed by a heap
    (:class:`~pymqueue.dmq.transaction.ClientTransactions`), the reply cache and the deferred
    requests are kept in expiry order (each entry lives the same ``ttl``, ``now`` never goes
    back), so :meth:`get_timer` is O(1) and :meth:`handle_timer` touches only what is due.
    Memory is bounded by ``reply_cache_size`` and ``max_deferred`` (the oldest entry goes,
    counted); our own pending requests are as many as the owner starts.
    """

    def __init__(self, config: DmqConfig) -> None:
        self.config = config
        nets = config.networks
        self.nodes = NodeList(
            config.local,
            config.notification_nodes,
            max_nodes=config.max_nodes,
            accept=None if nets is None else lambda n: _allowed(n.address[0], nets),
        )
        self._local_uri = config.local.uri
        self._call_id_host = config.local.host.strip("[]")
        self._txns = ClientTransactions(config.t1, config.t2, config.fr_timer)
        ttl = config.reply_cache_ttl or config.fr_timer + config.t2
        self._cache = ReplyCache(ttl, config.reply_cache_size)
        self._peers: dict[str, Handler] = {}
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[DmqEvent] = deque()
        self._ids = itertools.count(1)
        # To tags of our replies: a random per-node prefix and a counter (unique, and no
        # system call per reply)
        self._tag_prefix = secrets.token_hex(4)
        self._tags = itertools.count()
        # insertion order = deadline order (every deadline is now + ttl)
        self._deferred: OrderedDict[int, _Deferred] = OrderedDict()
        self.deferred_dropped = 0
        """Deferred requests forgotten (unanswered) because ``max_deferred`` were waiting."""
        self._next_ping: float | None = None
        self._joined = False
        self._started = False
        self._left = False

    # ------------------------------------------------------------------ owner's interface
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Take the datagrams to send, ``(payload, (ip, port))``, oldest first."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> DmqEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def pending_transactions(self) -> int:
        """Requests of ours still waiting for a final reply (e.g. wait for 0 after leave)."""
        return len(self._txns)

    @property
    def deferred_requests(self) -> int:
        """Requests handed to a handler that answers later, not answered yet."""
        return len(self._deferred)

    @property
    def reply_cache_entries(self) -> int:
        return len(self._cache)

    @property
    def reply_cache_evicted(self) -> int:
        """Replies pushed out of the cache by ``reply_cache_size`` before their time."""
        return self._cache.evicted

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None: nothing scheduled). O(1)."""
        when = self._next_ping
        for t in (self._txns.get_timer(), self._cache.get_timer()):
            if t is not None and (when is None or t < when):
                when = t
        if self._deferred:
            t = next(iter(self._deferred.values())).deadline
            if when is None or t < when:
                when = t
        return when

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: pings, retransmissions, timeouts, cache expiry.

        A ping due at the same instant as a timeout is sent first, so it still carries the
        status the node had before the timeout (as on a real Kamailio, where the 408 comes a
        little after the ping; spec §3.8: disabled at ~35 s, deleted at ~70 s).
        """
        if self._next_ping is not None and now >= self._next_ping:
            nxt = self._next_ping + self.config.ping_interval
            self._next_ping = nxt if nxt > now else now + self.config.ping_interval
            self._ping(now)
        resend, expired = self._txns.handle_timer(now)
        self._out.extend(resend)
        for txn in expired:
            self._finish(txn, 408, "Request Timeout", None, now)
        self._cache.expire(now)
        deferred = self._deferred
        while deferred and next(iter(deferred.values())).deadline <= now:
            deferred.popitem(last=False)

    # ------------------------------------------------------------------ membership
    def start(self, now: float) -> None:
        """Join: notification addresses become ``pending``, each gets our line with MF 2."""
        if self._started:
            return
        self._started = True
        self._changes(self.nodes.add_notification_addresses())
        self._join(self.nodes.peers(), now)
        self._next_ping = now + self.config.ping_interval

    def leave(self, now: float) -> list[int]:
        """Announce our own line ``status=disabled`` (MF 1) to every node; stop pinging."""
        self._left = True
        self._next_ping = None
        body = self.nodes.body(NodeStatus.DISABLED)
        return [self._notify(n, body, 1, now) for n in self._udp(self.nodes.peers())]

    def remove_node(self, node: NodeId) -> None:
        """Forget a node (Kamailio's ``dmq.remove``); it comes back with a list naming it."""
        self._changes(self.nodes.remove(node))

    def _join(self, targets: Iterable[NodeId], now: float) -> None:
        body = self.nodes.body()
        for node in self._udp(targets):
            self._notify(node, body, 2, now)

    def _ping(self, now: float) -> None:
        peers = self.nodes.peers()
        if not peers:
            self._changes(self.nodes.add_notification_addresses())
            self._join(self.nodes.peers(), now)
            return
        body = self.nodes.body()
        for node in self._udp(peers):
            self._notify(node, body, 1, now)

    def _notify(self, node: NodeId, body: bytes, max_forwards: int, now: float) -> int:
        return self._request(
            TransactionKind.NOTIFICATION,
            self.config.notification_channel,
            node,
            body,
            "text/plain",
            max_forwards=max_forwards,
            now=now,
            status_at_send=self.nodes.status(node),
        )

    # ------------------------------------------------------------------ data channels
    def register_peer(self, channel: str, handler: Handler) -> None:
        """Handle requests of ``channel``; the handler is called once per request."""
        if channel == self.config.notification_channel:
            raise ConfigError(f"{channel!r} is the notification channel")
        try:
            _msg.build_request(
                channel=channel,
                target=self.config.local.uri,
                local=self.config.local.uri,
                body=b"",
                content_type=None,
            )
        except DmqProtocolError as exc:
            raise ConfigError(f"bad channel name {channel!r}") from exc
        self._peers[channel] = handler

    def unregister_peer(self, channel: str) -> None:
        self._peers.pop(channel, None)

    def broadcast(
        self, channel: str, body: bytes, content_type: str | None, now: float
    ) -> list[int]:
        """Send ``body`` to every active node (Max-Forwards 1); one transaction id per node.

        Raises :class:`DmqProtocolError` if the message cannot be built (bad channel or
        content type, more than ``MAX_DATAGRAM`` bytes).
        """
        self._check_channel(channel)
        targets = self._udp(self.nodes.peers(active_only=True))
        # build once up front so an oversized body fails before anything is queued
        _msg.build_request(
            channel=channel,
            target=self.config.local.uri,
            local=self.config.local.uri,
            body=body,
            content_type=content_type,
        )
        return [
            self._request(
                TransactionKind.DATA, channel, n, body, content_type, max_forwards=1, now=now
            )
            for n in targets
        ]

    def send(
        self, channel: str, node: NodeId, body: bytes, content_type: str | None, now: float
    ) -> int:
        """Send ``body`` to one node of the list (any status), like ``dmq_send_message``.

        Raises :class:`DmqNodeNotFound` if the node is not in the list or is ourselves, and
        :class:`DmqError` if it is not UDP.
        """
        self._check_channel(channel)
        if node not in self.nodes or node == self.nodes.local:
            raise DmqNodeNotFound(f"{node} is not a remote node of the list")
        if not self._udp([node]):
            raise DmqError(f"{node}: only UDP nodes can be reached")
        return self._request(
            TransactionKind.DATA, channel, node, body, content_type, max_forwards=1, now=now
        )

    def respond(self, request_id: int, reply: PeerReply, now: float) -> bool:
        """Answer a request whose handler returned None. False if unknown or expired."""
        deferred = self._deferred.pop(request_id, None)
        if deferred is None:
            return False
        self._reply_with(
            deferred.request,
            deferred.key,
            deferred.address,
            reply,
            now,
            channel=deferred.request.channel or "",
        )
        return True

    def _check_channel(self, channel: str) -> None:
        if channel == self.config.notification_channel:
            raise DmqError("use the node list API for the notification channel")

    def _udp(self, nodes: Iterable[NodeId]) -> list[NodeId]:
        return [n for n in nodes if n.transport in (None, "udp")]

    def _request(
        self,
        kind: TransactionKind,
        channel: str,
        node: NodeId,
        body: bytes,
        content_type: str | None,
        *,
        max_forwards: int,
        now: float,
        status_at_send: NodeStatus | None = None,
    ) -> int:
        branch, tag, call_id = _msg.new_ids(self._call_id_host)
        data = _msg.build_request(
            channel=channel,
            target=node.uri,
            local=self._local_uri,
            body=body,
            content_type=content_type,
            max_forwards=max_forwards,
            branch=branch,
            from_tag=tag,
            call_id=call_id,
            user_agent=self.config.user_agent,
            rport=self.config.via_rport,
        )
        data = self._sign(data)
        tid = next(self._ids)
        self._txns.start(
            id=tid,
            kind=kind,
            node=node,
            channel=channel,
            branch=branch,
            call_id=call_id,
            datagram=data,
            address=node.address,
            now=now,
            status_at_send=status_at_send,
        )
        self._out.append((data, node.address))
        return tid

    # ------------------------------------------------------------------ receiving
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one UDP payload from ``addr``. Never raises for bad input.

        IPv4-mapped IPv6 sources (``::ffff:a.b.c.d``, from a dual-stack socket) are treated
        as the IPv4 address, and an IPv6 scope id is dropped.
        """
        try:
            if type(data) is not bytes:
                data = bytes(data)
            self._receive(data, (_norm_ip(str(addr[0])), int(addr[1])), now)
        except DmqProtocolError as exc:  # pragma: no cover - defensive: all paths catch
            self._drop(addr, f"protocol error: {exc}")

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        nets = self.config.networks
        if nets is not None and not _allowed(addr[0], nets):
            self._drop(addr, "source address not allowed")
            return
        secret = self.config.secret
        if secret is not None and not _msg.verify(data, secret):
            self._drop(addr, "missing or bad signature")
            return
        try:
            msg = _msg.parse_message(data)
        except DmqProtocolError as exc:
            self._reject(data, addr, str(exc), now)
            return
        if isinstance(msg, DmqResponse):
            self._on_response(msg, addr, now)
        else:
            self._on_request(msg, addr, now)

    def _reject(self, data: bytes, addr: Address, why: str, now: float) -> None:
        """A malformed datagram: answer 400 if it is a request we can address, else drop."""
        try:
            msg = _msg.parse_message(data, strict_length=False)
        except DmqProtocolError:
            msg = None
        if isinstance(msg, DmqRequest) and msg.method != "ACK":
            key = ReplyCache.key(msg)
            if self._cache.lookup(key, now) is None:
                self._reply_with(msg, key, addr, PeerReply(400, "Bad Request"), now)
                self._drop(addr, f"answered 400: {why}")
            else:
                self._resend_cached(key, addr, now)
            return
        self._drop(addr, why)

    def _on_response(self, resp: DmqResponse, addr: Address, now: float) -> None:
        txn = self._txns.match(resp)
        if txn is None:
            self._drop(addr, "reply matches no transaction")
            return
        if addr[0] != _norm_ip(txn.address[0]):
            self._drop(addr, "reply from another host than the request went to")
            return
        done = self._txns.on_response(resp, now, txn)
        if done is not None:
            self._finish(done, resp.code, resp.reason, resp, now)

    def _finish(
        self,
        txn: ClientTransaction,
        code: int,
        reason: str,
        resp: DmqResponse | None,
        now: float,
    ) -> None:
        if txn.kind is TransactionKind.NOTIFICATION:
            self._changes(self.nodes.on_final(txn.node, code, txn.status_at_send))
            if code == 200 and resp is not None:
                if resp.body:
                    try:
                        lines = parse_node_list(resp.body)
                    except DmqProtocolError as exc:
                        self._drop(txn.address, f"bad node list in 200: {exc}")
                    else:
                        self._changes(self.nodes.merge(lines))
                self._mark_joined()
            return
        if resp is None:
            self._events.append(TransactionTimedOut(txn.id, txn.node, txn.channel))
        else:
            self._events.append(
                ReplyReceived(
                    txn.id,
                    txn.node,
                    txn.channel,
                    code,
                    reason,
                    resp.body,
                    resp.content_type,
                )
            )

    def _on_request(self, req: DmqRequest, addr: Address, now: float) -> None:
        if req.method == "ACK":
            return  # never answered in SIP; KDMQ is non-INVITE so there is nothing to ack
        key = ReplyCache.key(req)
        cached = self._cache.lookup(key, now)
        if cached is not None:
            self._resend_cached(key, addr, now)
            return
        if req.method != "KDMQ":
            self._reply_with(req, key, addr, PeerReply(405, "Method Not Allowed"), now)
            return
        channel = req.channel
        if not channel:
            self._reply_with(req, key, addr, PeerReply(400, "Missing Channel"), now)
            return
        if channel == self.config.notification_channel:
            self._on_notification(req, key, addr, now)
            return
        sender = self._sender(req, addr)
        handler = self._peers.get(channel)
        if handler is None:
            self._reply_with(req, key, addr, PeerReply(404, "User Not Found"), now, channel=channel)
            return
        rid = next(self._ids)
        incoming = IncomingRequest(
            id=rid,
            channel=channel,
            node=sender,
            known=sender in self.nodes,
            address=addr,
            body=req.body,
            content_type=req.content_type,
            max_forwards=req.max_forwards,
            message=req,
        )
        try:
            reply = handler(incoming)
        except Exception as exc:
            self._events.append(HandlerFailed(channel, exc))
            reply = PeerReply(500, "Server Internal Error")
        if reply is None:
            self._cache.put(key, PENDING, now)
            self._deferred[rid] = _Deferred(key, req, addr, now + self._cache.ttl)
            if len(self._deferred) > self.config.max_deferred:
                self._deferred.popitem(last=False)
                self.deferred_dropped += 1
            return
        self._reply_with(req, key, addr, reply, now, channel=channel)

    def _on_notification(self, req: DmqRequest, key: CacheKey, addr: Address, now: float) -> None:
        try:
            lines = parse_node_list(req.body)
        except DmqProtocolError:
            self._reply_with(req, key, addr, PeerReply(400, "Bad Request"), now)
            return
        changes = self.nodes.merge(lines)
        self._sender(req, addr)
        self._changes(changes)
        body = self.nodes.body(NodeStatus.DISABLED if self._left else NodeStatus.ACTIVE)
        self._reply_with(req, key, addr, PeerReply(200, "OK", body, "text/plain"), now)
        hops = (req.max_forwards or 0) - 1
        if changes and hops > 0 and not self._left:
            for node in self._udp(self.nodes.peers(active_only=True)):
                self._notify(node, body, hops, now)
        self._mark_joined()

    def _reply_with(
        self,
        req: DmqRequest,
        key: CacheKey,
        addr: Address,
        reply: PeerReply,
        now: float,
        *,
        channel: str = "",
    ) -> None:
        try:
            code, reason, body, ctype = reply
            if not 200 <= code <= 699:
                raise DmqProtocolError(f"a handler must give a final status, not {code}")
            data = _msg.build_response(
                req,
                code,
                reason,
                body=body,
                content_type=ctype,
                to_tag=f"{self._tag_prefix}{next(self._tags):x}",
                source=addr,
                server=self.config.user_agent,
            )
        except (DmqProtocolError, TypeError, ValueError) as exc:
            self._events.append(HandlerFailed(channel, exc))
            data = _msg.build_response(
                req, 500, "Server Internal Error", source=addr, server=self.config.user_agent
            )
        data = self._sign(data)
        self._cache.put(key, data, now)
        self._out.append((data, addr))

    def _resend_cached(self, key: CacheKey, addr: Address, now: float) -> None:
        cached = self._cache.lookup(key, now)
        if isinstance(cached, bytes):
            self._out.append((cached, addr))

    # ------------------------------------------------------------------ helpers
    def _sender(self, req: DmqRequest, addr: Address) -> NodeId:
        """The sender's node identity (From host:port); a request from that node's own
        address is proof that it is alive (:meth:`NodeList.mark_seen`)."""
        sender = NodeId.from_uri(req.from_.uri)
        host, port = sender.address
        # the socket gives IP literals only, so equal addresses mean an IP literal host
        if (_norm_ip(host), port) == addr and sender in self.nodes:
            self.nodes.mark_seen(sender)
        return sender

    def _sign(self, data: bytes) -> bytes:
        return _msg.sign(data, self.config.secret) if self.config.secret is not None else data

    def _drop(self, addr: Address, reason: str) -> None:
        self._events.append(DatagramDropped((str(addr[0]), int(addr[1])), reason))

    def _mark_joined(self) -> None:
        if not self._joined:
            self._joined = True
            self._events.append(Joined())

    def _changes(self, changes: list[NodeChange]) -> None:
        for c in changes:
            self._events.append(NodeStatusChanged(c.node, c.old, c.new))
            if c.new is NodeStatus.ACTIVE and c.old is not NodeStatus.ACTIVE:
                self._events.append(NodeUp(c.node))
            elif c.old is NodeStatus.ACTIVE and c.new is not NodeStatus.ACTIVE:
                self._events.append(NodeDown(c.node, c.new))


@functools.lru_cache(maxsize=1024)
def _norm_ip(host: str) -> str:
    """``host`` as the socket reports it (cached: a bus talks to few addresses)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@functools.lru_cache(maxsize=1024)
def _allowed(host: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in nets)
