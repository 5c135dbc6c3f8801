"""DMQ bus request rate against the number in flight (issue 13), pymqueue and Kamailio 5.6.3
in the same run::

    python -m pytest bench/bench_dmq_load.py -s -p no:cacheprovider

prints one Markdown table (requests/s: request + 200 reply, 64-byte bodies, loopback). Each
figure is the median of ``ROUNDS`` rounds; the spread (slowest-fastest round) follows it.

* **pymqueue → pymqueue** (window): A, a :class:`BusThread` in this process, keeps exactly
  K requests in flight (K coroutines each awaiting ``send`` then sending again) to B, a
  pymqueue node in a child process (tests/dmq_worker.py, channel ``echo``: 200 with a body).
* **pymqueue → Kamailio** (window): the same driver towards K2, whose script answers channel
  ``count`` itself (``$shv(n)`` + 1, ``sl_send_reply 200``): Kamailio as the receiver.
* **Kamailio → pymqueue** (bursts): a SIP MESSAGE makes K1's script call ``dmq_send_message``
  K times in a ``while`` loop (all K in flight at once: a script cannot keep a window) to A,
  whose handler counts; a burst ends when A has the K-th request; rate = requests / sum of
  burst times (each includes the trigger MESSAGE, ~0.3 ms).
* **Kamailio → Kamailio** (bursts): the same loop in K1 towards K2's ``count`` channel; K2's
  script forwards the request that completes the burst to a socket of this process (the end
  mark, no polling).

Kamailio runs with ``children=1`` (one SIP worker, like one pymqueue event loop), tm
``fr_timer`` 5 s and ``maxbuffer`` 4 MiB (pymqueue asks 4 MiB of ``SO_RCVBUF`` too).
CPU time per request of each pymqueue process is printed beside its rate.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dmq_helpers import Worker, udp_port, uri, workers
from fix_kamailio import base_config, kamailio, kamailio_bin  # noqa: F401 - fixtures

from pymqueue.dmq import BusThread, IncomingRequest, NodeStatus, PeerReply

INFLIGHT = (10, 100, 1000)
ROUNDS = 3
BODY = b"y" * 64
REQUESTS = {10: 10_000, 100: 20_000, 1000: 30_000}  # per round, windowed
BURST_TOTAL = {10: 3_000, 100: 10_000, 1000: 20_000}  # per round, bursts
RESULTS: dict[tuple[str, int], tuple[float, float, float, str]] = {}

KSCRIPT = """
modparam("tm", "fr_timer", 5000)
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
@NOTIFY@
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 60)
modparam("pv", "shvset", "n=i:0")
modparam("pv", "shvset", "target=i:0")
request_route {
    if ($rm == "KDMQ") {
        if ($rU == "count") {
            $shv(n) = $shv(n) + 1;
            sl_send_reply("200", "OK");
            if ($shv(n) == $shv(target)) {
                $du = "sip:127.0.0.1:@DONE@";
                forward();
            }
            exit;
        }
        dmq_handle_message();
        exit;
    }
    if ($rm == "MESSAGE" && $rU == "flood") {
        $var(n) = $(hdr(X-Count){s.int});
        $var(i) = 0;
        while ($var(i) < $var(n)) {
            dmq_send_message("$hdr(X-Channel)", "$hdr(X-Node)", "$rb", "text/plain");
            $var(i) = $var(i) + 1;
        }
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("404", "Not here");
    exit;
}
"""


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` (negative: of ``-pid`` and its children, for Kamailio, whose
    SIP workers are children of the main process)."""
    if pid > 0:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    pid = -pid
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _record(name: str, k: int, rates: list[float], note: str = "") -> None:
    RESULTS[(name, k)] = (statistics.median(rates), min(rates), max(rates), note)
    lo, hi = min(rates), max(rates)
    print(f"{name} K={k}: {statistics.median(rates):.0f} req/s ({lo:.0f}-{hi:.0f}){note}")


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    names = list(dict.fromkeys(n for n, _ in RESULTS))
    lines = ["", "| path | " + " | ".join(f"{k} in flight" for k in INFLIGHT) + " |"]
    lines.append("|---|" + "---|" * len(INFLIGHT))
    for n in names:
        cells = []
        for k in INFLIGHT:
            r = RESULTS.get((n, k))
            cells.append("—" if r is None else f"{r[0]:,.0f} ({r[1]:,.0f}-{r[2]:,.0f}){r[3]}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    print("\n".join(lines).replace(",", " "))


def _counter() -> tuple[dict[str, Any], Callable[[IncomingRequest], PeerReply]]:
    """A handler counting requests; ``done`` is set when the count reaches ``target``."""
    sink: dict[str, Any] = {"n": 0, "target": -1, "done": threading.Event()}

    def count(req: IncomingRequest) -> PeerReply:
        sink["n"] += 1
        if sink["n"] == sink["target"]:
            sink["done"].set()
        return PeerReply(200, "OK")

    return sink, count


def _window(a: BusThread, channel: str, target: str, k: int, total: int) -> float:
    """Requests/s with exactly ``k`` in flight until ``total`` are answered 200."""

    async def run() -> float:
        left = total
        bad = 0

        async def one() -> None:
            nonlocal left, bad
            while left > 0:
                left -= 1
                reply = await a.bus.send(channel, target, BODY)
                bad += reply.code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(k)))
        elapsed = time.perf_counter() - t0
        assert bad == 0
        return total / elapsed

    return a._submit(run(), 300)


