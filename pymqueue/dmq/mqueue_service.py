"""Queues across hosts: :class:`MqueueService`, the ``mqueue`` channel of one bus.

A queue declared ``dmq = "owner"`` on several nodes has one **owner** at a time: its configured
``owner`` while that node is active on the bus; otherwise the rendezvous-hash winner among the
active nodes that carry the queue, this node included (:func:`~pymqueue.dmq.mqueue_codec.
rendezvous_owner`). On every other node the local shared-memory queue is an **outbox**:
producers add to it as usual and a forwarder (one task per queue in the bus's loop) peeks a
batch of records (at most :data:`~pymqueue.dmq.mqueue_codec.MAX_BODY` bytes of body), sends it
to the owner and, on a 200, discards exactly what was sent (:meth:`Queue.discard_through`).
One batch is in flight per queue (stop-and-wait): per-origin order holds over a lossy link,
and a timeout or error re-evaluates the owner and sends again (the owner drops what it already
applied: per (origin, queue, epoch) the highest id applied is kept).

The forwarder sleeps on the queue's doorbell (:meth:`Queue.fileno`/:meth:`Queue.arm`,
``loop.add_reader``) while the outbox is empty, looks again every :data:`RECHECK` seconds in
case a producer died between its add and its ring, and polls every :data:`POLL` seconds if the
queue's doorbell table is full.

Membership: when a node becomes active we send it ``{"carries": [...]}`` (the distributed
queues we carry) and its 200 carries its own; what a node carries is forgotten when it goes
down. A Kamailio node never announces: it owns a queue only as its configured ``owner``.

Receiving: items for any queue of the instance are added to its shared-memory queue (whether
or not we own it: a non-owner's forwarder moves them on), duplicates dropped as described in
:class:`~pymqueue.dmq.mqueue_codec.Dedup`; 200 ``{"applied","duplicates"}`` (no body when the
message has no ``origin``: a Kamailio script's, see :meth:`MqueueService._apply`), 503
``{"applied"}`` when the queue is full (reject/block policy), 404 unknown queue, 400 malformed.

Mirror (``dmq = "mirror"``): the service holds the queue (:meth:`Queue.hold`), so every local
add is held until :meth:`MqueueService._mirror` has sent its batch to every active node known
to carry the queue and each answered (or was given up: :data:`MIRROR_TRIES`, ``missed``);
received items are added released and never sent on. :meth:`MqueueService.close` stops
holding. The model and its guarantees: ``docs/dmq.md``, "Fan-out".

Everything runs in the bus's thread; :meth:`MqueueService.stats` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pymqueue._text import display, name_bytes
from pymqueue.dmq.bus import Bus
from pymqueue.dmq.core import IncomingRequest, PeerReply
from pymqueue.dmq.events import DmqEvent, Joined, NodeDown, NodeStatusChanged, NodeUp
from pymqueue.dmq.mqueue_codec import (
    CHANNEL,
    CONTENT_TYPE,
    MAX_BODY,
    BatchBuilder,
    Carries,
    Dedup,
    ItemsMessage,
    ItemsReply,
    decode,
    decode_reply,
    encode_carries,
    encode_reply,
    rendezvous_owner,
)
from pymqueue.dmq.nodes import NodeId, NodeStatus
from pymqueue.dmq.thread import BusThread
from pymqueue.errors import (
    DmqError,
    DmqTimeout,
    Full,
    ItemTooLarge,
    MqueueDecodeError,
    QueueError,
    RpcError,
)

if TYPE_CHECKING:
    from pymqueue.queue.sync import Queue
    from pymqueue.queue.types import Record

__all__ = [
    "BATCH_ITEMS",
    "MIRROR_TRIES",
    "POLL",
    "RECHECK",
    "REFUSED_STREAK",
    "DqueueSpec",
    "DqueueStats",
    "MqueueService",
    "register_dqueue_rpc",
]

log = logging.getLogger("pymqueue.dmq.mqueue")

BATCH_ITEMS = 4096
"""Most records peeked for one batch (the body limit usually stops it first)."""
RECHECK = 1.0
"""Seconds an idle forwarder sleeps on the doorbell before it looks again anyway."""
POLL = 0.02
"""Seconds between looks when the queue's doorbell cannot be had (64 in use)."""
PEEK_MIN = 1024
"""Smallest byte budget of a peek."""
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
"""Waits before sending again after an error reply (not after a timeout: that waited)."""
ANNOUNCE_TRIES = 3
REFUSED_STREAK = 3
"""Items an owner may refuse alone (400) in a row, each dropped, before the forwarder decides
that it refuses everything and keeps the outbox (retrying every :data:`BACKOFF_MAX` s)."""
MIRROR_TRIES = 3
"""Sends of one mirror batch to one node (each retransmitted by the bus) before that node
is given up for the batch (counted in ``missed``); one send only while that node has not
answered since it was last given up (a dead node costs each batch one ``fr_timer`` until the
bus sees it down, not three)."""
SETTLE_MAX = 10.0
"""Most seconds a mirror forwarder waits at start, before its first batch, for the bus to
join and the carries announcements to be answered (see :meth:`MqueueService._settled`)."""

