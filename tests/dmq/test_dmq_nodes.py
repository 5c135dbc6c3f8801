"""DMQ membership: node-list lines, merge rules and the state machine of spec §3, run on a
simulated network with a fake clock (deterministic, no sockets, no sleeping)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from pymqueue.dmq import (
    DmqConfig,
    DmqCore,
    DmqEvent,
    DmqRequest,
    DmqResponse,
    Joined,
    NodeDown,
    NodeId,
    NodeLine,
    NodeList,
    NodeStatus,
    NodeUp,
    parse_message,
    parse_node_list,
)
from pymqueue.dmq.nodes import parse_node_line
from pymqueue.errors import ConfigError, DmqProtocolError

A, P, D, T = NodeStatus.ACTIVE, NodeStatus.PENDING, NodeStatus.DISABLED, NodeStatus.TIMEOUT
DATA = Path(__file__).parent.parent / "data" / "dmq"
IP = "127.0.0.1"
Address = tuple[str, int]


def nid(port: int) -> NodeId:
    return NodeId(IP, str(port))


class Net:
    """A lossless loopback network of DmqCores; dead addresses swallow datagrams."""

    def __init__(self, ping_interval: float = 5.0, fr_timer: float = 30.0) -> None:
        self.now = 0.0
        self.ping_interval = ping_interval
        self.fr_timer = fr_timer
        self.cores: dict[Address, DmqCore] = {}
        self.events: dict[Address, list[DmqEvent]] = {}
        self.sent: list[tuple[float, Address, Address, bytes]] = []

    def add(self, port: int, notify: Iterable[int] = (), start: bool = True) -> DmqCore:
        cfg = DmqConfig(
            f"sip:{IP}:{port}",
            notification_addresses=tuple(f"sip:{IP}:{p}" for p in notify),
            ping_interval=self.ping_interval,
            fr_timer=self.fr_timer,
        )
        core = DmqCore(cfg)
        self.cores[(IP, port)] = core
        self.events[(IP, port)] = []
        if start:
            core.start(self.now)
            self.flush()
        return core

    def kill(self, port: int) -> None:
        del self.cores[(IP, port)]

    def flush(self) -> None:
        for _ in range(10_000):
            moved = False
            for src, core in list(self.cores.items()):
                for data, dst in core.datagrams_to_send(self.now):
                    moved = True
                    self.sent.append((self.now, src, dst, data))
                    target = self.cores.get(dst)
                    if target is not None:
                        target.receive_datagram(data, src, self.now)
                while (ev := core.next_event()) is not None:
                    self.events[src].append(ev)
            if not moved:
                return
        raise AssertionError("network did not settle")

    def run_until(self, t: float) -> None:
        while True:
            timers = [c.get_timer() for c in self.cores.values()]
            due = [x for x in timers if x is not None]
            nxt = min(due) if due else None
            if nxt is None or nxt > t:
                break
            self.now = max(self.now, nxt)
            for core in list(self.cores.values()):
                timer = core.get_timer()
                if timer is not None and timer <= self.now:
                    core.handle_timer(self.now)
            self.flush()
        self.now = t
        self.flush()

    def status(self, observer: int, port: int) -> NodeStatus | None:
        return self.cores[(IP, observer)].nodes.status(nid(port))


# ------------------------------------------------------------------ lines


@pytest.mark.parametrize(
    ("line", "status", "has_params"),
    [
        ("sip:127.0.0.1:5092;status=active", A, True),
        ("sip:127.0.0.1:5092;status=pending", P, True),
        ("sip:127.0.0.1:5092;status=disabled", D, True),
        ("sip:127.0.0.1:5092;status=timeout", T, True),
        ("sip:127.0.0.1:5092", None, False),
        ("sip:127.0.0.1:5092;foo=bar", None, True),
        ("sip:127.0.0.1:5092;foo;status=active", A, True),
    ],
)
def test_parse_node_line(line: str, status: NodeStatus | None, has_params: bool) -> None:
    parsed = parse_node_line(line)
    assert parsed.node == nid(5092)
    assert (parsed.status, parsed.has_params) == (status, has_params)


def test_node_identity_is_literal() -> None:
    assert parse_node_line("sip:h.example:5060").node != parse_node_line("sip:h.example").node
    udp = parse_node_line("sip:1.2.3.4:5060;transport=udp").node
    assert udp != parse_node_line("sip:1.2.3.4:5060").node
    assert udp.transport == "udp"
    assert str(parse_node_line("sip:[::1]:5060;status=active").node) == "sip:[::1]:5060"


@pytest.mark.parametrize(
    "body",
    [
        b"sip:127.0.0.1:5092;status=active\r\nsip:127.0.0.1:5093;status=active\r\n",
        b"sip:127.0.0.1:5092;status=active\nsip:127.0.0.1:5093;status=active\n",
        b"sip:127.0.0.1:5092;status=active\r\nsip:127.0.0.1:5093;status=active",
        b"sip:127.0.0.1:5092;status=active\r\nsip:127.0.0.1:5093;status=active\r\n\x00\x00",
    ],
)
def test_parse_node_list_forms(body: bytes) -> None:
    lines = parse_node_list(body)
    assert [(line.node, line.status) for line in lines] == [(nid(5092), A), (nid(5093), A)]


@pytest.mark.parametrize(
    "body",
    [
        b"sip:127.0.0.1:5092;status=active\r\n\r\nsip:127.0.0.1:5093;status=active\r\n",
        b"\r\n",
        b"sip:127.0.0.1:5092;status=up\r\n",
        b"sip:127.0.0.1:5092;status\r\n",
        b"sip:127.0.0.1:5092;status=active;status=active\r\n",
        b"sip:user@127.0.0.1:5092;status=active\r\n",
        b"sip:127.0.0.1:99999;status=active\r\n",
        b"http://127.0.0.1:5092\r\n",
        b"sip:127.0.0.1:5092;status=act\xc3\xaeve\r\n",
        b"sip:127.0.0.1:5092 ;status=active\r\n",
        b"sip:127.0.0.1:5092;status=active\r\n" * 1025,
    ],
)
def test_parse_node_list_rejects(body: bytes) -> None:
    with pytest.raises(DmqProtocolError):
        parse_node_list(body)


def test_vector_node_lists() -> None:
    ping = parse_message((DATA / "04-notification-ping.sip").read_bytes())
    assert [line.node.port for line in parse_node_list(ping.body)] == ["5093", "5091", "5092"]
    pending = parse_message((DATA / "21-pending-node-line.sip").read_bytes())
    assert parse_node_list(pending.body) == [NodeLine(nid(5096), None, False)]


# ------------------------------------------------------------------ NodeList rules (§3.7)


def line(port: int, status: NodeStatus | None = A, params: bool = True) -> NodeLine:
    return NodeLine(nid(port), status, params or status is not None)


@pytest.fixture
def nodes() -> NodeList:
    return NodeList(nid(5091), [nid(5095)])


def test_merge_adds_unknown_nodes(nodes: NodeList) -> None:
    changes = nodes.merge([line(5092, A), line(5093, D), line(5094, None, params=False)])
    assert [(c.node.port, c.old, c.new) for c in changes] == [
        ("5092", None, A),
        ("5093", None, D),
        ("5094", None, P),
    ]
    assert nodes.merge([line(5096, T)])[0].new is T


def test_merge_ignores_local_node(nodes: NodeList) -> None:
    assert nodes.merge([line(5091, D)]) == []
    assert nodes.status(nid(5091)) is A


def test_merge_adopts_other_status_unless_disabled(nodes: NodeList) -> None:
    nodes.merge([line(5092, A)])
    assert [c.new for c in nodes.merge([line(5092, P)])] == [P]
    assert [c.new for c in nodes.merge([line(5092, D)])] == [D]
    assert nodes.merge([line(5092, A)]) == []  # disabled ignores lines
    assert nodes.status(nid(5092)) is D


def test_merge_line_without_params_is_ignored_for_known_node(nodes: NodeList) -> None:
    nodes.merge([line(5092, A)])
    assert nodes.merge([line(5092, None, params=False)]) == []
    # with params but no status: counts as pending
    assert [c.new for c in nodes.merge([NodeLine(nid(5092), None, True)])] == [P]


def test_merge_skips_host_names(nodes: NodeList) -> None:
    assert nodes.merge([NodeLine(NodeId("localhost", "5092"), A, True)]) == []


def test_final_outcomes(nodes: NodeList) -> None:
    nodes.add_notification_addresses()
    nodes.merge([line(5092, A), line(5093, A)])
    assert [c.new for c in nodes.on_final(nid(5092), 200, A)] == []
    assert nodes.get(nid(5092)).confirmed  # type: ignore[union-attr]
    assert [c.new for c in nodes.on_final(nid(5092), 408, A)] == [D]
    assert nodes.on_final(nid(5092), 408, A) == []  # still disabled, not deleted
    assert [c.new for c in nodes.on_final(nid(5092), 408, D)] == [None]
    assert nid(5092) not in nodes
    # notification address: pending, never deleted
    assert [c.new for c in nodes.on_final(nid(5095), 200, P)] == [A]
    assert [c.new for c in nodes.on_final(nid(5095), 408, A)] == [P]
    assert nodes.on_final(nid(5095), 408, D) == []
    assert nodes.status(nid(5095)) is P
    # other codes change nothing; disabled comes back with 200 only
    nodes.on_final(nid(5093), 408, A)
    assert nodes.on_final(nid(5093), 404, D) == []
    assert nodes.on_final(nid(5093), 500, D) == []
    assert [c.new for c in nodes.on_final(nid(5093), 200, D)] == [A]
    assert nodes.on_final(nid(5091), 408, D) == []  # local node untouched


def test_remove(nodes: NodeList) -> None:
    nodes.merge([line(5092, A)])
    assert [c.new for c in nodes.remove(nid(5092))] == [None]
    assert nodes.remove(nid(5092)) == []
    assert nodes.remove(nid(5091)) == []
    assert nid(5091) in nodes


def test_body_is_safe(nodes: NodeList) -> None:
    nodes.add_notification_addresses()
    nodes.merge([line(5092, A), line(5093, A), line(5094, P), line(5096, T), line(5097, D)])
    nodes.on_final(nid(5092), 200, A)
    for port in (5094, 5096, 5097):
        nodes.on_final(nid(port), 200, A)
        nodes.merge([line(port, P)])
    # 5093 is active but never seen answering: not advertised
    assert nodes.body() == (
        b"sip:127.0.0.1:5092;status=active\r\nsip:127.0.0.1:5091;status=active\r\n"
    )
    left = nodes.body(NodeStatus.DISABLED)
    assert b"sip:127.0.0.1:5091;status=disabled\r\n" in left
    for status in (P, T):
        with pytest.raises(ValueError, match="advertised"):
            nodes.body(status)
    for text in parse_node_list(nodes.body()):
        assert text.status is A


# ------------------------------------------------------------------ the protocol on a bus


def test_config_validation() -> None:
    for kwargs in [
        {"server_address": "sip:host.example:5060"},
        {"server_address": "sip:127.0.0.1"},
        {"server_address": "sip:127.0.0.1:5060;transport=tcp"},
        {"server_address": "sip:127.0.0.1:5060", "ping_interval": 4.9},
        {"server_address": "sip:127.0.0.1:5060", "notification_addresses": ("nope",)},
        {"server_address": "sip:127.0.0.1:5060", "notification_channel": "a b"},
        {"server_address": "sip:127.0.0.1:5060", "allow_networks": ("300.0.0.0/8",)},
        {"server_address": "sip:127.0.0.1:5060", "secret": b""},
        {"server_address": "sip:127.0.0.1:5060", "t1": 5.0},
    ]:
        with pytest.raises(ConfigError):
            DmqConfig(**kwargs)  # type: ignore[arg-type]


def test_join_form_matches_kamailio() -> None:
    """Our join is shaped like vector 01: MF 2, our own line only, Kamailio's header order."""
    core = DmqCore(DmqConfig("sip:127.0.0.1:5092", notification_addresses=("sip:127.0.0.1:5091",)))
    core.start(0.0)
    [(data, addr)] = core.datagrams_to_send(0.0)
    assert addr == (IP, 5091)
    ours = parse_message(data)
    kam = parse_message((DATA / "01-notification-join-request.sip").read_bytes())
    assert isinstance(ours, DmqRequest)
    assert isinstance(kam, DmqRequest)
    assert ours.header_names() == kam.header_names()
    assert ours.body == kam.body
    assert (ours.max_forwards, ours.content_type, ours.cseq) == (2, "text/plain", 10)
    assert str(ours.uri) == str(kam.uri)
    assert str(ours.from_.uri) == str(kam.from_.uri)
    assert core.nodes.status(nid(5091)) is P


