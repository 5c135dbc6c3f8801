"""A live replica of a Kamailio htable on a DMQ bus: :class:`Htable`.

::

    with BusThread("sip:127.0.0.1:5099", "sip:127.0.0.1:5091", ping_interval=5) as bus:
        blocked = Htable(bus, "blocklist", autoexpire=3600)   # asks one node for the table
        blocked["203.0.113.7"] = "scanner"     # applied at once, broadcast to every node
        blocked.setex("203.0.113.7", 600)      # Kamailio's htable.setex
        blocked.on_change(lambda ch: print(ch.op, ch.key, ch.origin))
        blocked.wait_until(lambda t: "198.51.100.1" in t, timeout=5)

One :class:`HtableService` per bus and channel (created on demand) serves every replica of
that channel: it answers the channel's KDMQ requests in the bus's loop (actions applied in
arrival order; 200, or 400/500 as 5.6.3 answers), answers sync requests with the cells of the
replicas it holds (chunks of at most 60 000 bytes, a few in flight at a time), and asks **one**
active node for the tables once the bus has joined (again at the next node that comes up if
none was active, or if the node asked did not answer 200). Local writes are applied at once
and broadcast fire-and-forget (the bus retransmits; no application-level retry), as Kamailio
does. Several full copies of a table are applied idempotently.

Thread safety: an :class:`Htable` may be used from any thread; remote changes are applied in
the bus's thread. Change callbacks run in the thread that made the change (the bus thread for
remote ones) and must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from pymqueue.dmq._common import log
from pymqueue.dmq.bus import Bus
from pymqueue.dmq.core import IncomingRequest, PeerReply
from pymqueue.dmq.events import DmqEvent, Joined, NodeUp
from pymqueue.dmq.htable import (
    CHANNEL,
    CONTENT_TYPE,
    MAX_SYNC_BODY,
    Action,
    ActionMessage,
    HtableDecodeError,
    HtableDef,
    HtableModel,
    Match,
    SyncCell,
    SyncCells,
    SyncRequest,
    Value,
    build_sync_bodies,
    cell_size,
    check_int,
    check_key,
    check_text,
    check_value,
    decode,
    encode_action,
    encode_sync_request,
)
from pymqueue.dmq.nodes import NodeId, NodeStatus
from pymqueue.dmq.thread import BusThread
from pymqueue.errors import DmqError, DmqTimeout, HtableError, HtableValueError

__all__ = [
    "BROADCAST_WINDOW",
    "SYNC_WINDOW",
    "BusLike",
    "Htable",
    "HtableChange",
    "HtableService",
    "HtableStats",
]

SYNC_WINDOW = 2
"""Sync messages in flight at once towards one requester."""
BROADCAST_WINDOW = 64
"""Action broadcasts in flight at once (later ones wait, in order): a burst of writes must not
overflow a Kamailio node's socket, whose single DMQ worker applies them one by one."""

_CELL_ROOM = MAX_SYNC_BODY - len(b'{"cells":[]}')

BusLike = Bus | BusThread


@dataclass(frozen=True, slots=True)
class HtableChange:
    """One change of a replica, given to :meth:`Htable.on_change` callbacks.

    ``op``: ``set``, ``setex``, ``delete``, ``rm_regex``, ``rm_prefix`` (one change per removed
    cell), ``sync`` (a cell received in a sync message) or ``expired`` (noticed locally).
    ``value``: the new value (``set``/``sync``), the seconds (``setex``), the old value
    (removals). ``origin``: None for a change made through this object, else the node that
    sent it (:attr:`local` tells).
    """

    table: str
    op: str
    key: str
    value: Value | None
    origin: NodeId | None

    @property
    def local(self) -> bool:
        return self.origin is None


@dataclass(slots=True)
class HtableStats:
    """Counters of one service (one bus, one channel)."""

    actions_applied: int = 0
    cells_synced: int = 0
    refused: int = 0
    """Bodies answered 400/500."""
    sent: int = 0
    """Action messages broadcast (one per change, whatever the number of nodes)."""
    peer_errors: int = 0
    """Replies other than 200, and timeouts, to what we sent."""
    sync_requests_answered: int = 0
    sync_messages_sent: int = 0
    sync_requests_sent: int = 0


_services: weakref.WeakKeyDictionary[Bus, dict[str, HtableService]] = weakref.WeakKeyDictionary()
_services_lock = threading.Lock()


