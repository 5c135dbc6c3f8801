"""SIP transactions for DMQ over UDP, sans-I/O: client retransmission and a server reply cache.

:class:`ClientTransactions` keeps the KDMQ requests we sent that have no final reply yet. Each
is retransmitted on SIP Timer E (first copy at ``t``, then ``t+T1``, doubling up to ``T2``:
``0, 0.5, 1.5, 3.5, 7.5, 11.5 … 27.5`` s with the defaults, as Kamailio's tm) until a final
reply, or until ``fr_timer`` (default 30 s, Kamailio's default, not 64·T1) ends it as a
timeout. A provisional reply switches retransmission to every ``T2``.

:class:`ReplyCache` is the server side Kamailio lacks: the reply to each request is kept per
branch (RFC 3261 §17.2.3 key: branch, sent-by, method) for ``ttl`` seconds, so a retransmitted
request is answered with the same bytes and not handed to the application again.

Nothing here does I/O or reads a clock: every method takes ``now`` (seconds, any monotonic
origin) and :meth:`get_timer` says when the owner must call ``handle_timer``/``expire`` next.

Cost: nothing here scans the pending set. Client transactions sit in a dict by branch (reply
matching) and in a binary heap by their next due time (next copy or ``fr_timer``), so starting
one, matching a reply and :meth:`~ClientTransactions.get_timer` are O(1) or O(log n), and
:meth:`~ClientTransactions.handle_timer` touches only what is due. A finished transaction
leaves a stale heap entry behind (lazy deletion); when stale entries outnumber live ones the
heap is rebuilt, so its size stays below ``2 * pending + 64``. The reply cache is kept in
expiry order (every entry lives ``ttl``), so expiry pops from its front.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from pymqueue.dmq.message import BRANCH_COOKIE, DmqRequest, DmqResponse
from pymqueue.dmq.nodes import NodeId, NodeStatus

__all__ = [
    "DEFAULT_FR_TIMER",
    "DEFAULT_T1",
    "DEFAULT_T2",
    "ClientTransaction",
    "ClientTransactions",
    "ReplyCache",
    "TransactionKind",
]

DEFAULT_T1 = 0.5
DEFAULT_T2 = 4.0
DEFAULT_FR_TIMER = 30.0


class TransactionKind(enum.Enum):
    NOTIFICATION = "notification"
    """Join, ping, re-broadcast or leave: the outcome changes the node's status."""
    DATA = "data"
    """A message of an application channel (send/broadcast): the outcome is an event."""


@dataclass(slots=True, eq=False)
class ClientTransaction:
    """One KDMQ request we sent and its timers."""

    id: int
    kind: TransactionKind
    node: NodeId
    channel: str
    branch: str
    call_id: str
    datagram: bytes
    address: tuple[str, int]
    started: float
    deadline: float
    next_send: float | None
    interval: float
    status_at_send: NodeStatus | None = None
    sends: int = 1
    provisional: bool = field(default=False)
    timer_seq: int = field(default=-1, repr=False)
    """Sequence number of this transaction's live heap entry (-1: none, finished)."""