def test_kamailio_join_answer_and_rebroadcast_match_vectors() -> None:
    """A pymqueue node at :5091 fed vector 01 answers like vector 03 and re-broadcasts
    like vector 02."""
    core = DmqCore(DmqConfig("sip:127.0.0.1:5091"))
    core.start(0.0)
    core.receive_datagram((DATA / "01-notification-join-request.sip").read_bytes(), (IP, 5092), 1)
    out = core.datagrams_to_send(1.0)
    replies = [parse_message(d) for d, _ in out]
    reply = next(r for r in replies if isinstance(r, DmqResponse))
    rebroadcast = next(r for r in replies if isinstance(r, DmqRequest))
    v03 = parse_message((DATA / "03-notification-200-reply.sip").read_bytes())
    v02 = parse_message((DATA / "02-notification-rebroadcast.sip").read_bytes())
    assert reply.header_names() == v03.header_names()
    assert reply.body == v03.body
    assert (reply.branch, reply.call_id, reply.from_) == (v03.branch, v03.call_id, v03.from_)
    assert rebroadcast.header_names() == v02.header_names()
    assert rebroadcast.body == v02.body
    assert isinstance(v02, DmqRequest)
    assert rebroadcast.max_forwards == v02.max_forwards == 1
    assert str(rebroadcast.uri) == str(v02.uri)
    assert all(addr == (IP, 5092) for _, addr in out)
    assert core.nodes.status(nid(5092)) is A
    evs = [core.next_event() for _ in range(4)]
    assert NodeUp(nid(5092)) in evs
    assert Joined() in evs


