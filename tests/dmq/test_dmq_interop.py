"""pymqueue's DMQ bus (pymqueue.dmq.BusThread) on one bus with two real Kamailio 5.6.3 nodes.

K1 (no notification address) and K2 (notification address K1) run the script below, with
``ping_interval`` 5 (Kamailio's minimum) and tm ``fr_timer`` 2 s so failures show quickly.
F is a :class:`BusThread` in this process; W a pymqueue node in a child process (to be
SIGKILLed). Spec §12 cases covered: 1, 2, 3 (F stays active across pings), 6, 7, 8, 20, 21,
22, 23, 25 (on a data channel), 26, 27, 28 — docs/dmq.md lists the others and why.

Kamailio's state is only observable through its RPC, so :func:`wait_listed` polls
``kamcmd dmq.list_nodes`` until a deadline (a readiness probe, like the fixture's).
"""

from __future__ import annotations

import asyncio
import queue
import time

import pytest
from dmq_helpers import Worker, udp_port, uri, workers
from fix_kamailio import Kamailio, KamailioFactory, base_config

from pymqueue.dmq import BusThread, IncomingRequest, NodeStatus, PeerReply
from pymqueue.dmq.rpc import list_nodes_result

pytestmark = pytest.mark.kamailio

ACTIVE, DISABLED = NodeStatus.ACTIVE, NodeStatus.DISABLED

SCRIPT = """
modparam("tm", "fr_timer", 2000)
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
@NOTIFY@
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)

request_route {
    if ($rm == "KDMQ") {
        if ($rU == "kstore") {          # a pymqueue channel consumed by the script
            $shv(last) = $rb;
            sl_send_reply("200", "OK");
            exit;
        }
        dmq_handle_message();
        exit;
    }
    if ($rm == "MESSAGE" && $rU == "bcast") {
        dmq_bcast_message("mqueue", "$rb", "text/plain");
        sl_send_reply("200", "OK");
        exit;
    }
    if ($rm == "MESSAGE" && $rU == "send") {
        if (dmq_send_message("mqueue", "$hdr(X-Node)", "$rb", "text/plain")) {
            sl_send_reply("200", "OK");
        } else {
            sl_send_reply("500", "Not Sent");
        }
        exit;
    }
    sl_send_reply("404", "Not here");
    exit;
}
"""


def kam_config(notify: str | None) -> str:
    line = f'modparam("dmq", "notification_address", "{notify}")' if notify else ""
    return base_config(SCRIPT.replace("@NOTIFY@", line), modules=["tm", "dmq"])


def kuri(kam: Kamailio) -> str:
    return f"sip:127.0.0.1:{kam.sip_port}"


def nodes_of(kam: Kamailio) -> dict[str, str]:
    """``{port: status}`` from Kamailio's own ``dmq.list_nodes`` (JSON-RPC)."""
    return {n["port"]: n["status"] for n in kam.jsonrpc("dmq.list_nodes")}


def wait_listed(kam: Kamailio, uri: str, *status: str | None, timeout: float = 15.0) -> None:
    port = uri.rsplit(":", 1)[1]
    deadline = time.monotonic() + timeout
    while True:
        got = nodes_of(kam).get(port)
        if got in status:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{uri} is {got} on {kuri(kam)}, not {status}\n{kam.log()[-3000:]}"
            )
        time.sleep(0.2)  # polling interval of an RPC probe with a deadline


@pytest.fixture
def bus2(kamailio: KamailioFactory) -> tuple[Kamailio, Kamailio]:
    k1 = kamailio.start(kam_config(None))
    k2 = kamailio.start(kam_config(kuri(k1)))
    wait_listed(k1, kuri(k2), "active")
    wait_listed(k2, kuri(k1), "active")
    return k1, k2


