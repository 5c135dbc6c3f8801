"""DmqCore against the real Kamailio 5.6.3 dmq module (spec §12 cases 1, 3, 8, 20-23).

The core is driven by a plain blocking UDP socket: wait on the socket with a deadline
(``select``), feed datagrams and timers, send what the core queues. No sleeps.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from fix_kamailio import Kamailio, KamailioFactory, base_config

from pymqueue.dmq import (
    DmqConfig,
    DmqCore,
    DmqEvent,
    DmqRequest,
    IncomingRequest,
    NodeId,
    NodeStatus,
    PeerReply,
    ReplyReceived,
    parse_message,
)

pytestmark = pytest.mark.kamailio

IP = "127.0.0.1"

DMQ_CFG = """
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)

request_route {
    if ($rm == "KDMQ") {
        if ($rU == "scripted") {
            sl_send_reply("200", "OK");
            exit;
        }
        if ($rU == "tellme") {
            dmq_send_message("mqueue", "sip:$si:$sp", "from-kamailio", "text/plain");
        }
        dmq_handle_message();
    }
    exit;
}
"""


class Driver:
    def __init__(self, core: DmqCore, sock: socket.socket) -> None:
        self.core, self.sock = core, sock
        self.events: list[DmqEvent] = []
        self.received: list[bytes] = []

    def pump(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            for data, addr in self.core.datagrams_to_send(now):
                self.sock.sendto(data, addr)
            while (ev := self.core.next_event()) is not None:
                self.events.append(ev)
            if done():
                return
            if now >= deadline:
                raise AssertionError("Kamailio did not answer in time")
            timer = self.core.get_timer()
            wait = deadline - now if timer is None else max(0.0, min(timer, deadline) - now)
            readable, _, _ = select.select([self.sock], [], [], wait)
            now = time.monotonic()
            if readable:
                data, addr = self.sock.recvfrom(65535)
                self.received.append(data)
                self.core.receive_datagram(data, addr, now)
            timer = self.core.get_timer()
            if timer is not None and timer <= now:
                self.core.handle_timer(now)


@pytest.fixture
def bus(kamailio: KamailioFactory) -> Iterator[tuple[Driver, Kamailio, NodeId]]:
    kam = kamailio.start(base_config(DMQ_CFG, modules=["tm", "dmq"]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((IP, 0))
    port = sock.getsockname()[1]
    core = DmqCore(
        DmqConfig(
            f"sip:{IP}:{port}",
            notification_addresses=(f"sip:{IP}:{kam.sip_port}",),
            ping_interval=5,
        )
    )
    try:
        yield Driver(core, sock), kam, NodeId(IP, str(kam.sip_port))
    finally:
        sock.close()


def listed(kam: Kamailio, port: int) -> str | None:
    text = kam.kamcmd("dmq.list_nodes")
    for block in text.split("}"):
        if f"port: {port}" in block:
            for line in block.splitlines():
                if "status:" in line:
                    return line.split(":", 1)[1].strip()
    return None


def test_join_data_and_leave_with_kamailio(bus: tuple[Driver, Kamailio, NodeId]) -> None:
    drv, kam, knode = bus
    core = drv.core
    our_port = int(core.config.local.port)
    got: list[IncomingRequest] = []
    core.register_peer("mqueue", lambda r: got.append(r) or PeerReply())  # type: ignore[func-returns-value]

    # case 1: join → Kamailio answers 200 with its list; both sides list each other active
    core.start(time.monotonic())
    drv.pump(lambda: core.nodes.status(knode) is NodeStatus.ACTIVE)
    assert listed(kam, our_port) == "active"

    # case 23: a channel handled in Kamailio's script
    [tid] = core.broadcast("scripted", b"hello", "text/plain", time.monotonic())
    drv.pump(lambda: any(isinstance(e, ReplyReceived) for e in drv.events))
    [rep] = [e for e in drv.events if isinstance(e, ReplyReceived)]
    assert (rep.transaction_id, rep.code) == (tid, 200)

    # case 22: a channel nobody handles → 404 User Not Found
    tid = core.send("nosuch", knode, b"x", "text/plain", time.monotonic())
    drv.pump(
        lambda: any(isinstance(e, ReplyReceived) and e.transaction_id == tid for e in drv.events)
    )
    [rep] = [e for e in drv.events if isinstance(e, ReplyReceived) and e.transaction_id == tid]
    assert (rep.code, rep.reason) == (404, "User Not Found")

    # case 21: Kamailio's dmq_send_message reaches our handler, answered once
    core.send("tellme", knode, b"x", "text/plain", time.monotonic())
    drv.pump(lambda: bool(got))
    assert got[0].body == b"from-kamailio"
    assert got[0].node == knode

    # case 3: Kamailio's ping arrives (MF 1, CSeq 10) and our 200 keeps us active
    def pinged() -> bool:  # the re-broadcast after our join, then at least one ping
        notes = [
            m
            for m in map(parse_message, drv.received)
            if isinstance(m, DmqRequest) and m.channel == "notification_peer"
        ]
        assert all(m.max_forwards == 1 and m.cseq == 10 for m in notes)
        return len(notes) >= 2

    drv.pump(pinged, timeout=12.0)
    drv.pump(lambda: core.pending_transactions == 0)
    assert listed(kam, our_port) == "active"

    # case 8: leave → Kamailio lists us disabled at once
    core.leave(time.monotonic())
    drv.pump(lambda: core.pending_transactions == 0)
    assert listed(kam, our_port) == "disabled"