def test_ping_form_matches_vector_04() -> None:
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.add(5093, notify=[5091])
    net.run_until(9.0)  # by the second ping every node has seen every other answer
    net.sent.clear()
    net.run_until(10.0)
    pings = [
        parse_message(d) for t, src, _, d in net.sent if src == (IP, 5092) and d.startswith(b"KDMQ")
    ]
    v04 = parse_message((DATA / "04-notification-ping.sip").read_bytes())
    assert {str(p.uri) for p in pings} == {
        "sip:notification_peer@127.0.0.1:5091",
        "sip:notification_peer@127.0.0.1:5093",
    }
    for p in pings:
        assert isinstance(p, DmqRequest)
        assert p.header_names() == v04.header_names()
        assert p.max_forwards == 1
        assert p.body == v04.body  # same nodes, same order (newest first, self in place)


def test_three_nodes_converge() -> None:
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.add(5093, notify=[5091])
    for obs in (5091, 5092, 5093):
        for port in {5091, 5092, 5093} - {obs}:
            assert net.status(obs, port) is A, (obs, port)
    assert Joined() in net.events[(IP, 5093)]


def test_node_killed_timeline() -> None:
    """§3.8: a SIGKILL-ed node is active until ~35 s, disabled until ~70 s, then gone."""
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.add(5093, notify=[5091])
    net.run_until(20.0)
    death = 20.1
    net.run_until(death)
    net.kill(5093)
    for t, expected in [(54.9, A), (55.0, D), (89.9, D), (90.0, None), (120.0, None)]:
        net.run_until(t)
        for obs in (5091, 5092):
            assert net.status(obs, 5093) is expected, (t, obs)
    downs = [e for e in net.events[(IP, 5091)] if isinstance(e, NodeDown)]
    assert downs == [NodeDown(nid(5093), D)]


