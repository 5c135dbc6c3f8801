"""Helpers for the queues-across-hosts tests: ``pymqueue serve`` nodes in child processes.

:class:`Node` writes a TOML config (one ``dmq = "owner"`` or ``"mirror"`` queue, an RPC
port, a ``[dmq]`` table), starts ``python -m pymqueue serve`` with a shared-memory namespace
of its own (the nodes run on one host but each must have its own segment of the queue),
waits for its ``ready`` line, answers RPC calls, and is stopped or killed by PID.
:class:`Nodes` stops every node still running and unlinks their segments (also those of
nodes killed with SIGKILL).
:func:`wait_for` polls a condition with a deadline (no sleep as synchronisation).
:class:`LossyProxy` stands between in-process buses and drops or duplicates datagrams.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from dmq_helpers import udp_port, uri
from fix_postgres import free_port

from pymqueue import Queue
from pymqueue.queue.sync import unlink

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "jobs"
IP = "127.0.0.1"
T = TypeVar("T")


def wait_for(probe: Callable[[], T], ok: Callable[[T], bool], timeout: float, what: str) -> T:
    """Poll ``probe()`` until ``ok(result)``; AssertionError naming ``what`` (and the last
    result) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout}s; last {got!r}")
        time.sleep(0.02)  # polling interval of a probe with a deadline


class Node:
    def __init__(self, tmp: Path, name: str, namespace: str, *, port: int | None = None,
                 notify: str | None = None, owner: str | None = None, ping: float = 5,
                 fr: float = 1, size: int = 0, mode: str = "owner",
                 batch_items: int | None = None) -> None:  # fmt: skip
        self.name = name
        self.namespace = namespace
        self.fixed_port = port is not None  # others may name this node: never re-picked
        self.referenced = False
        self.port = port or udp_port()
        self.uri = uri(self.port)
        self.rpc_port = free_port()
        self.conf = tmp / f"{name}.toml"
        self._settings = (notify, owner, ping, fr, size, mode, batch_items)
        self._write()
        self.proc: subprocess.Popen[bytes] | None = None
        self._q: Queue | None = None

    def _write(self) -> None:
        notify, owner, ping, fr, size, mode, batch_items = self._settings
        namespace = self.namespace
        lines = [
            f'namespace = "{namespace}"',
            "[rpc]",
            f"port = {self.rpc_port}",
            "[[queue]]",
            f'name = "{QUEUE}"',
            f"size = {size}",
            f'dmq = "{mode}"',
        ]
        if owner:
            lines.append(f'owner = "{owner}"')
        if batch_items is not None:
            lines.append(f"batch_items = {batch_items}")
        lines += ["[dmq]", f'server_address = "{self.uri}"', f"ping_interval = {ping}",
                  f"fr_timer = {fr}"]  # fmt: skip
        if notify:
            lines.append(f'notification_address = "{notify}"')
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> Node:
        """Start ``pymqueue serve``; a port taken meanwhile by another process of this
        shared machine is picked again (the RPC port always, the UDP port when no other
        node's config names it), up to three times."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for attempt in range(3):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pymqueue", "serve", "-c", str(self.conf)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
            )  # fmt: skip
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()  # blocks until ready or exit
            if line.startswith("pymqueue: ready"):
                return self
            self.proc.wait(10)
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            self._close_pipes()
            if "Address already in use" not in err or attempt == 2:
                raise AssertionError(f"{self.name} did not start: {line!r} {err[-2000:]}")
            self.rpc_port = free_port()
            if not (self.fixed_port or self.referenced):
                self.port = udp_port()
                self.uri = uri(self.port)
            self._write()
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def queue(self) -> Queue:
        """This node's shared-memory queue, attached by the test (a producer/consumer)."""
        if self._q is None:
            self._q = Queue(QUEUE, namespace=self.namespace, create=False)
        return self._q

    def rpc(self, method: str, *params: Any) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.rpc_port, timeout=10)
        try:
            body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params),
                               "id": 1})  # fmt: skip
            conn.request("POST", "/RPC", body, {"Content-Type": "application/json"})
            doc = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if "error" in doc:
            raise AssertionError(f"{self.name} {method}: {doc['error']}")
        return doc["result"]

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.rpc_port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return self.rpc("dmq.queues", QUEUE)[0]  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL: the node dies without leaving the bus; its segment stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._close_pipes()
        self.close_queue()

    def _close_pipes(self) -> None:
        if self.proc is not None:
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()

    def close_queue(self) -> None:
        if self._q is not None:
            self._q.close()
            self._q = None

    def cleanup(self) -> None:
        self.stop()
        unlink(QUEUE, namespace=self.namespace)


