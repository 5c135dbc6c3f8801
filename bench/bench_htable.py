"""Replicated htable benchmarks against Kamailio 5.6.3 (``python -m pytest bench/bench_htable.py``).

Each round starts its nodes fresh (tests/htable_helpers.py: tables ``t``/``tx``,
``dmqreplicate=1``, ``dmq_init_sync=1``, one DMQ worker) and times one transfer:

* ``test_replication_*``: N cells written on one node, time until the other holds all N
  (rate = N / time). ``kamailio_to_pymqueue``: a Kamailio script loop sets N cells
  (``$sht``, each replicated as one KDMQ message); ``pymqueue_to_kamailio``: ``Htable``
  writes from Python; ``kamailio_to_kamailio``: the same script loop, another Kamailio
  receiving — the baseline, measured in the same run.
* ``test_sync_100000_*``: a node holding 100 000 cells; time from the start of the joining
  node until it holds all of them (includes the joiner's start-up: Kamailio's is ~0.1 s).

Completion on a Kamailio is seen by polling ``htable.stats`` every 50 ms (so times are
overstated by up to that); on pymqueue by :meth:`Htable.wait_until`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dmq_helpers import udp_port, uri
from fix_kamailio import kamailio, kamailio_bin  # noqa: F401 - fixtures
from htable_helpers import ht_count, kuri, script, start_ht, wait_listed, wait_rpc

from pymqueue.dmq import BusThread, NodeStatus
from pymqueue.dmq.htable_replica import Htable

N = 2_000
"""Small enough that a Kamailio script burst is not lost: at 20 000 back-to-back writes
5.6.3 itself lost about a third of them towards another Kamailio (UDP drops, fr_timer 5 s)."""
BIG = 100_000
BUS = {"ping_interval": 5.0, "fr_timer": 5.0}


def _record(benchmark: Any, cells: int) -> None:
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["cells"] = cells
    benchmark.extra_info["cells_per_s"] = round(cells / mean) if mean else None


def test_replication_kamailio_to_pymqueue(benchmark: Any, kamailio: Any) -> None:  # noqa: F811
    def setup() -> tuple[tuple[Any, Htable, BusThread], dict[str, Any]]:
        k = start_ht(kamailio)
        f = BusThread(uri(udp_port()), kuri(k), **BUS).start()
        t = Htable(f, "t")
        wait_listed(k, str(f.local))
        return (k, t, f), {}

    def run(k: Any, t: Htable, f: BusThread) -> None:
        script(k, "fill", n=str(N), p="k")
        t.wait_until(lambda h: len(h) == N, timeout=120)
        f.stop(timeout=1)
        k.stop()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _record(benchmark, N)


def test_replication_pymqueue_to_kamailio(benchmark: Any, kamailio: Any) -> None:  # noqa: F811
    def setup() -> tuple[tuple[Any, Htable, BusThread], dict[str, Any]]:
        k = start_ht(kamailio)
        f = BusThread(uri(udp_port()), kuri(k), **BUS).start()
        t = Htable(f, "t")
        wait_listed(k, str(f.local))
        f.wait_status(kuri(k), NodeStatus.ACTIVE, timeout=10)
        return (k, t, f), {}

    def run(k: Any, t: Htable, f: BusThread) -> None:
        for i in range(N):
            t[f"k{i}"] = f"v{i}"
        wait_rpc(lambda: ht_count(k, "t"), lambda n: n == N, 120, "cells on Kamailio")
        f.stop(timeout=1)
        k.stop()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _record(benchmark, N)


def test_replication_kamailio_to_kamailio(benchmark: Any, kamailio: Any) -> None:  # noqa: F811
    def setup() -> tuple[tuple[Any, Any], dict[str, Any]]:
        k1 = start_ht(kamailio)
        k2 = start_ht(kamailio, kuri(k1))
        wait_listed(k1, kuri(k2))
        return (k1, k2), {}

    def run(k1: Any, k2: Any) -> None:
        script(k1, "fill", n=str(N), p="k")
        wait_rpc(lambda: ht_count(k2, "t"), lambda n: n == N, 120, "cells on K2")
        k1.stop()
        k2.stop()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _record(benchmark, N)


def test_sync_100000_kamailio_to_pymqueue(benchmark: Any, kamailio: Any) -> None:  # noqa: F811
    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        k = start_ht(kamailio, fr_timer_ms=30000)
        script(k, "fill", n=str(BIG), p="key-")
        return (k,), {}

    def run(k: Any) -> None:
        f = BusThread(uri(udp_port()), kuri(k), **BUS)
        t = Htable(f, "t")
        with f:
            t.wait_until(lambda h: len(h) == BIG, timeout=120)
        k.stop()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _record(benchmark, BIG)


def test_sync_100000_pymqueue_to_kamailio(benchmark: Any, kamailio: Any) -> None:  # noqa: F811
    def setup() -> tuple[tuple[BusThread], dict[str, Any]]:
        g = BusThread(uri(udp_port()), None, **BUS)
        t = Htable(g, "t")
        g.start()
        t.update({f"key-{i}": f"v{i}" for i in range(BIG)})
        return (g,), {}

    def run(g: BusThread) -> None:
        k = start_ht(kamailio, str(g.local), fr_timer_ms=30000)
        wait_rpc(lambda: ht_count(k, "t"), lambda n: n == BIG, 120, "cells on Kamailio")
        g.stop(timeout=1)
        k.stop()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _record(benchmark, BIG)


def test_sync_100000_kamailio_to_kamailio(benchmark: Any, kamailio: Any) -> None:  # noqa: F811
    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        k1 = start_ht(kamailio, fr_timer_ms=30000)
        script(k1, "fill", n=str(BIG), p="key-")
        return (k1,), {}

    def run(k1: Any) -> None:
        k2 = start_ht(kamailio, kuri(k1), fr_timer_ms=30000)
        wait_rpc(lambda: ht_count(k2, "t"), lambda n: n == BIG, 120, "cells on K2")
        k1.stop()
        k2.stop()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _record(benchmark, BIG)
