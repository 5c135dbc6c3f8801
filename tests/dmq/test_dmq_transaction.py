"""DMQ transactions: Timer E retransmission, fr_timer, the reply cache, channel handlers,
the hazards of spec §7, source allow-list and signing. Fake clock, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymqueue.dmq import (
    DatagramDropped,
    DmqConfig,
    DmqCore,
    DmqEvent,
    DmqRequest,
    DmqResponse,
    HandlerFailed,
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
from pymqueue.dmq.message import parse_uri, sign
from pymqueue.dmq.transaction import ClientTransactions, ReplyCache, TransactionKind
from pymqueue.errors import DmqError, DmqProtocolError, DmqTimeout

DATA = Path(__file__).parent.parent / "data" / "dmq"
IP = "127.0.0.1"
KAMAILIO_SCHEDULE = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5]
PEER = (IP, 5092)


def nid(port: int) -> NodeId:
    return NodeId(IP, str(port))


def make_core(**kwargs: object) -> DmqCore:
    core = DmqCore(DmqConfig("sip:127.0.0.1:5091", **kwargs))  # type: ignore[arg-type]
    core.start(0.0)
    core.nodes.merge([NodeLine(nid(5092), NodeStatus.ACTIVE, True)])
    return core


def events(core: DmqCore) -> list[DmqEvent]:
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def request(
    channel: str = "mqueue",
    body: bytes = b"hello",
    branch: str | None = None,
    port: int = 5092,
) -> bytes:
    return build_request(
        channel=channel,
        target=parse_uri("sip:127.0.0.1:5091"),
        local=parse_uri(f"sip:127.0.0.1:{port}"),
        body=body,
        content_type="text/plain",
        branch=branch,
    )


def drive(core: DmqCore, until: float) -> list[tuple[float, bytes]]:
    """Run the core's timers until ``until``; return (time, datagram) of everything sent."""
    sent: list[tuple[float, bytes]] = []
    now = 0.0
    while (t := core.get_timer()) is not None and t <= until:
        now = max(now, t)
        core.handle_timer(now)
        sent += [(now, d) for d, _ in core.datagrams_to_send(now)]
    return sent


# ------------------------------------------------------------------ client side


def test_retransmission_schedule_and_fr_timer() -> None:
    core = make_core(ping_interval=1000.0)
    tid = core.send("mqueue", nid(5092), b"x", "text/plain", 0.0)
    [(first, addr)] = core.datagrams_to_send(0.0)
    assert addr == PEER
    sent = [(0.0, first), *drive(core, 40.0)]
    assert [t for t, _ in sent] == KAMAILIO_SCHEDULE
    assert all(d == first for _, d in sent)  # same branch, same bytes
    evs = [e for e in events(core) if isinstance(e, TransactionTimedOut)]
    assert evs == [TransactionTimedOut(tid, nid(5092), "mqueue")]
    exc = evs[0].exception()
    assert isinstance(exc, DmqTimeout)
    assert isinstance(exc, TimeoutError)


def test_configurable_fr_timer() -> None:
    core = make_core(ping_interval=1000.0, fr_timer=10.0)
    core.send("mqueue", nid(5092), b"x", "text/plain", 0.0)
    core.datagrams_to_send(0.0)
    sent = drive(core, 20.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5]
    assert core.get_timer() == 1000.0  # only the ping is left


def test_transactions_unit_schedule() -> None:
    txns = ClientTransactions()
    txns.start(
        id=1,
        kind=TransactionKind.DATA,
        node=nid(1),
        channel="c",
        branch="z9hG4bKa",
        call_id="c",
        datagram=b"d",
        address=(IP, 1),
        now=100.0,
    )
    times = []
    while (t := txns.get_timer()) is not None:
        resend, expired = txns.handle_timer(t)
        if resend:
            times.append(t - 100.0)
        if expired:
            assert t == 130.0
    assert times == KAMAILIO_SCHEDULE[1:]
    assert len(txns) == 0


def test_late_timer_sends_one_copy() -> None:
    txns = ClientTransactions()
    txns.start(
        id=1,
        kind=TransactionKind.DATA,
        node=nid(1),
        channel="c",
        branch="z9hG4bKa",
        call_id="c",
        datagram=b"d",
        address=(IP, 1),
        now=0.0,
    )
    resend, _ = txns.handle_timer(5.0)  # called late: 0.5, 1.5, 3.5 all overdue
    assert len(resend) == 1
    assert txns.get_timer() == 7.5