def test_graceful_leave_timeline() -> None:
    """§3.6/§3.8: leave → disabled at once everywhere, deleted about one fr_timer later."""
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    c = net.add(5093, notify=[5091])
    net.run_until(20.1)
    c.leave(net.now)
    out = c.datagrams_to_send(net.now)
    assert {addr for _, addr in out} == {(IP, 5091), (IP, 5092)}
    for data, addr in out:
        msg = parse_message(data)
        assert isinstance(msg, DmqRequest)
        assert msg.max_forwards == 1
        assert b"sip:127.0.0.1:5093;status=disabled\r\n" in msg.body
        net.cores[addr].receive_datagram(data, (IP, 5093), net.now)
    net.kill(5093)
    net.flush()
    assert net.status(5091, 5093) is D
    assert net.status(5092, 5093) is D
    net.run_until(20.1 + 29.9)
    assert net.status(5091, 5093) is D
    net.run_until(20.1 + 35.0)
    assert net.status(5091, 5093) is None
    assert net.status(5092, 5093) is None


def test_notification_address_dies_one_survivor() -> None:
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.run_until(20.1)
    net.kill(5091)
    net.run_until(54.9)
    assert net.status(5092, 5091) is A
    net.run_until(55.0)
    assert net.status(5092, 5091) is P
    net.sent.clear()
    net.run_until(300.0)
    assert net.status(5092, 5091) is P  # never deleted
    pings = {round(t) for t, _, dst, d in net.sent if dst == (IP, 5091) and d.startswith(b"KDMQ")}
    assert {60, 100, 200, 300} <= pings


