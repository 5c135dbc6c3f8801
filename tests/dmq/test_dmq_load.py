"""The bus under load (issue 13): 10 000 requests in flight leave memory bounded and the node
responsive. Real processes and real UDP sockets on 127.0.0.1; speed is measured in
bench/bench_dmq_load.py, not here.

* Sender side: a bus in this process starts 10 000 requests to a peer that holds them (a
  socket of the test that records and does not answer). While they are pending, the timer
  heap stays within its bound and a request to a live node (a child process) is answered;
  once the peer answers them all, the memory they took is given back.
* Receiver side: a child process sends 10 000 requests at once to a bus in this process whose
  async handler holds them. At most ``max_deferred`` are held; every other one is answered
  ``503`` (counted), never handed to the handler; the reply cache, the deferred requests and
  the tasks stay within their limits, and the flooded node still answers another request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import Iterator

import pytest
from dmq_helpers import IP, Workers, udp_port, uri, workers

from pymqueue.dmq import (
    Bus,
    BusThread,
    DmqRequest,
    IncomingRequest,
    NodeStatus,
    PeerReply,
    build_response,
    parse_message,
)

N = 10_000
MB = 1024 * 1024


@pytest.fixture
def ws() -> Iterator[Workers]:
    with workers() as w:
        yield w


def test_10000_pending_requests_bounded_and_responsive(ws: Workers) -> None:
    b = ws.start(uri(udp_port()), [])
    asyncio.run(asyncio.wait_for(_sender(b.server), 120))


class HoldingPeer(asyncio.DatagramProtocol):
    """A KDMQ peer that records ``echo`` requests (one per branch) and answers them all on
    release; notifications, and after release every request, are answered at once."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[DmqRequest, tuple[str, int]]] = {}
        self.released = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = parse_message(data)
        assert isinstance(req, DmqRequest)
        if self.released or req.channel != "echo":  # notifications: answered at once
            self._answer(req, addr)
        else:
            self.held[req.via.branch or ""] = (req, addr)

    def release(self) -> None:
        self.released = True
        for req, addr in self.held.values():
            self._answer(req, addr)

    def _answer(self, req: DmqRequest, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(build_response(req, 200, "OK"), addr)


async def _sender(live: str) -> None:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(HoldingPeer, local_addr=(IP, 0))
    holder = uri(transport.get_extra_info("sockname")[1])
    tracemalloc.start()
    try:
        # fr_timer 60 s: nothing times out while the test looks (no timing in the asserts)
        async with Bus(uri(udp_port()), [live, holder], ping_interval=5.0, fr_timer=60.0) as a:
            await a.wait_status(live, NodeStatus.ACTIVE, 10)
            await a.wait_status(holder, NodeStatus.ACTIVE, 10)
            ok = 0

            async def one() -> None:
                nonlocal ok
                reply = await a.send("echo", holder, b"x" * 64)
                ok += reply.code == 200

            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            sends = [asyncio.ensure_future(one()) for _ in range(N)]
            await a._until(lambda: a.core.pending_transactions >= N, 10)
            txns = a.core._txns
            assert txns.heap_size <= 2 * len(txns) + 64
            # responsive: a live node's answer arrives while the 10 000 are pending
            reply = await a.send("echo", live, b"ping")
            assert (reply.code, reply.body) == (200, live.encode() + b"|ping")
            assert a.core.pending_transactions == N
            assert txns.heap_size <= 2 * len(txns) + 64
            held = tracemalloc.get_traced_memory()[0] - base
            peer.release()
            await asyncio.wait(sends)
            del sends
            assert ok == N
            assert a.core.pending_transactions == 0
            assert txns.heap_size <= 64
            gc.collect()
            left = tracemalloc.get_traced_memory()[0] - base
            print(f"10 000 pending: {held / MB:.1f} MB held, {left / MB:.2f} MB left after")
            assert held < 64 * MB
            assert left < 2 * MB  # given back (what stays: dicts that do not shrink)
    finally:
        tracemalloc.stop()
        transport.close()


def test_flooded_node_bounded_and_responsive(ws: Workers) -> None:
    """R (a bus in this process, max_deferred 1 000) flooded by S (a child process)."""
    held: list[asyncio.Event] = []

    async def hold(req: IncomingRequest) -> PeerReply:
        ev = asyncio.Event()
        held.append(ev)
        await ev.wait()
        return PeerReply(200, "OK")

    limit, cache = 1000, 16384
    r_uri = uri(udp_port())
    tracemalloc.start()
    try:
        with BusThread(r_uri, None, ping_interval=5.0, fr_timer=30.0, max_deferred=limit,
                       reply_cache_size=cache) as r:  # fmt: skip
            r.register("hold", hold)
            r.register("echo", lambda req: b"R|" + req.body)
            s = ws.start(uri(udp_port()), [r_uri], fr=30.0)
            assert s.wait_status(r_uri, "active", timeout=10) == "active"
            core, stats = r.bus.core, r.bus.stats
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            assert s.proc.stdin is not None
            s.proc.stdin.write(
                json.dumps(
                    {"cmd": "flood", "channel": "hold", "node": r_uri, "body": "y" * 64, "count": N}
                ).encode()
                + b"\n"
            )
            s.proc.stdin.flush()  # fmt: skip
            # every request handled once: 1 000 held, 9 000 answered 503 without the handler
            r._submit(r.bus._until(lambda: stats.overloaded + len(held) >= N, 60), 70)
            sizes = r._call(lambda: (core.deferred_requests, len(r.bus._tasks), len(held),
                                     stats.overloaded, core.deferred_dropped,
                                     core.reply_cache_evicted))  # fmt: skip
            assert sizes == (limit, limit, limit, N - limit, 0, 0)
            assert core.reply_cache_entries <= cache
            grown = tracemalloc.get_traced_memory()[0] - base
            # responsive while holding 1 000: Q's request is answered within its fr_timer
            with BusThread(uri(udp_port()), r_uri, ping_interval=5.0, fr_timer=1.0) as q:
                reply = q.send("echo", r_uri, b"ping", timeout=5)
                assert (reply.code, reply.body) == (200, b"R|ping")
            assert r.send("echo", s.server, b"pong", timeout=5).code == 200
            assert core.deferred_requests == limit

            # released: the held ones are answered 200 before S's fr_timer (30 s)
            def release() -> None:
                for ev in held:
                    ev.set()

            r._call(release)
            m = s.expect(lambda m: m["ev"] == "flood", 60)
            assert m["codes"] == {"503": N - limit, "200": limit}, m
            assert r._call(lambda: (core.deferred_requests, len(r.bus._tasks))) == (0, 0)
            print(f"flooded node: {grown / MB:.1f} MB for {limit} held + {N} cached replies")
            assert grown < 64 * MB
    finally:
        tracemalloc.stop()