def reply_to(data: bytes, code: int = 200, reason: str = "OK", body: bytes = b"") -> bytes:
    req = parse_message(data)
    assert isinstance(req, DmqRequest)
    return build_response(req, code, reason, body=body, content_type="text/plain" if body else None)


def test_final_reply_stops_retransmission() -> None:
    core = make_core(ping_interval=1000.0)
    tid = core.send("mqueue", nid(5092), b"x", "text/plain", 0.0)
    [(data, _)] = core.datagrams_to_send(0.0)
    core.receive_datagram(reply_to(data, 200, "OK", b"ack"), PEER, 0.7)
    assert core.datagrams_to_send(0.7) == []
    assert drive(core, 40.0) == []
    evs = [e for e in events(core) if isinstance(e, ReplyReceived)]
    assert evs == [ReplyReceived(tid, nid(5092), "mqueue", 200, "OK", b"ack", "text/plain")]
    # a retransmitted final reply matches nothing and is dropped quietly
    core.receive_datagram(reply_to(data), PEER, 1.0)
    assert [type(e) for e in events(core)] == [DatagramDropped]


def test_error_reply_is_reported() -> None:
    core = make_core(ping_interval=1000.0)
    tid = core.send("mqueue", nid(5092), b"x", "text/plain", 0.0)
    [(data, _)] = core.datagrams_to_send(0.0)
    core.receive_datagram(reply_to(data, 404, "User Not Found"), PEER, 0.1)
    [ev] = [e for e in events(core) if isinstance(e, ReplyReceived)]
    assert (ev.transaction_id, ev.code, ev.reason) == (tid, 404, "User Not Found")


def test_provisional_reply_switches_to_t2() -> None:
    core = make_core(ping_interval=1000.0)
    core.send("mqueue", nid(5092), b"x", "text/plain", 0.0)
    [(data, _)] = core.datagrams_to_send(0.0)
    core.receive_datagram(reply_to(data, 100, "Trying"), PEER, 0.2)
    sent = drive(core, 40.0)
    assert [round(t, 1) for t, _ in sent] == [4.2, 8.2, 12.2, 16.2, 20.2, 24.2, 28.2]
    assert any(isinstance(e, TransactionTimedOut) for e in events(core))


def test_reply_from_other_host_is_ignored() -> None:
    core = make_core(ping_interval=1000.0)
    core.send("mqueue", nid(5092), b"x", "text/plain", 0.0)
    [(data, _)] = core.datagrams_to_send(0.0)
    core.receive_datagram(reply_to(data), ("10.9.9.9", 5092), 0.1)
    assert [type(e) for e in events(core)] == [DatagramDropped]
    assert len(drive(core, 2.0)) == 2  # still retransmitting


def test_broadcast_goes_to_active_nodes_only() -> None:
    core = make_core(ping_interval=1000.0)
    core.nodes.merge(
        [
            NodeLine(nid(5093), NodeStatus.PENDING, True),
            NodeLine(nid(5094), NodeStatus.DISABLED, True),
            NodeLine(nid(5095), NodeStatus.ACTIVE, True),
            NodeLine(NodeId(IP, "5096", "tcp"), NodeStatus.ACTIVE, True),
        ]
    )
    ids = core.broadcast("mqueue", b"x", "text/plain", 0.0)
    assert len(ids) == 2
    assert sorted(a for _, a in core.datagrams_to_send(0.0)) == [PEER, (IP, 5095)]


def test_send_checks_the_node() -> None:
    core = make_core(ping_interval=1000.0)
    with pytest.raises(DmqError):
        core.send("mqueue", nid(5097), b"x", None, 0.0)
    with pytest.raises(DmqError):
        core.send("mqueue", nid(5091), b"x", None, 0.0)
    with pytest.raises(DmqError):
        core.send("notification_peer", nid(5092), b"x", None, 0.0)
    with pytest.raises(DmqProtocolError):
        core.broadcast("mqueue", b"x" * 70000, None, 0.0)
    with pytest.raises(DmqProtocolError):
        core.send("bad channel", nid(5092), b"x", None, 0.0)
    assert core.datagrams_to_send(0.0) == []


# ------------------------------------------------------------------ server side