BusLike = Bus | BusThread
_KEY_VALUE = operator.itemgetter(0, 1)  # WireItem -> (key, value)


@dataclass(frozen=True, slots=True)
class DqueueStats:
    """A snapshot of one distributed queue on this node (:meth:`MqueueService.stats`).

    ``owner``: the owner as this node sees it (None before the bus runs); ``outbox``: items
    waiting here to be forwarded (0 while this node is the owner); ``forwarded``: items sent
    (each attempt); ``acknowledged``: items the owner answered 200 for (removed here);
    ``batches``: messages sent; ``resent``: messages sent again after a timeout or error;
    ``received``/``applied``/``duplicates``: items that arrived here, were added to the
    local queue, were dropped as already applied; ``too_large``: items dropped here because
    one item alone does not fit in a message; ``refused``: items the owner refused as
    malformed (400) one by one, dropped here; ``last_error``: the last failure, None if none.

    A ``mode == "mirror"`` queue has no owner: ``outbox`` counts the local adds held until
    every node carrying the queue has them, ``forwarded``/``acknowledged`` count item
    deliveries (one per node), ``missed`` the deliveries given up (the node went down or
    kept failing) — those items reached the other nodes and this one, not that node.
    ``carriers``: the active nodes this node knows to carry the queue (a mirror's targets).
    """

    queue: str
    owner: str | None
    is_owner: bool
    configured_owner: str | None
    outbox: int
    forwarded: int
    acknowledged: int
    batches: int
    resent: int
    received: int
    applied: int
    duplicates: int
    too_large: int
    last_error: str | None
    mode: str = "owner"
    refused: int = 0
    missed: int = 0
    carriers: int = 0


@dataclass(frozen=True, slots=True)
class DqueueSpec:
    """One distributed queue for :class:`MqueueService`: the queue, its mode (``"owner"``,
    ``"mirror"``), the configured owner's URI (owner mode) and the most items per message
    (None: as many as fit in :data:`~pymqueue.dmq.mqueue_codec.MAX_BODY`; 100 suits a
    Kamailio owner, whose script handles a message in one worker)."""

    queue: Queue
    owner: str | None = None
    mode: str = "owner"
    batch_items: int | None = None