class Nodes:
    def __init__(self, tmp: Path, namespace: str) -> None:
        self.tmp = tmp
        self.namespace = namespace
        self.all: list[Node] = []

    def add(self, name: str, **kw: Any) -> Node:
        # each node its own namespace: the session's plus the node's name
        node = Node(self.tmp, name, f"{self.namespace}{name}", **kw)
        taken = {p for n in self.all for p in (n.port, n.rpc_port)}
        while not node.fixed_port and node.port in taken:  # the kernel gave one out twice
            node.port = udp_port()
            node.uri = uri(node.port)
        while node.rpc_port in taken:
            node.rpc_port = free_port()
        node._write()
        for other in self.all:
            if other.uri in (kw.get("notify"), kw.get("owner")):
                other.referenced = True
        self.all.append(node)
        return node

    def close(self) -> None:
        for node in self.all:
            node.cleanup()


@contextlib.contextmanager
def nodes(tmp: Path, namespace: str) -> Iterator[Nodes]:
    ns = Nodes(tmp, namespace)
    try:
        yield ns
    finally:
        ns.close()


def agreed_owner(live: list[Node]) -> str | None:
    """The owner every node of ``live`` names, None while they disagree."""
    owners = {n.stats()["owner"] for n in live}
    return owners.pop() if len(owners) == 1 else None


def produce(node: Node, tag: str, start: int, count: int) -> None:
    """``count`` items ``(tag, "<seq>")`` added to ``node``'s queue, in order."""
    node.queue.add_many([(tag, str(i)) for i in range(start, start + count)])


def drain(node: Node, into: list[tuple[str, int]]) -> int:
    """Fetch everything now in ``node``'s queue into ``into``; how many."""
    got = node.queue.fetch_many(100_000)
    into.extend((k.decode(), int(v)) for k, v in got)
    return len(got)


def drain_until(
    node: Node,
    into: list[tuple[str, int]],
    ok: Callable[[list[tuple[str, int]]], bool],
    timeout: float,
    what: str,
) -> None:
    """Consume from ``node`` into ``into`` until ``ok(into)`` (deadline: AssertionError)."""

    def probe() -> list[tuple[str, int]]:
        drain(node, into)
        return into

    wait_for(probe, ok, timeout, what)


def all_active(live: list[Node]) -> None:
    """Wait until every node of ``live`` sees every other one active."""

    def probe() -> list[int]:
        return [sum(1 for x in n.rpc("dmq.list_nodes") if x["status"] == "active") for n in live]

    wait_for(probe, lambda c: c == [len(live)] * len(live), 30, "all nodes active")


def per_origin(items: list[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tag, seq in items:
        out.setdefault(tag, []).append(seq)
    return out


class LossyProxy:
    """One socket per node (its announced address); what arrives is forwarded to the node's
    real port from the sender's proxy socket, or dropped or duplicated per the seeded
    generator once :attr:`lossy` is set."""

    def __init__(self, reals: list[int], seed: int, drop: float, dup: float) -> None:
        self.rng = random.Random(seed)
        self.drop, self.dup = drop, dup
        self.lossy = False
        self.dropped = self.duplicated = self.passed = 0
        self.socks: list[socket.socket] = []
        self.sel = selectors.DefaultSelector()
        for real in reals:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((IP, 0))
            s.setblocking(False)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ, (IP, real))
        self.ports = [s.getsockname()[1] for s in self.socks]
        self.by_real = dict(zip(reals, self.socks, strict=True))
        self._held: list[tuple[socket.socket, bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data, src = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    # sent from the sender's own proxy socket: the receiver answers to the
                    # source address, which then leads back to the sender through its proxy
                    out = self.by_real.get(src[1], sock)
                    self._forward(out, data, key.data)

    def _forward(self, sock: socket.socket, data: bytes, to: tuple[str, int]) -> None:
        held, self._held = self._held, []
        if self.lossy and self.rng.random() < self.drop:
            self.dropped += 1
        else:
            self.passed += 1
            sock.sendto(data, to)
            if self.lossy and self.rng.random() < self.dup:
                self.duplicated += 1
                self._held.append((sock, data, to))  # sent again after the next datagram
        for s, d, t in held:
            s.sendto(d, t)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            s.close()
        self.sel.close()


@contextlib.contextmanager
def lossy_proxy(seed: int) -> Iterator[tuple[LossyProxy, list[int]]]:
    """A :class:`LossyProxy` before three nodes (15 % dropped, 15 % duplicated once lossy is
    set) and the nodes' real ports; closed afterwards."""
    reals = [udp_port() for _ in range(3)]
    p = LossyProxy(reals, seed=seed, drop=0.15, dup=0.15)
    try:
        yield p, reals
    finally:
        p.close()


def stop_in_process(buses: list[Any], services: list[Any], queues: list[Queue]) -> None:
    """Stop in-process nodes: their buses, then their services, then their queues."""
    for b in buses:
        b.stop()
    for s in services:
        s.close()
    for q in queues:
        q.unlink()
        q.close()