def test_reply_cache_answers_retransmission_once() -> None:
    core = make_core()
    calls: list[IncomingRequest] = []

    def handler(req: IncomingRequest) -> PeerReply:
        calls.append(req)
        return PeerReply(200, "OK", b"done", "text/plain")

    core.register_peer("mqueue", handler)
    data = request()
    core.receive_datagram(data, PEER, 1.0)
    [(first, addr)] = core.datagrams_to_send(1.0)
    core.receive_datagram(data, PEER, 1.5)
    core.receive_datagram(data, PEER, 2.5)
    again = core.datagrams_to_send(2.5)
    assert addr == PEER
    assert again == [(first, PEER), (first, PEER)]
    assert len(calls) == 1
    assert calls[0].node == nid(5092)
    assert calls[0].known
    assert calls[0].body == b"hello"
    reply = parse_message(first)
    assert isinstance(reply, DmqResponse)
    assert (reply.code, reply.body) == (200, b"done")
    # a new branch is a new request
    core.receive_datagram(request(), PEER, 3.0)
    assert len(calls) == 2


def test_reply_cache_expires() -> None:
    core = make_core(ping_interval=1000.0, reply_cache_ttl=10.0)
    calls = []
    core.register_peer("mqueue", lambda r: calls.append(r) or PeerReply())  # type: ignore[func-returns-value]
    data = request()
    core.receive_datagram(data, PEER, 1.0)
    core.receive_datagram(data, PEER, 10.9)
    assert len(calls) == 1
    core.handle_timer(11.0)
    core.receive_datagram(data, PEER, 11.0)
    assert len(calls) == 2


def test_reply_cache_unit_bounds() -> None:
    cache = ReplyCache(ttl=5.0, max_entries=2)
    for i in range(3):
        cache.put(("k", str(i)), b"r", float(i))
    assert len(cache) == 2
    assert cache.lookup(("k", "0"), 2.0) is None
    assert cache.lookup(("k", "2"), 2.0) == b"r"
    assert cache.get_timer() == 6.0
    cache.expire(7.0)
    assert len(cache) == 0


def test_deferred_reply() -> None:
    core = make_core(ping_interval=1000.0)
    pending: list[IncomingRequest] = []

    def later(req: IncomingRequest) -> None:
        pending.append(req)  # answer later with core.respond()

    core.register_peer("mqueue", later)
    data = request()
    core.receive_datagram(data, PEER, 1.0)
    core.receive_datagram(data, PEER, 1.5)  # retransmission while the app works: silence
    assert core.datagrams_to_send(1.5) == []
    assert len(pending) == 1
    assert core.respond(pending[0].id, PeerReply(202, "Accepted"), 2.0)
    assert not core.respond(pending[0].id, PeerReply(), 2.0)
    [(first, _)] = core.datagrams_to_send(2.0)
    core.receive_datagram(data, PEER, 2.5)
    assert core.datagrams_to_send(2.5) == [(first, PEER)]
    assert len(pending) == 1


def test_handler_failure_gives_500() -> None:
    core = make_core()

    def boom(req: IncomingRequest) -> PeerReply:
        raise RuntimeError("boom")

    core.register_peer("mqueue", boom)
    core.register_peer("bad", lambda r: PeerReply(200, "OK\r\nX: y"))
    core.register_peer("prov", lambda r: PeerReply(180, "Ringing"))
    for channel in ("mqueue", "bad", "prov"):
        core.receive_datagram(request(channel), PEER, 1.0)
        [(data, _)] = core.datagrams_to_send(1.0)
        reply = parse_message(data)
        assert isinstance(reply, DmqResponse)
        assert (reply.code, reply.reason) == (500, "Server Internal Error")
        assert any(isinstance(e, HandlerFailed) and e.channel == channel for e in events(core))


def test_register_peer_checks() -> None:
    core = make_core()
    with pytest.raises(ValueError, match="notification"):
        core.register_peer("notification_peer", lambda r: PeerReply())
    with pytest.raises(ValueError, match="channel"):
        core.register_peer("a b", lambda r: PeerReply())
    core.register_peer("x", lambda r: PeerReply())
    core.unregister_peer("x")
    core.receive_datagram(request("x"), PEER, 1.0)
    [(data, _)] = core.datagrams_to_send(1.0)
    assert data.startswith(b"SIP/2.0 404 User Not Found\r\n")