def _rounds(
    measure: Callable[[], float], pids: tuple[int, ...], total: int
) -> tuple[list[float], str]:
    rates, cpu = [], []
    for _ in range(ROUNDS):
        c0 = [_cpu(p) for p in pids]
        rates.append(measure())
        cpu.append([(_cpu(p) - c) / total * 1e6 for p, c in zip(pids, c0, strict=True)])
    per = " / ".join(f"{statistics.median(c[i] for c in cpu):.0f}" for i in range(len(pids)))
    return rates, f" [CPU µs/req {per}]"


def test_pymqueue_to_pymqueue() -> None:
    with workers() as ws, BusThread(uri(udp_port()), None, ping_interval=60.0, fr_timer=5.0) as a:
        b: Worker = ws.start(uri(udp_port()), [str(a.local)], ping=60.0, fr=5.0)
        a.wait_status(b.server, NodeStatus.ACTIVE, timeout=10)
        for k in INFLIGHT:
            _window(a, "echo", b.server, k, 2_000)  # warm-up
            rates, cpu = _rounds(
                lambda k=k: _window(a, "echo", b.server, k, REQUESTS[k]),  # type: ignore[misc]
                (os.getpid(), b.pid),
                REQUESTS[k],
            )
            _record("pymqueue → pymqueue (window)", k, rates, cpu)


@pytest.fixture
def kams(kamailio: Any) -> Iterator[tuple[Any, Any, socket.socket]]:  # noqa: F811
    done = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    done.bind(("127.0.0.1", 0))
    port = done.getsockname()[1]

    def cfg(notify: str | None) -> str:
        line = f'modparam("dmq", "notification_address", "{notify}")' if notify else ""
        script = KSCRIPT.replace("@NOTIFY@", line).replace("@DONE@", str(port))
        extra = ["max_while_loops=100000", "maxbuffer=4194304"]
        return str(base_config(script, modules=["tm", "dmq"], globals_=extra))

    shm = ["-m", "2048"]  # 32 MB (the fixture's) runs out: tm keeps each transaction 5 s
    k2 = kamailio.start(cfg(None), extra_args=shm)
    k1 = kamailio.start(cfg(f"sip:127.0.0.1:{k2.sip_port}"), extra_args=shm)
    try:
        yield k1, k2, done
    finally:
        done.close()


def _kuri(k: Any) -> str:
    return f"sip:127.0.0.1:{k.sip_port}"


def _until_listed(k: Any, node: str) -> None:
    port = node.rsplit(":", 1)[1]
    deadline = time.monotonic() + 15
    while not any(
        n["port"] == port and n["status"] == "active" for n in k.jsonrpc("dmq.list_nodes")
    ):
        assert time.monotonic() < deadline, k.jsonrpc("dmq.list_nodes")
        time.sleep(0.1)


