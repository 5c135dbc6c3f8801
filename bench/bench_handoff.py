"""Hand-off latency and idle CPU (issue 9). Not collected by the default test run.

    python -m pytest bench/bench_handoff.py --benchmark-json=handoff.json -p no:cacheprovider \
        && python bench/report.py handoff.json

* ``test_handoff``: ping-pong of one item (key 16 B + value 64 B; peers carry the 80 B as one
  message) between this process and a forked responder, through two channels (A->B, B->A),
  both sides blocking with no timeout. Each round trip is timed in this process with
  ``time.perf_counter_ns()``; ``WARMUP`` round trips first, then ``ROUND_TRIPS`` timed ones.
  Median, p90, p99, mean go into ``extra_info``; pytest-benchmark's own figure is the time of
  the whole timed loop (one round).
* ``test_handoff_c_futex``: ``bench/futex_pingpong.c``, compiled here with
  ``gcc -O2 -Wall -Wextra -Werror``: the same ping-pong in C with two futex words (FUTEX_WAIT /
  FUTEX_WAKE), no payload; spin 0 (sleep at once) and a 20 us spin before sleeping.
* ``test_idle_cpu``: a forked consumer blocks in its receive with no timeout on an empty
  channel for ``IDLE_SECONDS``; its CPU time (user + sys, ``getrusage(RUSAGE_SELF)`` in the
  child, all threads) over the wall time it waited, as % of one core.

The hand-off tests run three ways (parameter ``pin``): ``none`` (nothing pinned: the
scheduler decides, and on a small VM it sometimes keeps both processes on one CPU and
sometimes not, which moves every figure by 5-10x), ``same`` (both processes pinned to
CPU 0) and ``split`` (initiator on CPU 0, responder on CPU 1). The idle-CPU test pins
nothing. The load average at the start of each test is recorded.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import CTX, HANDOFFS, Handoff

ROUND_TRIPS = 20_000
WARMUP = 2_000
IDLE_SECONDS = 2.0
READY_TIMEOUT = 30.0
C_SOURCE = Path(__file__).with_name("futex_pingpong.c")
C_SPINS_NS = [0, 20_000]
PINS = {"none": (None, None), "same": (0, 0), "split": (0, 1)}
if (os.cpu_count() or 1) < 2:
    del PINS["split"]

pytestmark = pytest.mark.timeout(600)


def percentile(sorted_ns: list[int], p: float) -> int:
    """Nearest-rank on the sorted samples (same rule as futex_pingpong.c)."""
    return sorted_ns[int(p * (len(sorted_ns) - 1) + 0.5)]


def summary(samples: list[int]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "round_trips": len(s),
        "median_ns": percentile(s, 0.5),
        "p90_ns": percentile(s, 0.9),
        "p99_ns": percentile(s, 0.99),
        "mean_ns": round(statistics.fmean(s)),
        "min_ns": s[0],
        "max_ns": s[-1],
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- the responder ----------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """This process on ``cpu`` (None: unchanged) for the duration."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _responder(
    impl: Handoff, n: int, *, ready: Any, result: Any, measure: bool, cpu: int | None
) -> None:
    """Echo ``n`` items. ``measure``: send back (cpu seconds, wall seconds) of the echo."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    impl.child_init()
    ready.send(True)
    ready.close()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    impl.pong(n)
    w1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    impl.child_close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    result.send((cpu, w1 - w0) if measure else True)
    result.close()


class Pair:
    """A forked responder, ready (endpoints open) before anything is timed; stopped by PID
    if it has not exited when the test is over."""

    def __init__(
        self, impl: Handoff, n: int, measure: bool = False, cpu: int | None = None
    ) -> None:
        self.impl = impl
        ready_r, ready_w = CTX.Pipe(duplex=False)
        self.result_r, result_w = CTX.Pipe(duplex=False)
        self.proc = CTX.Process(
            target=_responder,
            args=(impl, n),
            daemon=True,
            kwargs={"ready": ready_w, "result": result_w, "measure": measure, "cpu": cpu},
        )
        self.proc.start()
        ready_w.close()
        result_w.close()
        if not ready_r.poll(READY_TIMEOUT):
            self.stop()
            raise RuntimeError("the responder did not get ready")
        ready_r.recv()
        ready_r.close()
        impl.parent_init()

    def result(self) -> Any:
        if not self.result_r.poll(READY_TIMEOUT):
            raise RuntimeError("the responder did not report")
        return self.result_r.recv()

    def stop(self) -> None:
        self.result_r.close()
        self.proc.join(10)
        if self.proc.is_alive() and self.proc.pid is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.join()
        if self.proc.exitcode:
            raise RuntimeError(f"responder exit code {self.proc.exitcode}")


@pytest.fixture
def handoff(request: pytest.FixtureRequest) -> Iterator[Handoff]:
    cls = HANDOFFS[request.param]
    try:
        impl = cls()
    except (TypeError, AttributeError) as exc:  # a peer whose module is not installed
        pytest.skip(f"{cls.name}: {exc}")
    try:
        yield impl
    finally:
        impl.close()


KEYS = list(HANDOFFS)


# ---- hand-off latency ---------------------------------------------------------------------


@pytest.mark.parametrize("pin", list(PINS))
@pytest.mark.parametrize("handoff", KEYS, indirect=True)
def test_handoff(benchmark: Any, handoff: Handoff, pin: str) -> None:
    load = load_average()
    cpu_a, cpu_b = PINS[pin]
    samples: list[int] = []
    with pinned(cpu_a):
        pair = Pair(handoff, WARMUP + ROUND_TRIPS, cpu=cpu_b)
        try:
            handoff.ping(WARMUP)

            def timed() -> None:
                samples.extend(handoff.ping(ROUND_TRIPS))

            benchmark.pedantic(timed, rounds=1, iterations=1)
            assert pair.result() is True
        finally:
            pair.stop()
    benchmark.extra_info.update(
        workload="HANDOFF",
        impl=handoff.name,
        peer=handoff.peer,
        pin=pin,
        value_size=len(handoff.value),
        loadavg_start=load,
        loadavg_end=load_average(),
        **summary(samples),
    )


@pytest.fixture(scope="module")
def futex_binary() -> Iterator[Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="pmq-bench-futex-"))
    exe = tmp / "futex_pingpong"
    try:
        subprocess.run(
            [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(C_SOURCE)],
            check=True,
            capture_output=True,
            text=True,
        )
        yield exe
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("pin", list(PINS))
@pytest.mark.parametrize("spin_ns", C_SPINS_NS, ids=lambda s: f"spin{s // 1000}us")
def test_handoff_c_futex(benchmark: Any, futex_binary: Path, spin_ns: int, pin: str) -> None:
    load = load_average()
    out: list[str] = []
    cpus = [str(-1 if c is None else c) for c in PINS[pin]]

    def run() -> None:
        proc = subprocess.run(
            [str(futex_binary), str(ROUND_TRIPS), str(WARMUP), str(spin_ns), *cpus],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out.append(proc.stdout)

    benchmark.pedantic(run, rounds=1, iterations=1)
    figures = {k: float(v) for k, v in (f.split("=") for f in out[0].split())}
    label = "C futex reference" + (f" (spin {spin_ns // 1000} us)" if spin_ns else "")
    benchmark.extra_info.update(
        workload="HANDOFF",
        impl=label,
        peer=False,
        reference=True,
        pin=pin,
        value_size=0,
        loadavg_start=load,
        loadavg_end=load_average(),
        **figures,
    )


# ---- idle CPU ----------------------------------------------------------------------------


@pytest.mark.parametrize("handoff", KEYS, indirect=True)
def test_idle_cpu(benchmark: Any, handoff: Handoff) -> None:
    load = load_average()
    got: list[tuple[float, float]] = []

    def run() -> None:
        pair = Pair(handoff, 1, measure=True)
        try:
            time.sleep(IDLE_SECONDS)  # the workload: nothing arrives for this long
            handoff.ping(1)
            got.append(pair.result())
        finally:
            pair.stop()

    benchmark.pedantic(run, rounds=1, iterations=1)
    cpu, wall = got[0]
    benchmark.extra_info.update(
        workload="IDLE",
        impl=handoff.name,
        peer=handoff.peer,
        cpu_s=cpu,
        wall_s=wall,
        cpu_pct=100.0 * cpu / wall,
        loadavg_start=load,
    )
