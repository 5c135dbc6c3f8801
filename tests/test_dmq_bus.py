"""The asyncio DMQ bus (pymqueue.dmq.aio): real processes and real UDP sockets on 127.0.0.1.

Nodes in child processes are tests/dmq_worker.py (see dmq_helpers.py). Every wait is on an
event, a pipe or a status change with a deadline. Timers: ping_interval 5 s (the minimum),
fr_timer 1 s, so a dead node is ``disabled`` within about 6 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest
from dmq_helpers import IP, Workers, udp_port, uri, workers

from pymqueue.dmq import IncomingRequest, NodeDown, NodeId, NodeStatus, NodeUp, PeerReply
from pymqueue.dmq.aio import Bus, BusThread, to_reply
from pymqueue.errors import ConfigError, DmqError, DmqNodeNotFound, DmqTimeout

ACTIVE, DISABLED = NodeStatus.ACTIVE, NodeStatus.DISABLED
FAST = {"ping_interval": 5.0, "fr_timer": 1.0}


@pytest.fixture
def ws() -> Iterator[Workers]:
    with workers() as w:
        yield w


def test_bus_of_processes_discovery_kill_restart_leave(ws: Workers) -> None:
    """A (BusThread in this process) + B, C, D (processes) that only know A."""
    a_uri = uri(udp_port())
    got: list[IncomingRequest] = []
    a = BusThread(a_uri, None, **FAST)
    a.register("echo", lambda r: PeerReply(200, "OK", b"A|" + r.body))
    a.register("record", got.append)
    with a:
        b, c, d = (ws.start(uri(udp_port()), [a_uri]) for _ in range(3))
        peers = [b.server, c.server, d.server]
        for p in peers:
            assert a.wait_status(p, ACTIVE, timeout=10) is ACTIVE
        # discovery through the one notification address: every worker knows every node
        for w in (b, c, d):
            for p in [a_uri, *peers]:
                if p != w.server:
                    assert w.wait_status(p, "active", timeout=10) == "active"
        nodes = {str(n.node): n for n in a.nodes()}
        assert nodes[a_uri].local
        assert set(nodes) == {a_uri, *peers}

        # broadcast from A: one reply per node, each from its handler
        res = a.broadcast("echo", b"hi", timeout=10)
        assert {str(n): (r.code, r.body) for n, r in res.items()} == {  # type: ignore[union-attr]
            p: (200, p.encode() + b"|hi") for p in peers
        }
        # send to one node; unknown node; channel nobody serves
        rep = a.send("echo", c.server, "one", timeout=10)
        assert (rep.code, rep.body) == (200, c.server.encode() + b"|one")
        with pytest.raises(DmqNodeNotFound):
            a.send("echo", "sip:127.0.0.1:9", b"x")
        assert a.send("nosuch", b.server, b"x", timeout=10).code == 404
        # broadcast from a worker reaches A's handler and the other workers
        m = b.command("broadcast", "broadcast", channel="record", body="from-b")
        assert set(m["results"]) == {a_uri, c.server, d.server}
        assert all(r == [200, ""] for r in m["results"].values())
        assert [(r.body, str(r.node)) for r in got] == [(b"from-b", b.server)]
        for w in (c, d):
            w.expect(lambda m: m["ev"] == "recv" and m["body"] == "from-b", 5)

        # SIGKILL C: A and B see it disabled (NodeDown) after a ping and fr_timer
        c.kill()
        assert a.wait_status(c.server, DISABLED, timeout=12) is DISABLED
        assert b.wait_status(c.server, "disabled", None, timeout=12) in ("disabled", None)
        b.expect(lambda m: m["ev"] == "down" and m["node"] == c.server, 1)
        res = a.broadcast("echo", b"after-kill", timeout=10)
        assert c.server not in {str(n) for n in res}
        # restart C on the same port: active again on A and B (after their next ping)
        c2 = ws.start(c.server, [a_uri])
        assert a.wait_status(c.server, ACTIVE, timeout=12) is ACTIVE
        assert b.wait_status(c.server, "active", timeout=12) == "active"
        assert a.send("echo", c.server, b"back", timeout=10).body == c.server.encode() + b"|back"
        assert c2.wait_status(d.server, "active", timeout=12) == "active"

        # graceful leave of D: disabled at once everywhere, its pending requests answered
        left = d.leave()
        assert left["pending"] == 0
        assert a.status(d.server) is DISABLED
        assert b.wait_status(d.server, "disabled", timeout=2) == "disabled"
        assert d.proc.returncode == 0
    # A left too; B saw it
    assert b.wait_status(a_uri, "disabled", None, timeout=3) in ("disabled", None)
    with pytest.raises(DmqError):
        a.nodes()


def test_async_bus_handlers_events_and_leave() -> None:
    """Two in-process buses on asyncio: async handlers, reply shapes, events, leave."""
    asyncio.run(asyncio.wait_for(_handlers_events_and_leave(), 60))


async def _handlers_events_and_leave() -> None:
    p1, p2 = udp_port(), udp_port()

    async def slow(req: IncomingRequest) -> tuple[int, str, bytes]:
        await asyncio.sleep(0)  # an async handler answering on a later loop iteration
        return (201, "Created", req.body.upper())

    def broken(req: IncomingRequest) -> object:
        raise RuntimeError("boom")

    async with Bus(uri(p1), None, **FAST) as one:
        one.register("slow", slow)
        one.register("broken", broken)
        one.register("text", lambda r: "plain text")
        events = one.events()
        async with Bus(uri(p2), uri(p1), **FAST) as two:
            await two.wait_joined(5)
            ev = await asyncio.wait_for(anext(events), 5)
            while not isinstance(ev, NodeUp):
                ev = await asyncio.wait_for(anext(events), 5)
            assert ev.node == two.local
            assert await two.wait_status(one.local, ACTIVE, 5) is ACTIVE
            rep = await two.send("slow", one.local, b"abc")
            assert rep == PeerReply(201, "Created", b"ABC", "text/plain")
            assert (await two.send("broken", one.local, b"")).code == 500
            assert one.stats.handler_failures == 1
            assert (await two.send("text", str(one.local), b"")).body == b"plain text"
            res = await two.broadcast("nosuch", b"x")
            assert [r.code for r in res.values()] == [404]  # type: ignore[union-attr]
        # two left: one sees it disabled at once
        assert one.status(two.local) is DISABLED
        ev = await asyncio.wait_for(anext(events), 5)
        while not isinstance(ev, NodeDown):
            ev = await asyncio.wait_for(anext(events), 5)
        assert ev == NodeDown(two.local, DISABLED)
        # a timeout: the peer is gone, fr_timer 1 s
        with pytest.raises(DmqTimeout):
            await one.send("slow", two.local, b"x")
    assert not one.running
    with pytest.raises(DmqError):
        await one.broadcast("slow", b"x")


def test_garbage_flood_does_not_stop_good_traffic() -> None:
    """A stream of garbage datagrams (random bytes, truncated and bogus SIP) to a node
    while good requests keep being answered."""
    asyncio.run(asyncio.wait_for(_garbage_flood(), 60))


async def _garbage_flood() -> None:
    p1, p2 = udp_port(), udp_port()
    junk = [
        os.urandom(200),
        b"",
        b"KDMQ sip:echo@127.0.0.1 SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n\r\n",
        b"KDMQ sip:notification_peer@127.0.0.1:1 SIP/2.0\r\nContent-Length: 99999\r\n\r\nx",
        b"\x00" * 1400,
        b"INVITE sip:x@y SIP/2.0\r\n" * 50,
    ]
    async with Bus(uri(p1), None, **FAST) as one, Bus(uri(p2), uri(p1), **FAST) as two:
        one.register("echo", lambda r: r.body)
        await two.wait_status(one.local, ACTIVE, 5)
        # the junk is interleaved with the good requests (a stream, not a burst that would
        # only measure the socket buffer): 7 bad datagrams before every good request
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(200):
                for j in junk:
                    s.sendto(j, (IP, p1))
                rep = await two.send("echo", one.local, f"m{i}".encode())
                assert rep.body == f"m{i}".encode()
        assert one.stats.dropped > 0
        assert one.status(two.local) is ACTIVE


def test_config_and_reply_shapes() -> None:
    with pytest.raises(ConfigError):
        Bus("sip:127.0.0.1:5099", None, ping_interval=1)
    with pytest.raises(ConfigError):
        Bus("sip:localhost:5099")
    with pytest.raises(ConfigError):
        Bus(None)
    assert to_reply(None) == PeerReply()
    assert to_reply(404) == PeerReply(404, "Reply")
    assert to_reply((500, "Nope")) == PeerReply(500, "Nope")
    assert to_reply((200, "OK", "x")) == PeerReply(200, "OK", b"x", "text/plain")
    assert to_reply(b"j") == PeerReply(200, "OK", b"j", "text/plain")
    with pytest.raises(TypeError):
        to_reply(object())
    with pytest.raises(TypeError):
        to_reply(True)
    assert NodeId.parse(uri(5099)) == NodeId(IP, "5099")


def test_bind_error_is_dmq_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((IP, 0))
        port = s.getsockname()[1]
        bt = BusThread(uri(port), None, **FAST)
        with pytest.raises(DmqError, match="cannot bind"):
            bt.start()