class _Dq:
    """The state of one distributed queue (bus thread)."""

    def __init__(
        self,
        queue: Queue,
        configured: NodeId | None,
        origin: str,
        mode: str = "owner",
        batch_items: int | None = None,
    ) -> None:
        self.queue = queue
        self.name = queue.raw_name
        self.configured = configured
        self.mode = mode
        self.batch_items = min(batch_items or BATCH_ITEMS, BATCH_ITEMS)
        self.limit = self.batch_items  # lowered while a 400 is narrowed down to one item
        self.refused = 0
        self.refused_streak = 0  # items refused alone since the last 200
        self.missed = 0
        self.suspect: set[NodeId] = set()  # mirror: given up for a batch, not answered since
        self.builder = BatchBuilder(self.name, origin, queue.epoch)
        self.owner: NodeId | None = None
        self.fd: int | None = None
        self.no_bell = False
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.retry = False
        self.peek_bytes = MAX_BODY * 2 // 3
        self.forwarded = 0
        self.acknowledged = 0
        self.batches = 0
        self.resent = 0
        self.too_large = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


@dataclass(slots=True)
class _Received:
    received: int = 0
    applied: int = 0
    duplicates: int = 0


class MqueueService:
    """The ``mqueue`` channel of ``bus``: forwarders for the distributed queues (``queues``:
    ``(queue, configured owner URI or None)``), and the receiving side for those and for
    ``other_queues`` (items for them are added, never forwarded). Create it before the bus
    starts (it learns who carries what from the nodes that come up); the queue handles stay
    the caller's (the service opens its own handle of each distributed queue, for its
    doorbell, and closes it in :meth:`close`)."""

    def __init__(
        self,
        bus: BusLike,
        queues: Iterable[DqueueSpec | tuple[Queue, str | None]],
        other_queues: Iterable[Queue] = (),
    ) -> None:
        from pymqueue.queue.sync import Queue  # noqa: PLC0415

        self.bus: Bus = bus.bus if isinstance(bus, BusThread) else bus
        self.local = self.bus.local
        origin = str(self.local)
        self._dqs: dict[bytes, _Dq] = {}
        for item in queues:
            spec = item if isinstance(item, DqueueSpec) else DqueueSpec(item[0], item[1])
            if spec.mode not in ("owner", "mirror"):
                raise ValueError(f"unknown mode {spec.mode!r}")
            q = spec.queue
            handle = Queue(q.raw_name, namespace=q.namespace, create=False)
            configured = NodeId.parse(spec.owner) if spec.owner is not None else None
            dq = _Dq(handle, configured, origin, spec.mode, spec.batch_items)
            if spec.mode == "mirror":
                handle.hold()  # from now on every local add waits for the mirror
            self._dqs[q.raw_name] = dq
        self._others: dict[bytes, Queue] = {q.raw_name: q for q in other_queues}
        self._received: dict[bytes, _Received] = {}
        self.dedup = Dedup()
        self.carriers: dict[NodeId, frozenset[bytes]] = {}
        self._active: frozenset[NodeId] = frozenset()
        self._started = False
        self._started_at = 0.0
        self._joined = False
        self._announcing: dict[NodeId, int] = {}  # announcements in flight, per node
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        """Bodies answered 400 (malformed) or 404 (unknown queue)."""
        self._carries_body = encode_carries(self._dqs)
        bus.register(CHANNEL, self._handle)
        bus.add_listener(self._on_event)

    # -- access (any thread) -------------------------------------------------------------
    @property
    def names(self) -> list[bytes]:
        return list(self._dqs)

    def stats(self) -> dict[str, DqueueStats]:
        """One :class:`DqueueStats` per distributed queue, by name (text)."""
        out: dict[str, DqueueStats] = {}
        for name, dq in list(self._dqs.items()):
            rec = self._received.get(name, _Received())
            owner = dq.owner
            is_owner = owner == self.local
            try:
                if dq.mode == "mirror":
                    outbox = dq.queue.stats().held
                else:
                    outbox = 0 if is_owner else dq.queue.size()
            except QueueError:
                outbox = 0
            out[display(name)] = DqueueStats(
                queue=display(name),
                owner=None if owner is None else str(owner),
                is_owner=is_owner,
                configured_owner=None if dq.configured is None else str(dq.configured),
                outbox=outbox,
                forwarded=dq.forwarded,
                acknowledged=dq.acknowledged,
                batches=dq.batches,
                resent=dq.resent,
                received=rec.received,
                applied=rec.applied,
                duplicates=rec.duplicates,
                too_large=dq.too_large,
                last_error=dq.last_error,
                mode=dq.mode,
                refused=dq.refused,
                missed=dq.missed,
                carriers=len(self.carriers_of(dq)),
            )
        return out

    def start(self) -> None:
        """Start the forwarders once the bus runs (any thread; they also start at the
        bus's first event or request)."""
        loop = self.bus.loop
        if loop is None or loop.is_closed():
            return

        def go() -> None:
            self._ensure_started()
            if self._started:
                self._refresh()

        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(go)

    def close(self) -> None:
        """Close the service's queue handles (after the bus stopped). Idempotent. A mirror
        queue stops holding: what it still holds is released to the local consumers only
        (nobody forwards it any more)."""
        for dq in self._dqs.values():
            with contextlib.suppress(QueueError):
                if dq.mode == "mirror" and not dq.queue.closed:
                    dq.queue.hold(False)
            with contextlib.suppress(QueueError):
                dq.queue.close()

    def __repr__(self) -> str:
        names = ", ".join(repr(display(n)) for n in self._dqs)
        return f"<pymqueue.dmq.MqueueService {self.local} queues=[{names}] at {id(self):#x}>"

    # -- ownership ------------------------------------------------------------------------
    def owner_of(self, dq: _Dq) -> NodeId:
        return rendezvous_owner(dq.name, self.local, self._active, self.carriers, dq.configured)

    def carriers_of(self, dq: _Dq) -> list[NodeId]:
        """The active nodes known to carry ``dq`` (a mirror's targets)."""
        return [n for n in self._active if dq.name in self.carriers.get(n, ())]

    def _refresh(self) -> None:
        self._active = frozenset(self._active_now())
        for dq in self._dqs.values():
            if dq.mode == "mirror":
                dq.suspect &= self._active
                dq.wake()  # a node came or went: its batch may be waiting for it
                continue
            owner = self.owner_of(dq)
            if owner != dq.owner:
                if dq.owner is not None:
                    log.info("mqueue %s: owner %s -> %s", display(dq.name), dq.owner, owner)
                dq.owner = owner
                dq.limit = dq.batch_items  # a narrowed batch size was the old owner's
                dq.refused_streak = 0
                dq.wake()

    def _on_event(self, event: DmqEvent) -> None:
        self._ensure_started()
        if isinstance(event, NodeDown):
            self.carriers.pop(event.node, None)
        elif isinstance(event, NodeUp):
            self._announce(event.node)
        elif isinstance(event, Joined):
            self._joined = True
            for node in self._active_now():
                self._announce(node)
        elif isinstance(event, NodeStatusChanged) and event.new is None:
            self.carriers.pop(event.node, None)
        self._refresh()

    def _active_now(self) -> list[NodeId]:
        return [
            n.node
            for n in self.bus.nodes()
            if not n.local and n.status is NodeStatus.ACTIVE and n.node.transport in (None, "udp")
        ]

    def _announce(self, node: NodeId) -> None:
        """Send our carries to ``node``; counted in flight from now on (a mirror's first
        batch waits for them: :meth:`_settle_time`)."""
        if self._spawn(self._announcing_to(node)) is not None:
            self._announcing[node] = self._announcing.get(node, 0) + 1

    async def _announcing_to(self, node: NodeId) -> None:
        try:
            await self._announce_to(node)
        finally:
            left = self._announcing.pop(node, 1) - 1
            if left:
                self._announcing[node] = left
            elif not self._announcing:
                for dq in self._dqs.values():
                    if dq.mode == "mirror":
                        dq.wake()  # may be settled now

    async def _announce_to(self, node: NodeId) -> None:
        for _ in range(ANNOUNCE_TRIES):
            if not self.bus.running:
                return
            try:
                reply = await self.bus.send(CHANNEL, node, self._carries_body, CONTENT_TYPE)
            except DmqTimeout:
                continue
            except DmqError as exc:
                log.debug("mqueue: carries to %s: %s", node, exc)
                return
            if reply.code == 200:
                got = decode_reply(reply.body)
                if isinstance(got, Carries):
                    self.carriers[node] = got.queues
                    self._refresh()
            return

    # -- tasks ----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        loop = self.bus.loop
        if loop is None or not self.bus.running:
            coro.close()
            return None
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _ensure_started(self) -> None:
        if self._started or self.bus.loop is None or not self.bus.running:
            return
        self._started = True
        self._started_at = time.monotonic()
        for dq in self._dqs.values():
            if dq.mode == "mirror":
                dq.task = self._spawn(self._guarded(dq, "mirror", self._mirror(dq)))
            else:
                dq.task = self._spawn(self._guarded(dq, "forwarder", self._forward(dq)))

    @staticmethod
    async def _guarded(dq: _Dq, what: str, run: Coroutine[Any, Any, None]) -> None:
        """Run a queue's forwarder or mirror; its end is said in ``last_error``."""
        try:
            await run
        except QueueError as exc:  # the queue was closed under us (instance stopping)
            dq.last_error = f"{what} stopped: {exc}"
            log.debug("mqueue %s: %s", display(dq.name), dq.last_error)
        except Exception as exc:  # pragma: no cover - a bug: say it loudly
            dq.last_error = f"{what} crashed: {exc!r}"
            log.exception("mqueue %s: %s crashed", display(dq.name), what)

    # -- forwarding -----------------------------------------------------------------------
    async def _wait(self, dq: _Dq, timeout: float, items: bool) -> None:
        """Until ``timeout``, a change of owner (``dq.wake``) or (``items``) the doorbell
        (for a mirror: held items)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        dq.waiter = fut
        reader = False
        if items:
            if dq.no_bell:
                timeout = min(timeout, POLL)
            else:
                try:
                    if dq.fd is None:
                        dq.fd = dq.queue.fileno()
                    if dq.queue.arm(held=dq.mode == "mirror"):  # items now (drains rings)
                        dq.waiter = None
                        return
                    loop.add_reader(dq.fd, dq.wake)
                    reader = True
                except OSError as exc:  # BellTableFull, no socket: poll instead
                    log.warning("mqueue %s: no doorbell (%s): polling", display(dq.name), exc)
                    dq.no_bell = True
                    timeout = min(timeout, POLL)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await fut
        finally:
            dq.waiter = None
            if reader and dq.fd is not None:
                loop.remove_reader(dq.fd)

    async def _next_batch(self, dq: _Dq) -> tuple[bytes, int, int] | None:
        """The next batch from the head: (body, items, last id); None once it has waited
        for items (none now) or set aside an item too large for any message."""
        body, n, records = self._batch(dq, 0)
        if not records:
            await self._wait(dq, RECHECK, items=True)
            return None
        if n == 0:
            self._too_large(dq, records[0])
            return None
        return body, n, records[n - 1].id

    @staticmethod
    def _too_large(dq: _Dq, first: Record) -> None:
        """``first`` cannot fit in one message even alone: an outbox drops it, a mirror
        releases it to the local consumers only (counted, logged)."""
        if dq.mode == "mirror":
            dq.too_large += dq.queue.release_through(first.id)
            fate = "kept here only"
        else:
            dq.too_large += dq.queue.discard_through(first.id)
            fate = "dropped"
        size = len(first.key) + len(first.value)
        dq.last_error = f"item {first.id} ({size} bytes) cannot fit in one message: {fate}"
        log.error("mqueue %s: %s", display(dq.name), dq.last_error)

    def _batch(self, dq: _Dq, after_id: int) -> tuple[bytes, int, list[Record]]:
        """Peek records after ``after_id`` and pack what fits: ``(body, n, records)``. The
        peek's byte budget follows what the last bodies held (JSON costs more than the bytes
        it carries: a peek of :data:`MAX_BODY` bytes would read records that do not fit)."""
        records = dq.queue.peek_records(
            dq.limit, after_id=after_id, max_bytes=dq.peek_bytes, held_only=dq.mode == "mirror"
        )
        if not records:
            return b"", 0, records
        body, n = dq.builder.build(records)  # Record is (id, key, value)
        if n < len(records):
            dq.peek_bytes = max(PEEK_MIN, dq.peek_bytes * n // len(records))
        elif len(body) < MAX_BODY:
            dq.peek_bytes = min(MAX_BODY, dq.peek_bytes * MAX_BODY // len(body))
        return body, n, records

    async def _forward(self, dq: _Dq) -> None:
        backoff = BACKOFF_MIN
        loop = asyncio.get_running_loop()
        ahead: tuple[bytes, int, int] | None = None  # the next batch, packed meanwhile
        while self.bus.running:
            owner = dq.owner = self.owner_of(dq)
            if owner == self.local:
                dq.retry = False
                ahead = None
                await self._wait(dq, RECHECK * 5, items=False)
                continue
            if ahead is not None:
                body, n, last_id = ahead
                ahead = None
            else:
                got = await self._next_batch(dq)
                if got is None:
                    continue
                body, n, last_id = got
            if dq.retry:
                dq.resent += 1
            dq.batches += 1
            dq.forwarded += n
            sending = loop.create_task(self.bus.send(CHANNEL, owner, body, CONTENT_TYPE))
            if not dq.retry:
                # Pack the next batch while this one is in flight (still one in flight:
                # it leaves only after this one's 200). Two loop turns first: the send
                # task queues the datagram, the bus's transmit writes it.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                nbody, nn, nrecords = self._batch(dq, last_id)
                if nn:
                    ahead = (nbody, nn, nrecords[nn - 1].id)
            try:
                reply = await sending
            except DmqTimeout:
                ahead = None
                dq.retry = True
                dq.last_error = f"no reply from {owner} (timeout)"
                continue  # the owner may have changed meanwhile: look again
            except DmqError as exc:  # not in the node list any more, bus stopping
                ahead = None
                dq.retry = True
                dq.last_error = f"{owner}: {exc}"
                self._refresh()
                await self._wait(dq, backoff, items=False)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if reply.code == 200:
                dq.refused_streak = 0
                dq.acknowledged += dq.queue.discard_through(last_id)
                dq.retry = False
                backoff = BACKOFF_MIN
                continue
            ahead = None
            if reply.code == 400:
                # The owner cannot read this batch: halve it until the item it refuses
                # is alone, then drop that item (counted, logged) and go on at full size.
                dq.retry = False
                dq.last_error = f"{owner} answered 400 {reply.reason}"
                if n > 1:
                    dq.limit = max(1, n // 2)
                elif dq.refused_streak >= REFUSED_STREAK:
                    # Item after item refused alone and nothing accepted between: the
                    # owner refuses everything. Keep the outbox and try again later.
                    log.error(
                        "mqueue %s: %s refuses every item (%s): outbox kept, retrying",
                        display(dq.name),
                        owner,
                        reply.reason,
                    )
                    dq.retry = True
                    await self._wait(dq, BACKOFF_MAX, items=False)
                else:
                    dq.refused += dq.queue.discard_through(last_id)
                    dq.refused_streak += 1
                    dq.limit = dq.batch_items
                    log.error(
                        "mqueue %s: item %d refused by %s (%s): dropped",
                        display(dq.name),
                        last_id,
                        owner,
                        reply.reason,
                    )
                continue
            dq.retry = True
            dq.last_error = f"{owner} answered {reply.code} {reply.reason}"
            if reply.code == 503:
                answer = decode_reply(reply.body)
                if isinstance(answer, ItemsReply) and answer.applied:
                    backoff = BACKOFF_MIN  # progress: the owner keeps what it applied
            log.info("mqueue %s: %s", display(dq.name), dq.last_error)
            await self._wait(dq, backoff, items=False)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _settle_time(self) -> float:
        """Seconds left before a mirror sends its first batch anyway (0: settled)."""
        if self._joined and not self._announcing:
            return 0.0
        cfg = self.bus.config
        most = min(SETTLE_MAX, cfg.ping_interval + 2 * cfg.fr_timer)
        return max(0.0, self._started_at + most - time.monotonic())

    async def _mirror(self, dq: _Dq) -> None:
        """A mirror queue's forwarder: the held local adds, batch by batch, to every active
        node carrying the queue at once; released here once each has answered (or was given
        up: down, or still failing after :data:`MIRROR_TRIES` sends).

        The first batch waits until the bus has joined and the carries announcements have
        been answered (or given up), at most ``min(SETTLE_MAX, ping_interval + 2 fr_timer)``
        seconds: otherwise what a restarted node still held would be released to nobody
        but its own consumers, its peers not known yet."""
        while self.bus.running and (left := self._settle_time()) > 0:
            await self._wait(dq, left, items=False)
        while self.bus.running:
            # the doorbell also rings for received (released) adds, and a peek for held
            # records scans the released ones before them: count first (one lock)
            if not dq.queue.stats().held:
                await self._wait(dq, RECHECK, items=True)
                continue
            got = await self._next_batch(dq)
            if got is None:
                continue
            body, n, last_id = got
            targets = self.carriers_of(dq)
            dq.batches += 1
            if targets:
                await asyncio.gather(*(self._mirror_to(dq, node, body, n) for node in targets))
            dq.queue.release_through(last_id)

    async def _mirror_to(self, dq: _Dq, node: NodeId, body: bytes, n: int) -> None:
        backoff = BACKOFF_MIN
        tries = 1 if node in dq.suspect else MIRROR_TRIES
        for attempt in range(tries):
            if not self.bus.running or node not in self._active:
                dq.last_error = f"{node}: not active any more"
                break
            if attempt:
                dq.resent += 1
            dq.forwarded += n
            try:
                reply = await self.bus.send(CHANNEL, node, body, CONTENT_TYPE)
            except DmqTimeout:
                dq.last_error = f"no reply from {node} (timeout)"
                continue
            except DmqError as exc:
                dq.last_error = f"{node}: {exc}"
                break
            if reply.code == 200:
                dq.acknowledged += n
                dq.suspect.discard(node)
                return
            dq.last_error = f"{node} answered {reply.code} {reply.reason}"
            if reply.code == 400 or attempt == tries - 1:
                break  # (no wait after the last try: the batch waits for this node)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        dq.missed += n
        dq.suspect.add(node)
        log.warning(
            "mqueue %s: %d items not mirrored to %s: %s", display(dq.name), n, node, dq.last_error
        )

    # -- receiving ------------------------------------------------------------------------
    def _target(self, name: bytes) -> Queue | None:
        dq = self._dqs.get(name)
        return dq.queue if dq is not None else self._others.get(name)

    def _handle(self, req: IncomingRequest) -> PeerReply:
        self._ensure_started()
        try:
            msg = decode(req.body)
        except MqueueDecodeError as exc:
            self.refused += 1
            log.info("mqueue: 400 to %s: %s", req.node, exc.detail)
            return PeerReply(400, _reason("Bad Request", exc.detail))
        if isinstance(msg, Carries):
            if req.known:  # bounded by the node list (max_nodes); others get our list only
                self.carriers[req.node] = msg.queues
                self._refresh()
            return PeerReply(200, "OK", self._carries_body, CONTENT_TYPE)
        queue = self._target(msg.queue)
        if queue is None:
            self.refused += 1
            return PeerReply(404, "No such queue")
        dq = self._dqs.get(msg.queue)
        # A mirror copies what its peers send as is (released: not sent on again); items from
        # a Kamailio script (no origin) are this node's adds, held and mirrored like local ones.
        mirrored = dq is not None and dq.mode == "mirror" and msg.origin is not None
        return self._apply(queue, msg, req.node, released=mirrored)

    def _apply(
        self, queue: Queue, msg: ItemsMessage, sender: NodeId, *, released: bool = False
    ) -> PeerReply:
        rec = self._received.setdefault(msg.queue, _Received())
        rec.received += len(msg.items)
        fresh = self.dedup.fresh(msg, str(sender))
        dups = len(msg.items) - len(fresh)
        rec.duplicates += dups
        applied = 0
        try:
            applied = queue.add_many(list(map(_KEY_VALUE, fresh)), timeout=0, released=released)
            code: int | None = None
        except Full as exc:
            applied = int(getattr(exc, "done", 0))
            code = 503
        except ItemTooLarge as exc:
            code = 500
            log.warning("mqueue %s: %s", display(msg.queue), exc)
        except QueueError as exc:
            code = 500
            log.warning("mqueue %s: %s", display(msg.queue), exc)
        self.dedup.applied(msg, str(sender), fresh[:applied])
        rec.applied += applied
        if code == 503:
            return PeerReply(503, "Queue Full", encode_reply(applied), CONTENT_TYPE)
        if code is not None:
            return PeerReply(500, "Server Internal Error", encode_reply(applied), CONTENT_TYPE)
        if msg.origin is None:
            # From a Kamailio script (dmq_send_message): 5.6.3 reads the body of a 200 to it
            # as a DMQ node list, and one that is not leaves its node-list lock taken (the
            # process hangs at its next DMQ message). No body, then.
            return PeerReply(200, "OK")
        return PeerReply(200, "OK", encode_reply(applied, dups), CONTENT_TYPE)


def _reason(head: str, detail: str) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in detail)
    return f"{head} - {text}"[:120]


# ---------------------------------------------------------------------------------- RPC


class _RpcLike(Protocol):
    def register(self, name: str, func: Any, help: str) -> None: ...


def stats_struct(s: DqueueStats) -> dict[str, Any]:
    """A :class:`DqueueStats` as an RPC struct (Kamailio style: ints for booleans)."""
    return {
        "queue": s.queue,
        "owner": s.owner or "",
        "is_owner": 1 if s.is_owner else 0,
        "configured_owner": s.configured_owner or "",
        "outbox": s.outbox,
        "forwarded": s.forwarded,
        "acknowledged": s.acknowledged,
        "batches": s.batches,
        "resent": s.resent,
        "received": s.received,
        "applied": s.applied,
        "duplicates": s.duplicates,
        "too_large": s.too_large,
        "last_error": s.last_error or "",
        "mode": s.mode,
        "refused": s.refused,
        "missed": s.missed,
        "carriers": s.carriers,
    }


def register_dqueue_rpc(rpc: _RpcLike, stats: Callable[[], Mapping[str, DqueueStats]]) -> None:
    """``dmq.queues [NAME]``: one struct per distributed queue (or the one named; unknown →
    ``404 No such queue``)."""

    def queues(*args: Any) -> list[dict[str, Any]]:
        current = stats()
        if args and args[0] not in (None, ""):
            if not isinstance(args[0], str):
                raise RpcError(400, "Invalid Parameters")
            want = display(name_bytes(args[0]))
            if want not in current:
                raise RpcError(404, "No such queue")
            return [stats_struct(current[want])]
        return [stats_struct(s) for s in current.values()]

    rpc.register("dmq.queues", queues, "Distributed queues: owner, outbox and counters")
