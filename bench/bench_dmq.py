"""DMQ bus benchmarks (``python -m pytest bench/bench_dmq.py``).

A 3-node loopback bus: A is a :class:`BusThread` in this process, B and C are pymqueue nodes
in child processes (tests/dmq_worker.py, channel ``echo``).

* ``test_broadcast_latency``: one ``broadcast`` from A to B and C, both replies back (round
  trip, per call);
* ``test_broadcast_throughput``: 200 broadcasts in flight at once (400 requests + 400
  replies) per round; ops = broadcasts per second;
* ``test_dead_node_detection``: SIGKILL C, time until A lists it ``disabled``
  (ping_interval 5 s, fr_timer 1 s: expect 1-6 s, depending on where in the ping period);
* ``test_kamailio_*``: the same figures for Kamailio 5.6.3 measured in the same run: a SIP
  MESSAGE makes a Kamailio script call ``dmq_bcast_message``; time until the pymqueue handler
  has the message (includes Kamailio's SIP processing and its DMQ worker queue); and the time
  until Kamailio (tm fr_timer 2 s) lists a SIGKILLed pymqueue node ``disabled``, sampled by RPC
  every 0.1 s.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dmq_helpers import Worker, udp_port, uri, workers
from fix_kamailio import kamailio, kamailio_bin  # noqa: F401 - fixtures

from pymqueue.dmq import BusThread, IncomingRequest, NodeStatus

FAST = {"ping_interval": 5.0, "fr_timer": 1.0}


@pytest.fixture(scope="module")
def bus3() -> Iterator[tuple[BusThread, list[Worker]]]:
    a_uri = uri(udp_port())
    with workers() as ws, BusThread(a_uri, None, **FAST) as a:
        peers = [ws.start(uri(udp_port()), [a_uri]) for _ in range(2)]
        for w in peers:
            a.wait_status(w.server, NodeStatus.ACTIVE, timeout=10)
        yield a, peers


def test_broadcast_latency(benchmark: Any, bus3: tuple[BusThread, list[Worker]]) -> None:
    a, _ = bus3

    def once() -> None:
        res = a.broadcast("echo", b"x", timeout=5)
        assert len(res) == 2

    benchmark.pedantic(once, rounds=300, iterations=1, warmup_rounds=20)


def test_broadcast_throughput(benchmark: Any, bus3: tuple[BusThread, list[Worker]]) -> None:
    a, _ = bus3
    n = 200

    async def many() -> int:
        results = await asyncio.gather(*(a.bus.broadcast("echo", b"y" * 64) for _ in range(n)))
        return sum(1 for r in results for v in r.values() if not isinstance(v, Exception))

    def round_() -> None:
        ok = a._submit(many(), 60)
        assert ok == 2 * n

    benchmark.pedantic(round_, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["broadcasts_per_round"] = n


def test_dead_node_detection(benchmark: Any) -> None:
    a_uri = uri(udp_port())
    with workers() as ws, BusThread(a_uri, None, **FAST) as a:

        def setup() -> tuple[tuple[Worker], dict[str, Any]]:
            w = ws.start(uri(udp_port()), [a_uri])
            a.wait_status(w.server, NodeStatus.ACTIVE, timeout=10)
            return (w,), {}

        def detect(w: Worker) -> None:
            w.kill()
            a.wait_status(w.server, NodeStatus.DISABLED, timeout=15)

        benchmark.pedantic(detect, setup=setup, rounds=3, iterations=1)


# -- Kamailio 5.6.3 in the same run -----------------------------------------------------------

KSCRIPT = """
modparam("tm", "fr_timer", 2000)
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)
request_route {
    if ($rm == "KDMQ") { dmq_handle_message(); exit; }
    if ($rm == "MESSAGE") {
        dmq_bcast_message("echo", "$rb", "text/plain");
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("404", "x"); exit;
}
"""


@pytest.fixture
def kam_bus(kamailio: Any) -> Iterator[tuple[Any, BusThread, queue.Queue[bytes]]]:  # noqa: F811
    from fix_kamailio import base_config  # noqa: PLC0415

    kam = kamailio.start(base_config(KSCRIPT, modules=["tm", "dmq"]))
    k_uri = f"sip:127.0.0.1:{kam.sip_port}"
    got: queue.Queue[bytes] = queue.Queue()

    def echo(req: IncomingRequest) -> None:
        got.put(req.body)

    with BusThread(uri(udp_port()), k_uri, **FAST) as f:
        f.register("echo", echo)
        f.wait_status(k_uri, NodeStatus.ACTIVE, timeout=10)
        yield kam, f, got


@pytest.mark.kamailio
def test_kamailio_script_broadcast_latency(benchmark: Any, kam_bus: Any) -> None:
    """Kamailio figure: SIP MESSAGE → script dmq_bcast_message → pymqueue handler."""
    kam, _, got = kam_bus
    from fix_kamailio import sip_request  # noqa: PLC0415

    def once() -> None:
        sip_request(("127.0.0.1", kam.sip_port), "MESSAGE", body="k", timeout=5)
        assert got.get(timeout=5) == b"k"

    benchmark.pedantic(once, rounds=200, iterations=1, warmup_rounds=10)


@pytest.mark.kamailio
def test_kamailio_dead_node_detection(benchmark: Any, kam_bus: Any) -> None:
    """Kamailio figure: a SIGKILLed pymqueue node until Kamailio lists it ``disabled``."""
    kam, _, _ = kam_bus
    k_uri = f"sip:127.0.0.1:{kam.sip_port}"
    with workers() as ws:

        def setup() -> tuple[tuple[Worker], dict[str, Any]]:
            w = ws.start(uri(udp_port()), [k_uri])
            port = w.server.rsplit(":", 1)[1]
            deadline = time.monotonic() + 10
            while not any(
                n["port"] == port and n["status"] == "active" for n in kam.jsonrpc("dmq.list_nodes")
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            return (w,), {}

        def detect(w: Worker) -> None:
            port = w.server.rsplit(":", 1)[1]
            w.kill()
            deadline = time.monotonic() + 20
            while not any(
                n["port"] == port and n["status"] == "disabled"
                for n in kam.jsonrpc("dmq.list_nodes")
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)  # RPC sampling period (resolution of this figure)

        benchmark.pedantic(detect, setup=setup, rounds=3, iterations=1)
