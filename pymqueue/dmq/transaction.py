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
"""

from __future__ import annotations

import enum
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


class ClientTransactions:
    """The set of our pending client transactions, keyed by branch."""

    def __init__(
        self, t1: float = DEFAULT_T1, t2: float = DEFAULT_T2, fr_timer: float = DEFAULT_FR_TIMER
    ) -> None:
        self.t1, self.t2, self.fr_timer = t1, t2, fr_timer
        self._by_branch: dict[str, ClientTransaction] = {}

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
        self._by_branch[branch] = txn
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

    def on_response(self, response: DmqResponse, now: float) -> ClientTransaction | None:
        """Feed a reply; return the transaction it completes (final replies only)."""
        txn = self.match(response)
        if txn is None:
            return None
        if response.code < 200:
            if not txn.provisional:
                txn.provisional = True
                txn.interval = self.t2
                nxt = now + self.t2
                txn.next_send = nxt if nxt < txn.deadline else None
            return None
        del self._by_branch[txn.branch]
        return txn

    def handle_timer(
        self, now: float
    ) -> tuple[list[tuple[bytes, tuple[str, int]]], list[ClientTransaction]]:
        """Return ``(datagrams to retransmit, transactions that timed out)`` at ``now``."""
        resend: list[tuple[bytes, tuple[str, int]]] = []
        expired: list[ClientTransaction] = []
        for txn in list(self._by_branch.values()):
            if now >= txn.deadline:
                del self._by_branch[txn.branch]
                expired.append(txn)
                continue
            if txn.next_send is not None and now >= txn.next_send:
                resend.append((txn.datagram, txn.address))
                txn.sends += 1
                while txn.next_send is not None and txn.next_send <= now:
                    if not txn.provisional:
                        txn.interval = min(txn.interval * 2, self.t2)
                    nxt = txn.next_send + txn.interval
                    txn.next_send = nxt if nxt < txn.deadline else None
        return resend, expired

    def get_timer(self) -> float | None:
        times = [t.deadline for t in self._by_branch.values()]
        times += [t.next_send for t in self._by_branch.values() if t.next_send is not None]
        return min(times) if times else None


class _Pending:
    """Marker: the request was handed to the application, whose reply is not in yet."""


PENDING = _Pending()

CacheKey = tuple[str, ...]


class ReplyCache:
    """Replies we sent, per request, for ``ttl`` seconds (at most ``max_entries``)."""

    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
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
            self._entries.popitem(last=False)

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
