"""Queues across hosts (issue 13): forwarding throughput and failover time, real
``pymqueue serve`` nodes on loopback::

    python -m pytest bench/bench_dqueue.py -s -p no:cacheprovider

* **forwarding**: an outbox node and its configured owner (two ``pymqueue serve``
  processes). This process adds ``ITEMS`` items of 64-byte values (empty keys) to the
  outbox in one ``add_many`` (a few ms: far faster than forwarding) and polls the owner's
  queue until all are there; rate = items / time from the add to the last arrival. One batch
  in flight per queue (stop-and-wait). Median of ``ROUNDS`` rounds, spread beside it; the
  CPU time per item of each ``serve`` process (``/proc/PID/stat``) is the steadier figure on
  a loaded machine.
* **mirror**: three ``dmq = "mirror"`` nodes; ``ITEMS`` items added on one in one
  ``add_many``; time until both peers hold them all and the producing node has released
  them (its local consumers could have them); rate = items / that time, each item
  delivered to two peers. Median of ``ROUNDS``; CPU per item of the producing node and of
  one peer.
* **failover**: three nodes (``ping_interval`` 5 s, ``fr_timer`` 1 s); the owner is killed
  with SIGKILL and an item is added at once on an outbox node; time until it is in the new
  owner's queue. Each round starts three new nodes.

Prints ``uptime`` before and after (the machine is shared) and a Markdown table.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dmq_helpers import udp_port, uri
from dqueue_helpers import Node, agreed_owner, all_active, nodes, wait_for

ITEMS = 150_000  # the 16 MiB default ring holds about 190 000 of them
ROUNDS = 3
FAILOVER_ROUNDS = 3
VALUE = b"v" * 64
TARGET = 200_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def test_forwarding_throughput(tmp_path: Path) -> None:
    ns = os.environ["PYMQUEUE_NAMESPACE"]
    print(f"\nbefore: {uptime()}, {os.cpu_count()} CPUs")
    rates: list[float] = []
    with nodes(tmp_path, ns) as group:
        oport = udp_port()
        owner = group.add("o", port=oport, owner=uri(oport), fr=5)
        outbox = group.add("x", notify=owner.uri, owner=uri(oport), fr=5)
        owner.start()
        outbox.start()
        all_active([owner, outbox])
        wait_for(outbox.stats, lambda s: s["owner"] == owner.uri, 30, "owner known")
        items = [(b"", VALUE)] * ITEMS
        cpu0 = (cpu_seconds(outbox.pid), cpu_seconds(owner.pid))
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            outbox.queue.add_many(items)
            wait_for(owner.queue.size, lambda k: k == ITEMS, 120, "all on the owner")
            dt = time.perf_counter() - t0
            rates.append(ITEMS / dt)
            owner.queue.fetch_many(ITEMS)
        cpu = [
            (cpu_seconds(p) - c) / (ITEMS * ROUNDS) * 1e6
            for p, c in zip((outbox.pid, owner.pid), cpu0, strict=True)
        ]
        s = outbox.stats()
    print(f"after: {uptime()}")
    med = statistics.median(rates)
    print("\n| forwarding, 64 B values, outbox -> owner | items/s (median) | spread | target |")
    print("|---|---|---|---|")
    verdict = "met" if med >= TARGET else "MISSED"
    print(
        f"| {ITEMS} items x {ROUNDS} rounds | {med:,.0f} | {min(rates):,.0f}-{max(rates):,.0f}"
        f" | {TARGET:,} ({verdict}) |"
    )
    print(f"batches {s['batches']}, items/batch {s['forwarded'] / s['batches']:.0f}")
    print(
        f"CPU per item: outbox process {cpu[0]:.2f} us, owner process {cpu[1]:.2f} us "
        f"(on two idle cores: ~{1e6 / sum(cpu):,.0f} items/s if nothing overlapped, "
        f"~{1e6 / max(cpu):,.0f} if everything did)"
    )


def test_mirror_throughput(tmp_path: Path) -> None:
    ns = os.environ["PYMQUEUE_NAMESPACE"]
    print(f"\nbefore: {uptime()}, {os.cpu_count()} CPUs")
    rates: list[float] = []
    with nodes(tmp_path, ns) as group:
        x = group.add("x", mode="mirror", fr=5)
        peers = [group.add(n, notify=x.uri, mode="mirror", fr=5) for n in ("p", "q")]
        three = [x, *peers]
        for n in three:
            n.start()
        all_active(three)
        wait_for(lambda: [n.stats()["carriers"] for n in three], lambda c: c == [2, 2, 2], 30,
                 "carriers known")  # fmt: skip
        items = [(b"", VALUE)] * ITEMS

        def done() -> bool:
            return x.queue.stats().held == 0 and all(p.queue.size() == ITEMS for p in peers)

        cpu0 = (cpu_seconds(x.pid), cpu_seconds(peers[0].pid))
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            x.queue.add_many(items)
            wait_for(done, bool, 120, "all on both peers, released on the producer")
            dt = time.perf_counter() - t0
            rates.append(ITEMS / dt)
            for n in three:
                n.queue.fetch_many(ITEMS)
        cpu = [
            (cpu_seconds(p) - c) / (ITEMS * ROUNDS) * 1e6
            for p, c in zip((x.pid, peers[0].pid), cpu0, strict=True)
        ]
        s = x.stats()
    print(f"after: {uptime()}")
    med = statistics.median(rates)
    print("\n| mirror, 64 B values, 1 node -> 2 peers | items/s (median) | spread |")
    print("|---|---|---|")
    print(f"| {ITEMS} items x {ROUNDS} rounds | {med:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} |")
    print(f"batches {s['batches']}, items/batch {ITEMS * ROUNDS / s['batches']:.0f}, "
          f"missed {s['missed']}, resent {s['resent']}")  # fmt: skip
    print(f"CPU per item: producing node {cpu[0]:.2f} us, a peer {cpu[1]:.2f} us")


def arrived(rest: list[Node]) -> bool:
    return any(n.queue.size() for n in rest if n.stats()["is_owner"])


def test_failover_time(tmp_path: Path) -> None:
    ns = os.environ["PYMQUEUE_NAMESPACE"]
    print(f"\nbefore: {uptime()}")
    times: list[float] = []
    for r in range(FAILOVER_ROUNDS):
        with nodes(tmp_path, f"{ns}{r}") as group:
            a = group.add("a")
            b = group.add("b", notify=a.uri)
            c = group.add("c", notify=a.uri)
            three = [a, b, c]
            for n in three:
                n.start()
            all_active(three)
            owner_uri = wait_for(functools.partial(agreed_owner, three), bool, 30, "owner")
            owner = next(n for n in three if n.uri == owner_uri)
            rest = [n for n in three if n is not owner]
            owner.kill()
            t0 = time.perf_counter()
            rest[0].queue.add(b"k", b"after the kill")

            wait_for(functools.partial(arrived, rest), bool, 60, "the item on the new owner")
            times.append(time.perf_counter() - t0)
    print(f"after: {uptime()}")
    print("\n| failover (ping_interval 5 s, fr_timer 1 s) | seconds (median) | spread |")
    print("|---|---|---|")
    print(
        f"| kill -9 owner -> item added at once is on the new owner | "
        f"{statistics.median(times):.1f} | {min(times):.1f}-{max(times):.1f} |"
    )