def test_notification_address_dies_two_survivors() -> None:
    """Kamailio keeps the dead node active forever (§3.8, each survivor re-advertises it);
    we only advertise nodes we saw answering, so both survivors settle on pending."""
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.add(5093, notify=[5091])
    net.run_until(20.1)
    net.kill(5091)
    net.run_until(100.0)
    assert net.status(5092, 5091) is P
    assert net.status(5093, 5091) is P
    net.run_until(200.0)
    assert net.status(5092, 5091) is P
    assert net.status(5093, 5091) is P
    assert net.status(5092, 5093) is A


def test_restart_while_disabled_needs_a_ping() -> None:
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.run_until(20.1)
    net.kill(5092)
    net.run_until(60.1)
    assert net.status(5091, 5092) is D
    net.add(5092, notify=[5091])  # restart: its own join does not revive a disabled entry
    assert net.status(5091, 5092) is D
    # revived by the first ping of :5091 the new process answers (as in the lab, that can
    # be a retransmission of a ping sent while it was dead)
    replies = len([1 for _, src, _, d in net.sent if src == (IP, 5092) and d.startswith(b"SIP")])
    net.run_until(65.0)
    assert net.status(5091, 5092) is A
    later = [d for _, src, _, d in net.sent if src == (IP, 5092) and d.startswith(b"SIP")]
    assert len(later) > replies


def test_restart_after_deletion_is_active_at_once() -> None:
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.add(5093, notify=[5091])
    net.run_until(20.1)
    net.kill(5093)
    net.run_until(100.0)
    assert net.status(5091, 5093) is None
    assert net.status(5092, 5093) is None
    net.add(5093, notify=[5091])
    assert net.status(5091, 5093) is A
    assert net.status(5092, 5093) is A  # through the re-broadcast (MF 2 → 1)


def test_restart_without_notification_address_relearns_from_pings() -> None:
    net = Net()
    net.add(5091)
    net.add(5092, notify=[5091])
    net.run_until(20.1)
    net.kill(5091)
    net.run_until(22.0)
    net.add(5091)
    assert net.status(5091, 5092) is None
    net.run_until(25.0)  # :5092 pings every 5 s
    assert net.status(5091, 5092) is A


