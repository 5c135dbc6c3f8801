"""The asyncio DMQ bus (Bus, BusThread): real processes and real UDP sockets on 127.0.0.1.

Nodes in child processes are tests/dmq_worker.py (see dmq_helpers.py). Every wait is on an
event, a pipe or a status change with a deadline. Timers: ping_interval 5 s (the minimum),
fr_timer 1 s, so a dead node is ``disabled`` within about 6 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmq_helpers import IP, Workers, udp_port, uri, workers
from fix_postgres import free_port

from pymqueue.config import config_from_dict
from pymqueue.dmq import (
    Bus,
    BusThread,
    EventStream,
    IncomingRequest,
    NodeDown,
    NodeId,
    NodeStatus,
    NodeUp,
    PeerReply,
    to_reply,
)
from pymqueue.errors import ConfigError, DmqError, DmqNodeNotFound, DmqTimeout
from pymqueue.instance import Instance

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


def test_event_stream_is_bounded_and_drops_oldest() -> None:
    async def run() -> None:
        subscribers: list[EventStream] = []
        stream = EventStream(subscribers, closed=False, maxsize=2)
        assert subscribers == [stream]
        a, b, c = (NodeUp(NodeId(IP, str(p))) for p in (5001, 5002, 5003))
        for ev in (a, b, c):
            stream._put(ev)
        assert stream.dropped == 1
        stream._put(None)  # the end of the stream always gets in, pushing out the oldest
        assert stream.dropped == 2
        assert [ev async for ev in stream] == [c]
        assert subscribers == []
        with pytest.raises(ValueError, match="maxsize"):
            EventStream(subscribers, closed=False, maxsize=0)

    asyncio.run(run())


def test_importing_the_package_starts_nothing() -> None:
    code = (
        "import threading, pymqueue.dmq as d\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert d.Bus and d.BusThread and d.DmqProtocol and d.EventStream and d.BusStats\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- instance, RPC and CLI ------------------------------------------------------------------


def _serve(cfg: Path, namespace: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymqueue", "serve", "-c", str(cfg), "--namespace", namespace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("pymqueue: ready"):
        proc.kill()
        raise AssertionError(f"serve did not start: {line!r} {proc.communicate(timeout=10)}")
    return proc


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pymqueue", "dmq", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_instance_serve_joins_bus_rpc_and_cli(tmp_path: Path, namespace: str) -> None:
    a_uri, i_port, rpc_port = uri(udp_port()), udp_port(), free_port()
    i_uri = uri(i_port)
    cfg = tmp_path / "pmq.toml"
    cfg.write_text(
        f'[rpc]\nport = {rpc_port}\n\n[dmq]\nserver_address = "{i_uri}"\n'
        f'notification_address = "{a_uri}"\nping_interval = 5\nfr_timer = 1.0\n'
    )
    with BusThread(a_uri, None, **FAST) as a:
        proc = _serve(cfg, namespace)
        try:
            assert a.wait_status(i_uri, ACTIVE, timeout=10) is ACTIVE
            out = _cli("list", "-c", str(cfg))
            assert out.returncode == 0, out.stderr
            blocks = out.stdout.split("}\n")
            assert blocks[0].startswith("{\n\thost: 127.0.0.1\n")
            assert f"\tport: {i_port}\n\tproto: *\n\tresolved_ip: 127.0.0.1\n" in out.stdout
            listed = json.loads(_cli("list", "-c", str(cfg), "--json").stdout)
            by_port = {n["port"]: n for n in listed}
            assert by_port[str(i_port)]["local"] == 1
            assert by_port[a_uri.rsplit(":", 1)[1]] == {
                "host": "127.0.0.1", "port": a_uri.rsplit(":", 1)[1], "proto": "*",
                "resolved_ip": "127.0.0.1", "status": "active", "last_notification": 0,
                "local": 0,
            }  # fmt: skip
            # Kamailio's answers: unknown node and local node "removed" (the local one is
            # kept), unparsable URI 500 Failure
            for target in ("sip:127.0.0.1:9", i_uri):
                rm = _cli("remove", target, "--http", f"127.0.0.1:{rpc_port}")
                assert (rm.returncode, rm.stdout) == (0, "Ok. DMQ node removed.\n")
            bad = _cli("remove", "bogus", "-c", str(cfg))
            assert (bad.returncode, bad.stderr) == (1, "error: 500 - Failure\n")
            assert len(json.loads(_cli("list", "-c", str(cfg), "--json").stdout)) == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        # stop() left the bus: A saw the instance disabled without waiting for a timeout
        assert a.status(i_uri) is DISABLED


def test_instance_in_process_dmq_rpc(namespace: str) -> None:
    a_uri, i_uri = uri(udp_port()), uri(udp_port())
    table = {"server_address": i_uri, "notification_address": [a_uri], "ping_interval": 5,
             "fr_timer": 1}  # fmt: skip
    config = config_from_dict({"dmq": table})
    with BusThread(a_uri, None, **FAST) as a, Instance(config, namespace=namespace) as inst:
        assert inst.dmq is not None
        assert inst.rpc is None  # no [rpc]: the bus runs without management RPC
        assert a.wait_status(i_uri, ACTIVE, timeout=10) is ACTIVE
        assert inst.dmq.wait_status(a_uri, ACTIVE, timeout=10) is ACTIVE
    assert inst.dmq is None


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({}, "dmq.server_address"),
        ({"server_address": "sip:127.0.0.1:5090", "ping_interval": 1}, "ping_interval"),
        ({"server_address": "sip:127.0.0.1:5090", "fr_timer": 0}, "dmq.fr_timer"),
        ({"server_address": "sip:127.0.0.1:5090", "fr_timer": "1"}, "dmq.fr_timer"),
        ({"server_address": "sip:localhost:5090"}, "server_address"),
        ({"server_address": "sip:127.0.0.1"}, "needs a port"),
        ({"server_address": "sip:127.0.0.1:5090", "notification_address": 5}, "notification"),
        ({"server_address": "sip:127.0.0.1:5090", "bogus": 1}, "dmq.bogus"),
        ({"server_address": "sip:127.0.0.1:5090", "allow_networks": ["x"]}, "allow_networks"),
        ({"server_address": "sip:127.0.0.1:5090", "via_rport": 1}, "dmq.via_rport"),
    ],
)
def test_dmq_table_errors(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"dmq": table})


def test_dmq_table_parsed() -> None:
    cfg = config_from_dict(
        {"dmq": {"server_address": "sip:127.0.0.1:5090",
                 "notification_address": "sip:127.0.0.1:5091", "ping_interval": 5,
                 "fr_timer": 2, "secret": "s", "allow_networks": ["127.0.0.0/8"]}}
    )  # fmt: skip
    dc = cfg.dmq_config
    assert dc is not None
    assert dc.notification_addresses == ("sip:127.0.0.1:5091",)
    assert (dc.ping_interval, dc.fr_timer, dc.secret) == (5.0, 2.0, b"s")
