"""Two pymqueue DMQ nodes on loopback, K requests in flight (issue 13): request rate and CPU
per request of each node, for an A/B of two trees in one sitting::

    python bench/bench_dmq_pair.py                   # the pymqueue on sys.path
    python bench/bench_dmq_pair.py --ab OLD_TREE     # alternate new/old, ROUNDS times
    python bench/bench_dmq_pair.py --floor           # the same shape without KDMQ

Node A (this process, an asyncio :class:`~pymqueue.dmq.Bus`) keeps exactly K requests in
flight (K coroutines each awaiting ``send`` then sending again, 64-byte bodies) to node B (a
child process; channel ``echo`` answers 200 at once). A run measures K = 10, 100, 1 000, each
after a warm-up, ``TOTAL`` requests per K. ``--ab`` runs one child per tree and alternates
them, so both see the same background load; it prints the median of each with the ratio.
``--floor`` measures what the shape itself costs: the same asyncio sockets, window of
coroutines, one future per request and socket drained per wake-up, but a datagram is a
16-byte id and the body, echoed by the peer (no codec, no transactions, no timers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

INFLIGHT = (10, 100, 1000)
TOTAL = {10: 10_000, 100: 20_000, 1000: 30_000}
ROUNDS = 3
BODY = b"y" * 64


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _serve(server: str) -> None:
    from pymqueue.dmq import Bus, PeerReply  # noqa: PLC0415

    bus = Bus(server, None, ping_interval=60.0, fr_timer=5.0)
    bus.register("echo", lambda req: PeerReply(200, "OK"))
    await bus.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the driver closes stdin
    await bus.stop()


async def _drive(server: str, peer: str, pid: int) -> dict[str, list[float]]:
    from pymqueue.dmq import Bus, NodeStatus  # noqa: PLC0415

    bus = Bus(server, peer, ping_interval=60.0, fr_timer=5.0)
    await bus.start()
    await bus.wait_status(peer, NodeStatus.ACTIVE, timeout=10)

    async def window(k: int, total: int) -> list[float]:
        left = total

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                reply = await bus.send("echo", peer, BODY)
                assert reply.code == 200, reply

        t0, ca, cb = time.perf_counter(), time.process_time(), _cpu(pid)
        await asyncio.gather(*(one() for _ in range(k)))
        rate = total / (time.perf_counter() - t0)
        return [rate, (time.process_time() - ca) / total * 1e6, (_cpu(pid) - cb) / total * 1e6]

    out: dict[str, list[float]] = {}
    for k in INFLIGHT:
        await window(k, 2_000)
        out[str(k)] = await window(k, TOTAL[k])
    await bus.stop()
    return out


class _FloorNode(asyncio.DatagramProtocol):
    """The floor of this shape: the same sockets, loop, window of coroutines and futures,
    but no KDMQ (a datagram is a 16-byte id + the body; the peer sends it back)."""

    def __init__(self, echo: bool, sock: socket.socket) -> None:
        self.echo = echo
        self.sock = sock
        self.transport: asyncio.DatagramTransport | None = None
        self.waiters: dict[bytes, asyncio.Future[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # drains the socket per wake-up, as the bus does (DmqProtocol, MAX_BATCH)
        assert self.transport is not None
        n = 0
        while True:
            if self.echo:
                self.transport.sendto(data, addr)
            else:
                fut = self.waiters.pop(data[:16], None)
                if fut is not None:
                    fut.set_result(data)
            n += 1
            if n == 256:
                break
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break


def _floor_socket(port: int) -> socket.socket:
    """Bound like the bus's (``SO_RCVBUF`` 4 MiB asked): the default loses bursts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _serve_floor(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = _floor_socket(port)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _FloorNode(echo=True, sock=sock), sock=sock
    )
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    transport.close()


async def _drive_floor(port: int, pid: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    sock = _floor_socket(0)
    transport, node = await loop.create_datagram_endpoint(
        lambda: _FloorNode(echo=False, sock=sock), sock=sock
    )
    peer = ("127.0.0.1", port)
    seq = iter(range(1 << 62))

    async def send() -> bytes:
        key = next(seq).to_bytes(16, "big")
        fut: asyncio.Future[bytes] = loop.create_future()
        node.waiters[key] = fut
        transport.sendto(key + BODY, peer)
        async with asyncio.timeout(5.0):  # a lost datagram fails the run, as fr_timer would
            return await fut

    async def window(k: int, total: int) -> list[float]:
        left = total

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await send()

        t0, ca, cb = time.perf_counter(), time.process_time(), _cpu(pid)
        await asyncio.gather(*(one() for _ in range(k)))
        rate = total / (time.perf_counter() - t0)
        return [rate, (time.process_time() - ca) / total * 1e6, (_cpu(pid) - cb) / total * 1e6]

    out: dict[str, list[float]] = {}
    for k in INFLIGHT:
        await window(k, 2_000)
        out[str(k)] = await window(k, TOTAL[k])
    transport.close()
    return out


def run_floor() -> dict[str, list[float]]:
    port = _free_udp_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        return asyncio.run(_drive_floor(port, child.pid))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)


def run_once() -> dict[str, list[float]]:
    a, b = f"sip:127.0.0.1:{_free_udp_port()}", f"sip:127.0.0.1:{_free_udp_port()}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", b],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        return asyncio.run(_drive(a, b, child.pid))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ab", metavar="OLD_TREE", help="alternate with the pymqueue at OLD_TREE")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    ap.add_argument(
        "--floor", action="store_true", help="the same shape without KDMQ (raw UDP echo)"
    )
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    if args.serve_floor:
        asyncio.run(_serve_floor(args.serve_floor))
        return
    if args.json or not args.ab:
        res = run_floor() if args.floor else run_once()
        if args.json:
            print(json.dumps(res))
        else:
            for k, (rate, ca, cb) in res.items():
                print(f"| {k} in flight | {rate:,.0f} req/s | CPU µs/req A {ca:.0f} / B {cb:.0f} |")
        return
    import pymqueue  # noqa: PLC0415

    trees = {"new": str(Path(pymqueue.__file__).resolve().parent.parent), "old": args.ab}
    runs: dict[str, list[dict[str, list[float]]]] = {"new": [], "old": []}
    for i in range(ROUNDS):
        for label, tree in trees.items() if i % 2 == 0 else reversed(trees.items()):
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, __file__, "--json"],
                env=env,
                capture_output=True,
                check=True,
                text=True,
            )
            runs[label].append(json.loads(out.stdout))
            print(f"round {i + 1} {label}: {out.stdout.strip()}", file=sys.stderr)
    print("| in flight | old req/s [CPU µs/req A / B] | new req/s [CPU µs/req A / B] | new / old |")
    print("|---|---|---|---|")
    for k in map(str, INFLIGHT):
        cells = {}
        for label in ("old", "new"):
            rate = statistics.median(r[k][0] for r in runs[label])
            ca = statistics.median(r[k][1] for r in runs[label])
            cb = statistics.median(r[k][2] for r in runs[label])
            cells[label] = (rate, f"{rate:,.0f} [{ca:.0f} / {cb:.0f}]".replace(",", " "))
        ratio = cells["new"][0] / cells["old"][0]
        print(f"| {k} | {cells['old'][1]} | {cells['new'][1]} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