def answer(core: DmqCore, data: bytes, now: float = 1.0) -> DmqResponse | None:
    core.receive_datagram(data, PEER, now)
    out = core.datagrams_to_send(now)
    replies = [parse_message(d) for d, _ in out if d.startswith(b"SIP/2.0")]
    assert len(replies) <= 1
    reply = replies[0] if replies else None
    assert reply is None or isinstance(reply, DmqResponse)
    return reply


def test_unknown_channel_404_like_vector_24() -> None:
    core = make_core()
    reply = answer(core, request("nosuch"))
    v24 = parse_message((DATA / "24-unknown-channel-404.sip").read_bytes())
    assert reply is not None
    assert (reply.code, reply.reason) == (404, "User Not Found")
    assert reply.header_names() == v24.header_names()


def test_kamailio_custom_channel_vector_13() -> None:
    core = DmqCore(DmqConfig("sip:127.0.0.1:5093"))
    got: list[IncomingRequest] = []
    core.register_peer("mqueue", lambda r: got.append(r) or PeerReply())  # type: ignore[func-returns-value]
    core.receive_datagram((DATA / "13-custom-channel-request.sip").read_bytes(), (IP, 5091), 0.0)
    [(data, addr)] = core.datagrams_to_send(0.0)
    assert addr == (IP, 5091)
    reply = parse_message(data)
    v16 = parse_message((DATA / "16-custom-channel-200-script.sip").read_bytes())
    assert reply.header_names() == v16.header_names()
    assert (reply.branch, reply.call_id, reply.from_) == (v16.branch, v16.call_id, v16.from_)
    assert got[0].body == b"hello-bus-1"
    assert not got[0].known  # :5091 is not in our list


def test_rport_is_honoured() -> None:
    core = make_core()
    core.register_peer("mqueue", lambda r: PeerReply())
    data = (DATA / "17-foreign-join-request.sip").read_bytes()
    core.receive_datagram(data, (IP, 40000), 0.0)
    [(out, addr)] = [(d, a) for d, a in core.datagrams_to_send(0.0) if d.startswith(b"SIP")]
    assert addr == (IP, 40000)  # always answer the source address
    reply = parse_message(out)
    assert ("rport", "40000") in reply.via.params
    assert ("received", IP) in reply.via.params


# ------------------------------------------------------------------ §7 hazards


NOTIFY_HEAD = (
    "KDMQ sip:notification_peer@127.0.0.1:5091 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5092;branch=z9hG4bK{branch}\r\n"
    "To: <sip:notification_peer@127.0.0.1:5091>\r\n"
    "From: <sip:notification_peer@127.0.0.1:5092>;tag=1\r\n"
    "CSeq: 10 KDMQ\r\nCall-ID: c@h\r\nMax-Forwards: 1\r\nContent-Type: text/plain\r\n"
)


def notification(body: bytes, branch: str, length: bool = True) -> bytes:
    head = NOTIFY_HEAD.format(branch=branch)
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


HAZARDS = {
    # input that wedges or misleads Kamailio 5.6.3 → our answer (None = dropped)
    "last line without terminator": (notification(b"sip:127.0.0.1:5097;status=active", "a1"), 200),
    "line without params and terminator": (notification(b"sip:127.0.0.1:5095", "a2"), 200),
    "blank line in body": (
        notification(b"sip:127.0.0.1:5097;status=active\r\n\r\nsip:127.0.0.1:5098\r\n", "a3"),
        400,
    ),
    "unknown status": (notification(b"sip:127.0.0.1:5097;status=up\r\n", "a4"), 400),
    "host name": (notification(b"sip:no-such-host.invalid:5097;status=active\r\n", "a5"), 200),
    "no content-length": (
        notification(b"sip:127.0.0.1:5097;status=active\r\n", "a6", length=False),
        400,
    ),
    "r-uri without user": (
        request("mqueue", branch="z9hG4bKa7").replace(
            b"KDMQ sip:mqueue@127.0.0.1:5091", b"KDMQ sip:127.0.0.1:5091"
        ),
        400,
    ),
    "htable {}": (request("htable", b"{}", branch="z9hG4bKa8"), 404),
    "other method": (request("mqueue", branch="z9hG4bKa9").replace(b"KDMQ", b"OPTIONS"), 405),
    "garbage": (b"\x00\xff" * 100, None),
    "truncated datagram": (request("mqueue", branch="z9hG4bKb1")[:120], None),
}


