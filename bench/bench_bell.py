"""Doorbells (``Queue.fileno()``, ``AsyncQueue`` waits): what they cost.

1. ``add`` of a 64-byte item (then a fetch, untimed) with no doorbell registered, with one
   registered but not armed, and with one armed before each add (the add then rings it:
   one ``sendto``). Median and p99 of the add alone.
2. asyncio hand-off: ping-pong of a 64-byte item between two processes, each awaiting
   ``AsyncQueue.fetch()``: through the doorbell, and through the worker-thread fallback.
3. Idle: CPU used by one process whose 1000 coroutines await 1000 empty queues.

Run: ``PYTHONPATH=. python3 bench/bench_bell.py``. Prints a Markdown table.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import platform
import resource
import time
from typing import Any

import pymqueue
from pymqueue import AsyncQueue

N_ADD = 20_000
N_PING = 2_000
IDLE_QUEUES = 1000
IDLE_SECONDS = 5.0


def _pct(xs: list[int], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] / 1000


def bench_add(ns: str) -> list[tuple[str, str, str]]:
    rows = []
    value = b"x" * 64
    for mode in ("no bell", "bell registered, not armed", "bell armed (add rings it)"):
        q = pymqueue.Queue(f"bb{os.getpid()}", create=True, capacity=1 << 20, namespace=ns)
        other = pymqueue.Queue(q.name, create=False, namespace=ns)
        try:
            if mode != "no bell":
                other.fileno()
            times = []
            for _ in range(N_ADD):
                if mode.startswith("bell armed"):
                    other.arm()
                t = time.perf_counter_ns()
                q.add(b"k", value)
                times.append(time.perf_counter_ns() - t)
                q.fetch()
            rows.append((mode, f"{_pct(times, 0.5):.2f}", f"{_pct(times, 0.99):.2f}"))
        finally:
            other.close()
            q.unlink()
            q.close()
    return rows


def _pong(ns: str, names: tuple[str, str], fallback: bool) -> None:
    async def main() -> None:
        a = AsyncQueue(pymqueue.Queue(names[0], create=False, namespace=ns))
        b = AsyncQueue(pymqueue.Queue(names[1], create=False, namespace=ns))
        if fallback:
            a._no_bell_until = float("inf")
        while (item := await a.fetch()) is not None and item[0] != b"stop":
            b.queue.add(*item)
        a.close()
        b.close()

    asyncio.run(main())


def bench_pingpong(ns: str, fallback: bool) -> tuple[float, float]:
    names = (f"bp{os.getpid()}a", f"bp{os.getpid()}b")
    qa = pymqueue.Queue(names[0], create=True, capacity=1 << 16, namespace=ns)
    qb = pymqueue.Queue(names[1], create=True, capacity=1 << 16, namespace=ns)
    p = mp.get_context("spawn").Process(target=_pong, args=(ns, names, fallback))
    p.start()
    times: list[int] = []
    try:

        async def main() -> None:
            b = AsyncQueue(qb)
            if fallback:
                b._no_bell_until = float("inf")
            value = b"x" * 64
            for i in range(N_PING + 100):
                t = time.perf_counter_ns()
                qa.add(b"k", value)
                assert await b.fetch(timeout=30) is not None
                if i >= 100:
                    times.append(time.perf_counter_ns() - t)
            qa.add(b"stop", b"")

        asyncio.run(main())
        p.join(30)
    finally:
        if p.is_alive():
            p.kill()
        for q in (qa, qb):
            q.unlink()
            q.close()
    return _pct(times, 0.5), _pct(times, 0.99)


def bench_idle(ns: str) -> float:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_QUEUES + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(IDLE_QUEUES + 256, hard), hard))
    qs = [
        pymqueue.Queue(f"bi{os.getpid()}_{i}", create=True, capacity=4096, namespace=ns)
        for i in range(IDLE_QUEUES)
    ]
    try:

        async def main() -> float:
            tasks = [asyncio.create_task(AsyncQueue(q).fetch()) for q in qs]
            await asyncio.sleep(0.5)
            c0 = time.process_time()
            await asyncio.sleep(IDLE_SECONDS)
            used = time.process_time() - c0
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return used / IDLE_SECONDS

        return asyncio.run(main())
    finally:
        for q in qs:
            q.unlink()
            q.close()


def main() -> None:
    ns = f"bench{os.getpid()}"
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print("| add of a 64 B item | median µs | p99 µs |")
    print("|---|---:|---:|")
    for row in bench_add(ns):
        print("| " + " | ".join(row) + " |")
    print()
    print("| asyncio ping-pong between two processes (64 B) | median µs | p99 µs |")
    print("|---|---:|---:|")
    for label, fallback in (("doorbell", False), ("worker thread (fallback)", True)):
        med, p99 = bench_pingpong(ns, fallback)
        print(f"| {label} | {med:.1f} | {p99:.1f} |")
    print()
    idle: Any = bench_idle(ns)
    print(
        f"Idle: {IDLE_QUEUES} coroutines awaiting {IDLE_QUEUES} empty queues use "
        f"{100 * idle:.2f} % of a core (one re-check per wait per second)."
    )


if __name__ == "__main__":
    main()