class ClientTransactions:
    """The set of our pending client transactions, keyed by branch, timed by a heap."""

    def __init__(
        self, t1: float = DEFAULT_T1, t2: float = DEFAULT_T2, fr_timer: float = DEFAULT_FR_TIMER
    ) -> None:
        self.t1, self.t2, self.fr_timer = t1, t2, fr_timer
        self._by_branch: dict[str, ClientTransaction] = {}
        # (due time, sequence, transaction); an entry is live iff its sequence is the
        # transaction's timer_seq (lazy deletion, see the module docstring)
        self._heap: list[tuple[float, int, ClientTransaction]] = []
        self._seq = itertools.count()

    @property
    def heap_size(self) -> int:
        """Entries in the timer heap, live and stale (at most ``2 * len(self) + 64``)."""
        return len(self._heap)

    def _schedule(self, txn: ClientTransaction) -> None:
        nxt = txn.next_send
        when = txn.deadline if nxt is None or nxt > txn.deadline else nxt
        seq = next(self._seq)
        txn.timer_seq = seq
        heapq.heappush(self._heap, (when, seq, txn))

    def _remove(self, txn: ClientTransaction) -> None:
        if self._by_branch.get(txn.branch) is txn:
            del self._by_branch[txn.branch]
        txn.timer_seq = -1

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._by_branch) + 64:
            self._heap = [e for e in self._heap if e[2].timer_seq == e[1]]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._by_branch)

    def __iter__(self) -> Iterator[ClientTransaction]:
        return iter(list(self._by_branch.values()))

    def start(
        self,
        *,
        id: int,
        kind: TransactionKind,
        node: NodeId,
        channel: str,
        branch: str,
        call_id: str,
        datagram: bytes,
        address: tuple[str, int],
        now: float,
        status_at_send: NodeStatus | None = None,
    ) -> ClientTransaction:
        """Register a transaction whose first copy the caller sends now."""
        txn = ClientTransaction(
            id=id,
            kind=kind,
            node=node,
            channel=channel,
            branch=branch,
            call_id=call_id,
            datagram=datagram,
            address=address,
            started=now,
            deadline=now + self.fr_timer,
            next_send=now + self.t1 if now + self.t1 < now + self.fr_timer else None,
            interval=self.t1,
            status_at_send=status_at_send,
        )
        old = self._by_branch.get(branch)
        if old is not None:  # a branch reused (never by us: 128-bit random): forget the old
            old.timer_seq = -1
        self._by_branch[branch] = txn
        self._schedule(txn)
        self._compact()
        return txn

    def match(self, response: DmqResponse) -> ClientTransaction | None:
        """The transaction a reply belongs to (same top-Via branch, Call-ID, CSeq method)."""
        branch = response.branch
        if branch is None:
            return None
        txn = self._by_branch.get(branch)
        if txn is None or txn.call_id != response.call_id or response.cseq_method != "KDMQ":
            return None
        return txn

    def on_response(
        self, response: DmqResponse, now: float, txn: ClientTransaction | None = None
    ) -> ClientTransaction | None:
        """Feed a reply; return the transaction it completes (final replies only).
        ``txn``: what :meth:`match` returned for it, if the caller asked already."""
        if txn is None:
            txn = self.match(response)
        if txn is None:
            return None
        if response.code < 200:
            if not txn.provisional:
                txn.provisional = True
                txn.interval = self.t2
                nxt = now + self.t2
                txn.next_send = nxt if nxt < txn.deadline else None
                self._schedule(txn)  # the old entry becomes stale
            return None
        self._remove(txn)
        if len(self._heap) > 2 * len(self._by_branch) + 64:
            self._compact()
        return txn

    def handle_timer(
        self, now: float
    ) -> tuple[list[tuple[bytes, tuple[str, int]]], list[ClientTransaction]]:
        """Return ``(datagrams to retransmit, transactions that timed out)`` at ``now``."""
        due: list[ClientTransaction] = []
        expired: list[ClientTransaction] = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, txn = heapq.heappop(self._heap)
            if txn.timer_seq != seq:
                continue  # stale: finished, or rescheduled since
            if now >= txn.deadline:
                self._remove(txn)
                expired.append(txn)
                continue
            if txn.next_send is not None and now >= txn.next_send:
                due.append(txn)
                txn.sends += 1
                while txn.next_send is not None and txn.next_send <= now:
                    if not txn.provisional:
                        txn.interval = min(txn.interval * 2, self.t2)
                    nxt = txn.next_send + txn.interval
                    txn.next_send = nxt if nxt < txn.deadline else None
            self._schedule(txn)
        self._compact()
        # in start order (ids grow with starts), as the scan this replaced gave them
        due.sort(key=lambda t: t.id)
        expired.sort(key=lambda t: t.id)
        return [(t.datagram, t.address) for t in due], expired

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].timer_seq != heap[0][1]:
            heapq.heappop(heap)  # drop stale entries from the top
        return heap[0][0] if heap else None


class _Pending:
    """Marker: the request was handed to the application, whose reply is not in yet."""


PENDING = _Pending()

CacheKey = tuple[str, ...]


class ReplyCache:
    """Replies we sent, per request, for ``ttl`` seconds (at most ``max_entries``)."""

    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.evicted = 0
        """Entries pushed out by ``max_entries`` before their ``ttl`` (a retransmission of
        such a request is handed to the application again)."""
        self._entries: OrderedDict[CacheKey, tuple[float, bytes | _Pending]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(request: DmqRequest) -> CacheKey:
        via = request.via
        branch = via.branch
        if branch and branch.startswith(BRANCH_COOKIE):
            return ("3261", branch, via.sent_by(), request.method)
        return (
            "2543",
            request.call_id,
            request.from_.tag or "",
            str(request.cseq),
            request.method,
            via.sent_by(),
            branch or "",
        )

    def lookup(self, key: CacheKey, now: float) -> bytes | _Pending | None:
        """The cached reply, :data:`PENDING`, or None if the request is new (or expired)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, key: CacheKey, reply: bytes | _Pending, now: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (now + self.ttl, reply)
        while len(self._entries) > self.max_entries:
            _, (deadline, _) = self._entries.popitem(last=False)
            if deadline > now:
                self.evicted += 1

    def expire(self, now: float) -> None:
        while self._entries:
            key, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[key]

    def get_timer(self) -> float | None:
        if not self._entries:
            return None
        return next(iter(self._entries.values()))[0]