def test_pymqueue_node_on_a_kamailio_bus(bus2: tuple[Kamailio, Kamailio]) -> None:
    k1, k2 = bus2
    f_uri = uri(udp_port())
    got: queue.Queue[IncomingRequest] = queue.Queue()
    calls: list[str] = []

    async def mqueue(req: IncomingRequest) -> PeerReply:
        calls.append(req.body.decode())
        if req.body == b"slow":  # spec case 25 on a data channel: answer after K's 1st resend
            await asyncio.sleep(1.2)
        got.put(req)
        return PeerReply()

    # F joins through K2 (K1 learnt from K2's 200 and re-broadcast)
    f = BusThread(f_uri, kuri(k2), ping_interval=5, fr_timer=1.0)
    f.register("mqueue", mqueue)
    with workers() as ws, f:
        # case 1, 2: F active on both Kamailio nodes and both active on F
        assert f.wait_status(kuri(k2), ACTIVE, timeout=10) is ACTIVE
        assert f.wait_status(kuri(k1), ACTIVE, timeout=10) is ACTIVE
        wait_listed(k2, f_uri, "active", timeout=5)
        wait_listed(k1, f_uri, "active", timeout=5)
        # our dmq.list_nodes has Kamailio's shape (keys, order, types)
        theirs = k1.jsonrpc("dmq.list_nodes")
        ours = list_nodes_result(f.nodes())
        assert [list(n) for n in ours] == [list(theirs[0])] * len(ours)
        assert {k: type(v) for k, v in ours[0].items()} == {
            k: type(v) for k, v in theirs[0].items()
        }

        # case 20: the script's dmq_bcast_message reaches F's handler (MF 1, text/plain)
        assert (
            k1.sip_request("MESSAGE", body="hello", ruri=f"sip:bcast@{kuri(k1)[4:]}").status == 200
        )
        req = got.get(timeout=5)
        assert (req.channel, req.body, req.content_type, req.max_forwards) == (
            "mqueue", b"hello", "text/plain", 1,
        )  # fmt: skip
        assert str(req.node) == kuri(k1)
        # case 21: dmq_send_message to F; to a URI not in K's list it fails, nothing sent
        r = k2.sip_request("MESSAGE", [("X-Node", f_uri)], "hi", ruri=f"sip:send@{kuri(k2)[4:]}")
        assert r.status == 200
        req = got.get(timeout=5)
        assert (req.body, str(req.node)) == (b"hi", kuri(k2))
        r = k2.sip_request(
            "MESSAGE", [("X-Node", "sip:127.0.0.1:9")], "x", ruri=f"sip:send@{kuri(k2)[4:]}"
        )
        assert r.status == 500

        # case 23: a pymqueue broadcast on a channel the script consumes (side effect: $shv)
        res = f.broadcast("kstore", "stored-by-pymqueue", timeout=10)
        assert {str(n): r.code for n, r in res.items()} == {kuri(k1): 200, kuri(k2): 200}  # type: ignore[union-attr]
        for k in (k1, k2):
            shv = k.jsonrpc("pv.shvGet", "last")
            assert "stored-by-pymqueue" in repr(shv), shv
        # case 22: nobody handles the channel → 404; once K's script used it → 202
        k3_free = f.send("nosuch", kuri(k1), "x", timeout=10)
        assert (k3_free.code, k3_free.reason) == (404, "User Not Found")
        rep = f.send("mqueue", kuri(k1), "x", timeout=10)  # K1 used it in dmq_bcast_message
        assert (rep.code, rep.reason) == (202, "Accepted DMQ")

        # case 25 (data channel): F answers after > 0.5 s; K1 retransmits, the handler runs
        # once and every copy gets the same answer
        assert (
            k1.sip_request("MESSAGE", body="slow", ruri=f"sip:bcast@{kuri(k1)[4:]}").status == 200
        )
        assert got.get(timeout=10).body == b"slow"
        assert calls.count("slow") == 1

        # case 26: dmq.remove of F on K1; F's next ping re-adds it
        assert k1.kamcmd("dmq.remove", f_uri).strip() == "Ok. DMQ node removed."
        assert f_uri.rsplit(":", 1)[1] not in nodes_of(k1)
        wait_listed(k1, f_uri, "active", timeout=8)

        # a pymqueue node W in its own process, joined through K2
        w = ws.start(uri(udp_port()), [kuri(k2)])
        wait_listed(k2, w.server, "active", timeout=10)
        wait_listed(k1, w.server, "active", timeout=10)
        assert f.wait_status(w.server, ACTIVE, timeout=10) is ACTIVE

        # case 6: W SIGKILLed → disabled on both Kamailio nodes (ping ≤ 5 s + fr_timer 2 s)
        # case 27/28: K1 SIGTERMed (sends nothing) → F sees it disabled; K2, whose
        # notification address it is, shows it pending since F stops advertising it
        w.kill()
        k1.stop()
        assert f.wait_status(kuri(k1), DISABLED, timeout=12) is DISABLED
        wait_listed(k2, w.server, "disabled", timeout=15)
        wait_listed(k2, kuri(k1), "pending", timeout=20)
        assert f.status(kuri(k2)) is ACTIVE
        wait_listed(k2, f_uri, "active", timeout=1)  # case 3: F kept active by its 200s

        # case 7: W restarted while disabled: active again after K2's next ping
        w2 = Worker(w.server, [kuri(k2)])
        ws.started.append(w2)
        wait_listed(k2, w.server, "active", timeout=12)
        # case 8: F leaves → disabled on K2 at once
        f.stop()
        wait_listed(k2, f_uri, "disabled", timeout=2)