def test_lone_node_rejoins_notification_addresses() -> None:
    """A list holding only ourselves: the ping becomes a join to the notification address."""
    net = Net()
    b = net.add(5092, notify=[5091])
    b.remove_node(nid(5091))
    assert len(b.nodes) == 1
    net.sent.clear()
    net.run_until(5.0)
    joins = [parse_message(d) for t, _, dst, d in net.sent if dst == (IP, 5091) and t == 5.0]
    assert len(joins) == 1
    assert isinstance(joins[0], DmqRequest)
    assert joins[0].max_forwards == 2
    assert b.nodes.status(nid(5091)) is P


def test_max_forwards_controls_rebroadcast() -> None:
    net = Net()
    a = net.add(5091)
    net.add(5092, notify=[5091])
    net.run_until(1.0)

    def notify(body: bytes, mf: int | None) -> list[bytes]:
        raw = (
            "KDMQ sip:notification_peer@127.0.0.1:5091 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5094;branch=z9hG4bK{len(net.sent)}x{mf}\r\n"
            "To: <sip:notification_peer@127.0.0.1:5091>\r\n"
            "From: <sip:notification_peer@127.0.0.1:5094>;tag=1\r\n"
            "CSeq: 1 KDMQ\r\nCall-ID: c@h\r\n"
            + (f"Max-Forwards: {mf}\r\n" if mf is not None else "")
            + f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        a.receive_datagram(raw, (IP, 5094), net.now)
        return [d for d, _ in a.datagrams_to_send(net.now)]

    # no Max-Forwards: 200, node added, no re-broadcast (spec §12 case 12)
    out = notify(b"sip:127.0.0.1:5096;status=active\r\n", None)
    assert len(out) == 1
    assert out[0].startswith(b"SIP/2.0 200 OK")
    assert a.nodes.status(nid(5096)) is A
    # MF 2 with a change: re-broadcast to active nodes with MF 1
    out = notify(b"sip:127.0.0.1:5097;status=active\r\n", 2)
    requests = [parse_message(d) for d in out if d.startswith(b"KDMQ")]
    assert requests
    assert all(isinstance(r, DmqRequest) and r.max_forwards == 1 for r in requests)
    # MF 2 without a change: no re-broadcast
    out = notify(b"sip:127.0.0.1:5097;status=active\r\n", 2)
    assert len(out) == 1


def test_pending_line_vector_21() -> None:
    core = DmqCore(DmqConfig("sip:127.0.0.1:5091"))
    core.start(0.0)
    core.receive_datagram((DATA / "21-pending-node-line.sip").read_bytes(), (IP, 5094), 0.0)
    [(data, _)] = core.datagrams_to_send(0.0)
    reply = parse_message(data)
    assert isinstance(reply, DmqResponse)
    assert reply.code == 200
    assert core.nodes.status(nid(5096)) is P
    assert b"5096" not in reply.body
    core.handle_timer(60.0)  # pinged like any node
    assert any(addr == (IP, 5096) for _, addr in core.datagrams_to_send(60.0))


def test_foreign_leave_vector_20() -> None:
    core = DmqCore(DmqConfig("sip:127.0.0.1:5091"))
    core.start(0.0)
    core.nodes.merge([line(5099, A)])
    core.receive_datagram((DATA / "20-foreign-leave.sip").read_bytes(), (IP, 5099), 0.0)
    assert core.nodes.status(nid(5099)) is D


def test_disabled_line_for_another_node_then_ping_revives() -> None:
    """§12 case 11: a list saying K2 is disabled disables it; our next ping revives it."""
    net = Net()
    a = net.add(5091)
    net.add(5092, notify=[5091])
    net.run_until(1.0)
    a.nodes.merge([line(5092, D)])
    assert net.status(5091, 5092) is D
    net.run_until(5.0)
    assert net.status(5091, 5092) is A