@pytest.mark.kamailio
def test_kamailio_paths(kams: Any) -> None:
    from fix_kamailio import sip_request  # noqa: PLC0415

    k1, k2, done = kams
    sink, count = _counter()
    with BusThread(uri(udp_port()), _kuri(k1), ping_interval=60.0, fr_timer=5.0) as f:
        # F: the pymqueue node, joined to K1 (learns K2 from K1's list); counts on "sink"
        f.register("sink", count)
        f.wait_status(_kuri(k1), NodeStatus.ACTIVE, timeout=10)
        f.wait_status(_kuri(k2), NodeStatus.ACTIVE, timeout=15)
        _until_listed(k1, str(f.local))
        _until_listed(k1, _kuri(k2))

        # pymqueue → Kamailio (window)
        for k in INFLIGHT:
            _window(f, "count", _kuri(k2), k, 2_000)
            rates, cpu = _rounds(lambda k=k: _window(f, "count", _kuri(k2), k, REQUESTS[k]),  # type: ignore[misc]
                                 (os.getpid(), -k2.pid), REQUESTS[k])  # fmt: skip
            _record("pymqueue → Kamailio (window)", k, rates, cpu)

        def bursts(k: int, total: int, *, channel: str, node: str,
                   wait: Callable[[int], None], arm: Callable[[int], None]) -> float:  # fmt: skip
            spent = 0.0
            for _ in range(total // k):
                arm(k)
                t0 = time.perf_counter()
                reply = sip_request(("127.0.0.1", k1.sip_port), "MESSAGE",
                                    {"X-Count": str(k), "X-Channel": channel, "X-Node": node},
                                    BODY, ruri=f"sip:flood@127.0.0.1:{k1.sip_port}",
                                    timeout=30)  # fmt: skip
                assert reply.status == 200, reply
                wait(k)
                spent += time.perf_counter() - t0
            return (total // k) * k / spent

        # Kamailio → pymqueue (bursts)
        def arm_sink(k: int) -> None:
            sink["done"].clear()
            sink["target"] = sink["n"] + k

        def wait_sink(k: int) -> None:
            assert sink["done"].wait(30), (sink, k1.log()[-2000:])

        to_f = {"channel": "sink", "node": str(f.local), "wait": wait_sink, "arm": arm_sink}
        for k in INFLIGHT:
            bursts(k, min(BURST_TOTAL[k], 10 * k), **to_f)  # type: ignore[arg-type]
            rates, cpu = _rounds(
                lambda k=k: bursts(k, BURST_TOTAL[k], **to_f),  # type: ignore[arg-type,misc]
                (-k1.pid, os.getpid()), BURST_TOTAL[k])  # fmt: skip
            _record("Kamailio → pymqueue (bursts)", k, rates, cpu)

        # Kamailio → Kamailio (bursts)
        done.settimeout(30)

        def arm_k2(k: int) -> None:
            got = k2.jsonrpc("pv.shvGet", "n")
            n = int((got[0] if isinstance(got, list) else got)["value"])
            k2.jsonrpc("pv.shvSet", "target", "int", n + k)

        def wait_k2(k: int) -> None:
            try:
                done.recvfrom(65535)
            except TimeoutError:
                raise AssertionError(k1.log()[-2000:]) from None

        to_k2 = {"channel": "count", "node": _kuri(k2), "wait": wait_k2, "arm": arm_k2}
        for k in INFLIGHT:
            bursts(k, min(BURST_TOTAL[k], 10 * k), **to_k2)  # type: ignore[arg-type]
            rates, cpu = _rounds(
                lambda k=k: bursts(k, BURST_TOTAL[k], **to_k2),  # type: ignore[arg-type,misc]
                (-k1.pid, -k2.pid), BURST_TOTAL[k])  # fmt: skip
            _record("Kamailio → Kamailio (bursts)", k, rates, cpu)