class HtableService:
    """The ``htable`` channel of one bus: the replicas it holds, sync in both directions.

    Get it with :meth:`of` (one per bus and channel); :class:`Htable` does.
    """

    def __init__(self, bus: BusLike, channel: str = CHANNEL) -> None:
        self.owner = bus
        self.bus: Bus = bus.bus if isinstance(bus, BusThread) else bus
        self.channel = channel
        self.stats = HtableStats()
        self.tables: dict[str, Htable] = {}
        self._need_sync = True
        self._active_peers = 0  # updated in the loop, read by writers in any thread
        self._pending: deque[bytes] = deque()  # actions waiting for a broadcast slot
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        bus.register(channel, self._handle)
        bus.add_listener(self._on_event)

    @classmethod
    def of(cls, bus: BusLike, channel: str = CHANNEL) -> HtableService:
        inner = bus.bus if isinstance(bus, BusThread) else bus
        with _services_lock:
            per_bus = _services.setdefault(inner, {})
            service = per_bus.get(channel)
            if service is None:
                service = per_bus[channel] = cls(bus, channel)
            return service

    # -- replicas
    def attach(self, table: Htable) -> None:
        name = table.name
        if name in self.tables:
            raise HtableError(f"this bus already holds a replica of {name!r} on {self.channel!r}")
        self.tables[name] = table
        # a table added once the tables were asked for: ask for this one
        self.call_wait(lambda: self._sync_late(name))

    def detach(self, table: Htable) -> None:
        if self.tables.get(table.name) is table:
            del self.tables[table.name]

    # -- running things in the bus's loop
    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` in the bus's loop (now if we are in it); False if the bus is not
        running (nothing to tell anybody then)."""
        loop = self.bus.loop
        if loop is None or not self.bus.running or loop.is_closed():
            return False
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(fn)
        return True

    def call_wait(self, fn: Callable[[], object], timeout: float = 10.0) -> None:
        """Run ``fn`` in the bus's loop and wait for it (at once if the bus is not running
        or we are in its loop)."""
        loop = self.bus.loop
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is None or current is loop or not self.bus.running or loop.is_closed():
            fn()
            return

        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self.bus.loop
        assert loop is not None
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def broadcast(self, body: bytes) -> None:
        """Send an action to every active node, fire-and-forget (thread-safe). With no
        active node at the time of the write nothing is sent, as in Kamailio."""
        if not self._active_peers:
            return
        self.stats.sent += 1
        self.call_soon(lambda: self._queue(body))

    def _queue(self, body: bytes) -> None:
        self._pending.append(body)
        self._pump()

    def _pump(self) -> None:
        # tasks start in creation order and bus.broadcast builds its datagrams before its
        # first await: actions leave in the order they were made
        while self._pending and self._in_flight < BROADCAST_WINDOW:
            self._in_flight += 1
            self._spawn(self._broadcast(self._pending.popleft()))

    async def _broadcast(self, body: bytes) -> None:
        try:
            await self._broadcast_now(body)
        finally:
            self._in_flight -= 1
            self._pump()

    async def _broadcast_now(self, body: bytes) -> None:
        if not self.bus.running:
            return
        try:
            results = await self.bus.broadcast(self.channel, body, CONTENT_TYPE)
        except DmqError as exc:
            self.stats.peer_errors += 1
            log.warning("htable broadcast failed: %s", exc)
            return
        for node, res in results.items():
            if isinstance(res, DmqTimeout) or res.code != 200:
                self.stats.peer_errors += 1
                log.info("htable: %s answered %s to %s", node, _outcome(res), body[:200])

    def _active(self, prefer: NodeId | None = None) -> list[NodeId]:
        nodes = [
            n.node
            for n in self.bus.nodes()
            if not n.local and n.status is NodeStatus.ACTIVE and n.node.transport in (None, "udp")
        ]
        if prefer is not None and prefer in nodes:
            nodes.remove(prefer)
            nodes.insert(0, prefer)
        return nodes

    # -- asking for tables
    def _on_event(self, event: DmqEvent) -> None:
        self._active_peers = len(self._active())
        if isinstance(event, Joined):
            self._maybe_sync()
        elif isinstance(event, NodeUp):
            self._maybe_sync(event.node)

    def _maybe_sync(self, prefer: NodeId | None = None) -> None:
        if not self._need_sync or not self.tables:
            return
        nodes = self._active(prefer)
        if not nodes:
            return  # joined before any peer was active: ask the first that comes up
        self._need_sync = False
        self._spawn(self._request_sync(nodes, None))

    def _sync_late(self, name: str) -> None:
        self._active_peers = len(self._active())
        if self.bus.loop is None or not self.bus.running:
            return  # not started: the join will ask for every table
        if self._need_sync:
            self._maybe_sync()
            return
        nodes = self._active()
        if nodes:
            self._spawn(self._request_sync(nodes, name))

    async def _request_sync(self, nodes: list[NodeId], htname: str | None) -> None:
        """Ask the first of ``nodes`` that answers 200 (one copy, not a broadcast storm)."""
        body = encode_sync_request(htname)
        for node in nodes:
            if not self.bus.running:
                return
            self.stats.sync_requests_sent += 1
            try:
                reply = await self.bus.send(self.channel, node, body, CONTENT_TYPE)
            except DmqError as exc:
                log.info("htable sync request to %s: %s", node, exc)
                continue
            if reply.code == 200:
                log.debug("htable: %s asked for %s", node, htname or "every table")
                return
            log.info("htable sync request to %s: %s", node, _outcome(reply))
        if htname is None:
            self._need_sync = True  # nobody answered: ask again at the next node up

    def request_sync(self, node: NodeId | None, everyone: bool, htname: str) -> list[NodeId]:
        """:meth:`Htable.sync` (in the loop): ask ``node``, the first active, or all."""
        nodes = self._active(node)
        if node is not None and node not in nodes:
            nodes.insert(0, node)
        if not everyone:
            nodes = nodes[:1]
            if nodes:
                self._spawn(self._request_sync(nodes, htname))
        else:
            for n in nodes:
                self._spawn(self._request_sync([n], htname))
        return nodes

    # -- answering
    def _handle(self, req: IncomingRequest) -> PeerReply:
        try:
            msg = decode(req.body)
        except HtableDecodeError as exc:
            self.stats.refused += 1
            log.info("htable: %s from %s: %s", exc.code, req.node, exc.detail)
            return PeerReply(exc.code, exc.reason)
        if isinstance(msg, SyncCells):
            self._apply_cells(msg, req.node)
            return PeerReply()
        if isinstance(msg, SyncRequest):
            self._answer_sync(req.node, msg.htname)
            return PeerReply()
        table = self.tables.get(msg.htname)
        if table is None:
            self.stats.refused += 1
            return PeerReply(500, "Server Internal Error")
        try:
            table._apply(msg, req.node)
        except HtableValueError as exc:  # bad regex, as 5.6.3's regcomp failure
            self.stats.refused += 1
            log.info("htable: 500 to %s: %s", req.node, exc)
            return PeerReply(500, "Server Internal Error")
        self.stats.actions_applied += 1
        return PeerReply()

    def _apply_cells(self, msg: SyncCells, origin: NodeId) -> None:
        groups: dict[str, list[SyncCell]] = {}
        for cell in msg.cells:
            groups.setdefault(cell.htname, []).append(cell)
        for name, cells in groups.items():
            table = self.tables.get(name)
            if table is not None:  # cells of tables we do not hold: skipped, as 5.6.3 does
                table._load(cells, origin)
                self.stats.cells_synced += len(cells)
        if msg.skipped:
            log.info("htable: %d malformed sync cells from %s skipped", msg.skipped, origin)

    def _answer_sync(self, node: NodeId, htname: str | None) -> None:
        if node not in [n.node for n in self.bus.nodes()]:
            # 5.6.3 would broadcast the whole table to every node: we do not amplify
            log.info("htable: sync request from %s, not in the node list: ignored", node)
            return
        cells: list[SyncCell] = []
        for name, table in list(self.tables.items()):
            if htname is None or htname == name:
                cells += table._snapshot()
        self.stats.sync_requests_answered += 1
        self._spawn(self._send_cells(node, list(build_sync_bodies(cells))))

    async def _send_cells(self, node: NodeId, bodies: list[bytes]) -> None:
        window = asyncio.Semaphore(SYNC_WINDOW)

        async def one(body: bytes) -> None:
            async with window:
                if not self.bus.running:
                    return
                self.stats.sync_messages_sent += 1
                try:
                    reply = await self.bus.send(self.channel, node, body, CONTENT_TYPE)
                except DmqError as exc:
                    self.stats.peer_errors += 1
                    log.info("htable sync to %s: %s", node, exc)
                    return
                if reply.code != 200:
                    self.stats.peer_errors += 1
                    log.info("htable sync to %s: %s", node, _outcome(reply))

        await asyncio.gather(*(one(b) for b in bodies))


def _outcome(res: object) -> str:
    if isinstance(res, PeerReply):
        return f"{res.code} {res.reason}"
    return str(res)


class Htable(MutableMapping[str, Value]):
    """A replica of the Kamailio htable ``name`` on ``bus`` (a :class:`Bus` or
    :class:`BusThread`; create it before the bus starts, or at any time after).

    Keys are non-empty ``str``; values ``str`` (Kamailio type 2) or ``int`` (type 0, 32 bits);
    anything Kamailio cannot carry raises :class:`~pymqueue.errors.HtableValueError` (or
    ``TypeError`` for another type). ``autoexpire``/``updateexpire`` must match the table's
    definition on the Kamailio nodes. ``clock`` (Unix seconds) is for tests.
    """

    def __init__(
        self,
        bus: BusLike,
        name: str | HtableDef,
        *,
        autoexpire: int = 0,
        updateexpire: bool = True,
        size: int = 4,
        channel: str = CHANNEL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(name, HtableDef):
            definition = name
        else:
            definition = HtableDef(name, autoexpire, updateexpire, size, channel)
        self.definition = definition
        self.name = definition.name
        self._model = HtableModel(definition)
        self._cond = threading.Condition(threading.RLock())
        self._callbacks: list[Callable[[HtableChange], object]] = []
        self._clock = clock
        self._closed = False
        self.service = HtableService.of(bus, definition.channel)
        self.service.attach(self)

    # -- mapping
    def __getitem__(self, key: str) -> Value:
        with self._cond:
            value = self._model.get(key, self._clock()) if isinstance(key, str) else None
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Value) -> None:
        check_key(key)
        check_value(value)
        need = cell_size(self.name, key, value)
        if need > _CELL_ROOM:
            raise HtableValueError(
                f"{key!r}: {need} bytes, more than one sync message holds ({_CELL_ROOM})"
            )
        body = encode_action(Action.SET, self.name, key, value)
        with self._cond:
            self._model.set(key, value, self._clock())
            self._cond.notify_all()
        self.service.broadcast(body)
        self._emit([HtableChange(self.name, "set", key, value, None)])

    def __delitem__(self, key: str) -> None:
        with self._cond:
            now = self._clock()
            if not isinstance(key, str) or self._model.get(key, now) is None:
                raise KeyError(key)
            old = self._model.delete(key)
            self._cond.notify_all()
        self.service.broadcast(encode_action(Action.DELETE, self.name, key))
        self._emit([HtableChange(self.name, "delete", key, old, None)])

    def forget(self, key: str) -> bool:
        """Delete ``key`` here if present and replicate the delete in any case (what
        ``htable.delete`` does); True if it was present."""
        check_key(key)
        with self._cond:
            old = (
                self._model.delete(key) if self._model.get(key, self._clock()) is not None else None
            )
            self._cond.notify_all()
        self.service.broadcast(encode_action(Action.DELETE, self.name, key))
        if old is not None:
            self._emit([HtableChange(self.name, "delete", key, old, None)])
        return old is not None

    def __iter__(self) -> Iterator[str]:
        with self._cond:
            return iter(self._model.keys(self._clock()))

    def __len__(self) -> int:
        with self._cond:
            return self._model.count(self._clock())

    def __contains__(self, key: object) -> bool:
        with self._cond:
            return isinstance(key, str) and self._model.get(key, self._clock()) is not None

    # -- Kamailio's other operations
    def setex(self, key: str, seconds: int) -> bool:
        """``htable.setex``: the cell expires ``seconds`` from now. Replicated whatever the
        outcome, as Kamailio does; True if a cell was changed here (only tables with
        ``autoexpire`` have per-cell expiry: elsewhere it is a no-op, as in 5.6.3)."""
        check_key(key)
        check_int("seconds", seconds)
        with self._cond:
            done = self._model.set_expire(key, seconds, self._clock())
            self._cond.notify_all()
        self.service.broadcast(encode_action(Action.SET_EXPIRE, self.name, key, seconds))
        if done:
            self._emit([HtableChange(self.name, "setex", key, seconds, None)])
        return done

    def expire_at(self, key: str) -> float | None:
        """Unix time at which ``key`` expires, None if it never does; KeyError if absent."""
        with self._cond:
            when = self._model.expire_at(key, self._clock())
        if when is None:
            raise KeyError(key)
        return when or None

    def rm_prefix(self, prefix: str, on: Match | str = "name") -> list[str]:
        """Remove the cells whose name (or string value, ``on="value"``) starts with
        ``prefix`` (``sht_rm_name(t, "sw", p)``); replicated. Returns the removed keys."""
        return self._remove(Action.RM_PREFIX, prefix, Match.of(on))

    def rm_regex(self, pattern: str, on: Match | str = "name") -> list[str]:
        """Remove the cells whose name (or string value) matches ``pattern`` anywhere,
        case-insensitively (``sht_rm_name_re``); replicated. Python's ``re`` dialect is used
        here, Kamailio's nodes use POSIX ERE: keep to their common subset."""
        return self._remove(Action.RM_REGEX, pattern, Match.of(on))

    def _remove(self, action: Action, pattern: str, on: Match) -> list[str]:
        check_text("pattern", pattern)
        body = encode_action(action, self.name, "", pattern, on)
        with self._cond:
            gone = self._model.remove_matching(action, pattern, on)
            self._cond.notify_all()
        self.service.broadcast(body)
        op = "rm_regex" if action is Action.RM_REGEX else "rm_prefix"
        self._emit([HtableChange(self.name, op, k, v, None) for k, v in gone])
        return [k for k, _ in gone]

    def purge(self) -> list[str]:
        """Drop the expired cells now (they are invisible anyway); ``expired`` changes."""
        with self._cond:
            gone = self._model.purge(self._clock())
        self._emit([HtableChange(self.name, "expired", k, v, None) for k, v in gone])
        return [k for k, _ in gone]

    def sync(self, node: NodeId | str | None = None, *, everyone: bool = False) -> None:
        """Ask for the whole table again: from ``node``, else the first active node, or from
        every active node (``everyone``). The cells arrive asynchronously (no end marker in
        the protocol): wait with :meth:`wait_until`."""
        nid = None if node is None else (node if isinstance(node, NodeId) else _node(node))
        self.service.call_soon(lambda: self.service.request_sync(nid, everyone, self.name))

    def wait_until(self, predicate: Callable[[Htable], bool], timeout: float | None = None) -> None:
        """Block until ``predicate(self)`` is true (checked after every change);
        :class:`~pymqueue.errors.DmqTimeout` after ``timeout`` seconds. Not from the bus
        thread (it applies the remote changes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DmqTimeout(f"htable {self.name!r}: condition not met in {timeout}s")
                # also re-check now and then: expiry changes the table without any event
                self._cond.wait(0.5 if left is None else min(left, 0.5))

    def on_change(self, callback: Callable[[HtableChange], object]) -> None:
        """Call ``callback(change)`` for every change (see :class:`HtableChange`)."""
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[HtableChange], object]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def cells(self) -> list[tuple[str, Value, float | None]]:
        """``(key, value, expire_at)`` of every live cell (expire None: never)."""
        with self._cond:
            return self._model.entries(self._clock())

    def close(self) -> None:
        """Stop replicating (the bus no longer answers for this table). Idempotent."""
        if not self._closed:
            self._closed = True
            self.service.detach(self)

    def __enter__(self) -> Htable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = f" autoexpire={self.definition.autoexpire}" if self.definition.autoexpire else ""
        return f"<pymqueue.dmq.Htable {self.name!r} cells={len(self)}{extra} at {id(self):#x}>"

    # -- for the service (bus thread)
    def _apply(self, msg: ActionMessage, origin: NodeId) -> None:
        changes: list[HtableChange] = []
        with self._cond:
            now = self._clock()
            model = self._model
            if msg.action is Action.SET:
                assert msg.value is not None
                model.set(msg.cname, msg.value, now)
                changes.append(HtableChange(self.name, "set", msg.cname, msg.value, origin))
            elif msg.action is Action.SET_EXPIRE:
                assert isinstance(msg.value, int)
                if model.set_expire(msg.cname, msg.value, now):
                    changes.append(HtableChange(self.name, "setex", msg.cname, msg.value, origin))
            elif msg.action is Action.DELETE:
                old = model.delete(msg.cname)
                if old is not None:
                    changes.append(HtableChange(self.name, "delete", msg.cname, old, origin))
            else:
                assert isinstance(msg.value, str)
                op = "rm_regex" if msg.action is Action.RM_REGEX else "rm_prefix"
                for k, v in model.remove_matching(msg.action, msg.value, Match(msg.mode)):
                    changes.append(HtableChange(self.name, op, k, v, origin))
            self._cond.notify_all()
        self._emit(changes)

    def _load(self, cells: list[SyncCell], origin: NodeId) -> None:
        with self._cond:
            now = self._clock()
            for cell in cells:
                self._model.load(cell, now)
            self._cond.notify_all()
        if self._callbacks:
            self._emit([HtableChange(self.name, "sync", c.cname, c.value, origin) for c in cells])

    def _snapshot(self) -> list[SyncCell]:
        with self._cond:
            return self._model.snapshot(self._clock())

    def _emit(self, changes: list[HtableChange]) -> None:
        for change in changes:
            for cb in list(self._callbacks):
                try:
                    cb(change)
                except Exception:
                    log.exception("htable change callback failed")


def _node(text: str) -> NodeId:
    from pymqueue.dmq._common import node_id  # noqa: PLC0415

    return node_id(text)
