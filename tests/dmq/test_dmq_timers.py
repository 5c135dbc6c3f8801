"""The core's timers without scans: the transaction heap, deferred requests and the reply cache
in expiry order, and their bounds. Fake clock, no sockets.

The heap is checked against the scan it replaced (:class:`ScanModel`, the pre-heap
``ClientTransactions`` algorithm): for any sequence of starts, replies and clock steps, both
send the same retransmissions, time out the same transactions and name the same next timer.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from pymqueue.dmq import (
    DmqConfig,
    DmqCore,
    IncomingRequest,
    NodeId,
    NodeLine,
    NodeStatus,
    PeerReply,
    ReplyReceived,
    TransactionTimedOut,
    build_request,
    build_response,
    parse_message,
)
from pymqueue.dmq.message import DmqRequest, DmqResponse, parse_uri
from pymqueue.dmq.transaction import ClientTransactions, ReplyCache, TransactionKind

IP = "127.0.0.1"
PEER = (IP, 5092)
T1, T2, FR = 0.5, 4.0, 30.0


def nid(port: int) -> NodeId:
    return NodeId(IP, str(port))


def start(txns: ClientTransactions, i: int, now: float) -> None:
    txns.start(id=i, kind=TransactionKind.DATA, node=nid(5092), channel="c",
               branch=f"z9hG4bK{i}", call_id=f"c{i}", datagram=b"d%d" % i, address=PEER,
               now=now)  # fmt: skip


def reply(i: int, code: int) -> DmqResponse:
    req = build_request(channel="c", target=parse_uri("sip:127.0.0.1:5092"),
                        local=parse_uri("sip:127.0.0.1:5091"), body=b"", content_type=None,
                        branch=f"z9hG4bK{i}", call_id=f"c{i}")  # fmt: skip
    parsed = parse_message(req)
    assert isinstance(parsed, DmqRequest)
    resp = parse_message(build_response(parsed, code, "R"))
    assert isinstance(resp, DmqResponse)
    return resp


@dataclass
class _Model:
    deadline: float
    next_send: float | None
    interval: float
    provisional: bool = False


class ScanModel:
    """The pre-heap algorithm: every call scans every pending transaction."""

    def __init__(self) -> None:
        self.txns: dict[int, _Model] = {}

    def start(self, i: int, now: float) -> None:
        self.txns[i] = _Model(now + FR, now + T1 if T1 < FR else None, T1)

    def on_response(self, i: int, code: int, now: float) -> bool:
        t = self.txns.get(i)
        if t is None:
            return False
        if code < 200:
            if not t.provisional:
                t.provisional, t.interval = True, T2
                t.next_send = now + T2 if now + T2 < t.deadline else None
            return False
        del self.txns[i]
        return True

    def handle_timer(self, now: float) -> tuple[list[int], list[int]]:
        resend, expired = [], []
        for i, t in list(self.txns.items()):
            if now >= t.deadline:
                del self.txns[i]
                expired.append(i)
                continue
            if t.next_send is not None and now >= t.next_send:
                resend.append(i)
                while t.next_send is not None and t.next_send <= now:
                    if not t.provisional:
                        t.interval = min(t.interval * 2, T2)
                    nxt = t.next_send + t.interval
                    t.next_send = nxt if nxt < t.deadline else None
        return resend, expired

    def get_timer(self) -> float | None:
        times = [t.deadline for t in self.txns.values()]
        times += [t.next_send for t in self.txns.values() if t.next_send is not None]
        return min(times) if times else None


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(1, 5)),
        st.tuples(st.just("final"), st.integers(0, 60)),
        st.tuples(st.just("provisional"), st.integers(0, 60)),
        st.tuples(st.just("step"), st.floats(0.0, 9.0)),
        st.tuples(st.just("timer"), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_heap_matches_the_scan_it_replaced(ops: list[tuple[str, float]]) -> None:
    heap, model = ClientTransactions(T1, T2, FR), ScanModel()
    now, n = 0.0, 0
    for op, arg in ops:
        if op == "start":
            for _ in range(int(arg)):
                start(heap, n, now)
                model.start(n, now)
                n += 1
        elif op in ("final", "provisional"):
            code = 200 if op == "final" else 180
            done = heap.on_response(reply(int(arg), code), now)
            assert (done is not None) == model.on_response(int(arg), code, now)
        elif op == "step":
            now += arg
        else:  # jump to the next timer, as the adapter does
            t = heap.get_timer()
            assert t == model.get_timer()
            now = max(now, t) if t is not None else now
        resend, expired = heap.handle_timer(now)
        m_resend, m_expired = model.handle_timer(now)
        assert [int(d[1:]) for d, _ in resend] == m_resend  # same order too
        assert [t.id for t in expired] == m_expired
        assert heap.get_timer() == model.get_timer()
        assert len(heap) == len(model.txns)
        assert heap.heap_size <= 2 * len(heap) + 64


def test_heap_stays_bounded_under_churn() -> None:
    """100 000 transactions answered one by one: the heap never holds more than
    ``2 * pending + 64`` entries, and nothing is left once all are answered."""
    txns = ClientTransactions(T1, T2, FR)
    window = 1000
    largest = 0
    for i in range(100_000):
        start(txns, i, i * 1e-4)
        if i >= window:
            assert txns.on_response(reply(i - window, 200), i * 1e-4) is not None
        largest = max(largest, txns.heap_size)
        assert len(txns) == min(i + 1, window)
    assert largest <= 2 * window + 64
    for i in range(100_000 - window, 100_000):
        assert txns.on_response(reply(i, 200), 10.0) is not None
    assert len(txns) == 0
    assert txns.get_timer() is None
    assert txns.heap_size <= 64


def test_due_work_only_and_timeouts_in_order() -> None:
    """10 000 pending: a timer call returns only what is due; fr_timer ends each at its time."""
    txns = ClientTransactions(T1, T2, FR)
    for i in range(10_000):
        start(txns, i, i * 0.001)  # started over 10 s
    resend, expired = txns.handle_timer(0.5)  # only #0 is due for its first copy
    assert [d for d, _ in resend] == [b"d0"]
    assert expired == []
    assert txns.get_timer() == 0.501
    resend, expired = txns.handle_timer(30.0025)  # #0..#2 have reached fr_timer
    assert [t.id for t in expired] == [0, 1, 2]
    assert len(txns) == 9997


# ------------------------------------------------------------------ core: deferred and cache


def make_core(**kwargs: object) -> DmqCore:
    core = DmqCore(DmqConfig("sip:127.0.0.1:5091", ping_interval=1000.0, **kwargs))  # type: ignore[arg-type]
    core.start(0.0)
    core.nodes.merge([NodeLine(nid(5092), NodeStatus.ACTIVE, True)])
    core.datagrams_to_send(0.0)
    return core


def request(i: int) -> bytes:
    return build_request(channel="mqueue", target=parse_uri("sip:127.0.0.1:5091"),
                         local=parse_uri("sip:127.0.0.1:5092"), body=b"%d" % i,
                         content_type="text/plain", branch=f"z9hG4bKr{i}")  # fmt: skip


def test_deferred_requests_bounded_oldest_dropped_and_expired_in_order() -> None:
    core = make_core(max_deferred=3, fr_timer=2.0, t2=1.0)  # reply cache ttl = 3 s
    held: list[IncomingRequest] = []
    core.register_peer("mqueue", held.append)
    for i in range(5):
        core.receive_datagram(request(i), PEER, 10.0 + i * 0.1)
    assert len(held) == 5
    assert core.deferred_requests == 3
    assert core.deferred_dropped == 2
    assert not core.respond(held[0].id, PeerReply(), 10.5)  # forgotten: the oldest two
    assert not core.respond(held[1].id, PeerReply(), 10.5)
    assert core.respond(held[2].id, PeerReply(), 10.5)
    assert core.deferred_requests == 2
    assert len(core.datagrams_to_send(10.5)) == 1
    core.handle_timer(13.25)  # the cache entries of #0, #1 (13.0, 13.1) expire
    assert core.deferred_requests == 2
    assert core.get_timer() == 13.3  # the oldest deferred deadline (10.3 + 3)
    core.handle_timer(13.3)
    assert core.deferred_requests == 1
    assert not core.respond(held[3].id, PeerReply(), 13.3)
    assert core.respond(held[4].id, PeerReply(), 13.3)


def test_reply_cache_counts_early_evictions_only() -> None:
    cache = ReplyCache(ttl=5.0, max_entries=2)
    for i in range(4):
        cache.put(("k", str(i)), b"r", float(i))
    assert cache.evicted == 2  # entries 0 and 1 went before their ttl
    cache.expire(100.0)
    cache.put(("k", "4"), b"r", 100.0)
    cache.put(("k", "5"), b"r", 100.0)
    cache.put(("k", "6"), b"r", 200.0)  # pushes out "4", already past its ttl
    assert cache.evicted == 2


def test_core_answers_and_times_out_with_10000_pending() -> None:
    """The core with 10 000 requests of ours pending: a peer's reply to one is matched, a
    request from the peer is answered, and the rest time out at fr_timer."""
    core = make_core(fr_timer=5.0)
    core.register_peer("mqueue", lambda r: PeerReply(200, "OK", b"pong", "text/plain"))
    tids = [core.send("mqueue", nid(5092), b"x", "text/plain", 1.0) for _ in range(10_000)]
    sent = core.datagrams_to_send(1.0)
    assert len(sent) == 10_000
    assert core.pending_transactions == 10_000
    first = parse_message(sent[0][0])
    assert isinstance(first, DmqRequest)
    core.receive_datagram(build_response(first, 200, "OK"), PEER, 1.2)
    assert isinstance(core.next_event(), ReplyReceived)
    core.receive_datagram(request(1), PEER, 1.2)
    [(answer, _)] = core.datagrams_to_send(1.2)
    resp = parse_message(answer)
    assert isinstance(resp, DmqResponse)
    assert resp.code == 200
    assert core.pending_transactions == 9_999
    t = core.get_timer()
    while t is not None and t <= 6.0:
        core.handle_timer(t)
        core.datagrams_to_send(t)
        t = core.get_timer()
    timed_out = []
    while (ev := core.next_event()) is not None:
        assert isinstance(ev, TransactionTimedOut)
        timed_out.append(ev.transaction_id)
    assert sorted(timed_out) == tids[1:]
    assert core.pending_transactions == 0