@pytest.mark.parametrize("name", sorted(HAZARDS))
def test_kamailio_hazards_are_handled(name: str) -> None:
    data, code = HAZARDS[name]
    core = make_core()
    reply = answer(core, data)
    if code is None:
        assert reply is None
        assert any(isinstance(e, DatagramDropped) for e in events(core))
    else:
        assert reply is not None
        assert reply.code == code
        # answered again identically on retransmission
        core.receive_datagram(data, PEER, 1.2)
        [(again, _)] = core.datagrams_to_send(1.2)
        assert parse_message(again).code == code  # type: ignore[union-attr]
    # and the core still works afterwards
    ok = answer(core, notification(b"sip:127.0.0.1:5092;status=active\r\n", "zz"), 2.0)
    assert ok is not None
    assert ok.code == 200
    assert core.nodes.status(NodeId("no-such-host.invalid", "5097")) is None
    if name == "last line without terminator":
        assert core.nodes.status(nid(5097)) is NodeStatus.ACTIVE
    if name == "line without params and terminator":
        assert core.nodes.status(nid(5095)) is NodeStatus.PENDING


# ------------------------------------------------------------------ allow-list and signing


def test_allow_networks() -> None:
    core = make_core(allow_networks=("127.0.0.0/8", "::1/128"))
    core.register_peer("mqueue", lambda r: PeerReply())
    assert answer(core, request()) is not None
    core.receive_datagram(request(), ("10.0.0.1", 5092), 1.0)
    core.receive_datagram(request(), ("::ffff:10.0.0.1", 5092), 1.0)
    core.receive_datagram(request(), ("not-an-ip", 5092), 1.0)
    assert core.datagrams_to_send(1.0) == []
    core.receive_datagram(request(), ("::ffff:127.0.0.1", 5092), 1.0)
    assert len(core.datagrams_to_send(1.0)) == 1


def test_secret_signs_and_checks() -> None:
    secret = b"k" * 32
    a = DmqCore(DmqConfig("sip:127.0.0.1:5091", secret=secret))
    b = DmqCore(
        DmqConfig(
            "sip:127.0.0.1:5092", notification_addresses=("sip:127.0.0.1:5091",), secret=secret
        )
    )
    a.start(0.0)
    b.start(0.0)
    cores = {(IP, 5091): a, (IP, 5092): b}
    for _ in range(5):
        for src, core in cores.items():
            for data, dst in core.datagrams_to_send(0.0):
                assert b"\r\nX-Pymqueue-Signature: v1=" in data
                cores[dst].receive_datagram(data, src, 0.0)
    assert a.nodes.status(nid(5092)) is NodeStatus.ACTIVE
    assert b.nodes.status(nid(5091)) is NodeStatus.ACTIVE
    events(a)
    # unsigned, wrongly signed and tampered messages are dropped without an answer
    a.register_peer("mqueue", lambda r: PeerReply())
    plain = request()
    for data in (plain, sign(plain, b"other"), sign(plain, secret).replace(b"hello", b"jello")):
        a.receive_datagram(data, PEER, 1.0)
    assert a.datagrams_to_send(1.0) == []
    assert [type(e) for e in events(a)] == [DatagramDropped] * 3
    a.receive_datagram(sign(plain, secret), PEER, 1.0)
    assert len(a.datagrams_to_send(1.0)) == 1


def test_allow_networks_also_filter_node_lines() -> None:
    core = make_core(allow_networks=("127.0.0.0/8",))
    reply = answer(
        core,
        notification(
            b"sip:10.1.1.1:5060;status=active\r\nsip:127.0.0.1:5097;status=active\r\n", "nl"
        ),
    )
    assert reply is not None
    assert reply.code == 200
    assert core.nodes.status(NodeId("10.1.1.1", "5060")) is None
    assert core.nodes.status(nid(5097)) is NodeStatus.ACTIVE


def test_node_list_is_capped() -> None:
    core = make_core(max_nodes=4)
    body = b"".join(b"sip:127.0.0.1:%d;status=active\r\n" % p for p in range(6000, 6010))
    reply = answer(core, notification(body, "cap"))
    assert reply is not None
    assert reply.code == 200
    assert len(core.nodes) == 4
