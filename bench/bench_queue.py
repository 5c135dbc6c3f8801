"""pymqueue against its peers (pytest-benchmark). Not collected by the default test run.

    python -m pytest bench/ --benchmark-json=bench.json && python bench/report.py bench.json

Workloads (key 16 B):
  W1  one process: add one item then fetch it, value 64 B
  W2  one producer process -> one consumer process, 64 B and 4 KiB (with a "floor + bytes
      out" row: the floor's consumer also cuts key and value out as bytes)
  W3  four producer processes -> one consumer process, 64 B
  W4  one process: add 256 items in one call, then fetch them in one call (64 B); pymqueue
      twice: fetch_many (a list of pairs) and fetch_batch().values()
  ADD the cost of one add in addmode 0/1/2 with 10 vs 100 000 items queued

Multi-process rounds: the children are forked and ready (queue attached, socket open) before
the clock starts; each blocks on an Event; the timed part is ``go.set()`` until the consumer
reports over a pipe that it received its last item. Every pymqueue queue is created in the
namespace set by ``bench/conftest.py`` and unlinked after its benchmark.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from peers import BATCH, CTX, IMPLS, KEY, Impl, PyMQueue

from pymqueue import AddMode, Overflow, Queue

READY_TIMEOUT = 30.0
ROUND_TIMEOUT = 120.0

N_SMALL = 200_000  # items per multi-process round, 64 B
N_LARGE = 50_000  # items per multi-process round, 4 KiB
N_PAIRS = 20_000  # add+fetch pairs per W1 round
SLOW_DIVISOR = 5  # slow peers (Redis, one round trip per item) get N / 5

MULTI = [
    "pymqueue",
    "pymqueue_drop",
    "floor",
    "mp_queue",
    "mp_simplequeue",
    "faster_fifo",
    "faster_fifo_many",
    "posix_ipc",
    "cloudtoid",
    "redis",
]


def _make(key: str, value_size: int, request: pytest.FixtureRequest, n_items: int) -> Impl:
    """``n_items`` > 0: a multi-process workload moving that many items per round."""
    options: dict[str, Any] = {}
    if key == "redis":
        options["socket_path"] = request.getfixturevalue("redis_server")
    if n_items and key in ("pymqueue", "floor", "floor_bytes"):
        options["policy"] = Overflow.BLOCK  # bounded ring (16 MiB), producers wait for room
    if key == "pymqueue_drop":
        # default policy, ring large enough for every item of a round: never drops, never waits
        per_item = (24 + len(KEY) + value_size + 7) // 8 * 8
        options["capacity"] = max(n_items * per_item * 2, 16 * 1024 * 1024)
        impl: Impl = PyMQueue(value_size, **options)
        impl.label = "pymqueue (drop_oldest, ring holds all)"
        return impl
    impl = IMPLS[key](value_size, **options)
    return impl


def _label(impl: Impl) -> str:
    if impl.label:
        return impl.label
    if impl.name == "pymqueue" and impl.q.policy == Overflow.BLOCK:
        return f"{impl.name} (block, 16 MiB)"
    return impl.name


@pytest.fixture
def make_impl(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Impl] = []

    def make(key: str, value_size: int, n_items: int = 0) -> Impl:
        impl = _make(key, value_size, request, n_items)
        made.append(impl)
        return impl

    yield make
    for impl in made:
        impl.close()


# ---- multi-process runner --------------------------------------------------------------


def _child(impl: Impl, role: str, n: int, *, ready: Any, go: Any, done: Any) -> None:
    try:
        impl.child_init(role)
        ready.send(True)
        ready.close()
        go.wait()
        if role == "producer":
            impl.producer(n)
        else:
            impl.consumer(n)
            done.send(True)
    except BaseException as exc:
        if done is not None:
            done.send(f"{role} failed: {exc!r}")
        raise


class MultiRun:
    """One round: ``setup`` forks and waits until every child is ready; ``target`` (timed)
    releases them and waits for the consumer's last item; ``teardown`` reaps them."""

    def __init__(self, impl: Impl, producers: int, n: int) -> None:
        assert n % producers == 0
        self.impl = impl
        self.producers = producers
        self.n = n
        self.procs: list[Any] = []

    def setup(self) -> None:
        self.go = CTX.Event()
        self.done_r, done_w = CTX.Pipe(duplex=False)
        readies = []
        roles = [("consumer", self.n)] + [("producer", self.n // self.producers)] * self.producers
        for role, n in roles:
            r, w = CTX.Pipe(duplex=False)
            p = CTX.Process(
                target=_child,
                args=(self.impl, role, n),
                daemon=True,
                kwargs={"ready": w, "go": self.go, "done": done_w},
            )
            p.start()
            w.close()
            readies.append(r)
            self.procs.append(p)
        done_w.close()
        for r in readies:
            if not r.poll(READY_TIMEOUT):
                raise RuntimeError("a child did not get ready")
            r.recv()
            r.close()

    def target(self) -> None:
        self.go.set()
        if not self.done_r.poll(ROUND_TIMEOUT):
            raise RuntimeError(f"consumer did not get {self.n} items within {ROUND_TIMEOUT} s")
        msg = self.done_r.recv()
        if msg is not True:
            raise RuntimeError(msg)

    def teardown(self) -> None:
        self.done_r.close()
        for p in self.procs:
            p.join(ROUND_TIMEOUT)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join()
        codes = [p.exitcode for p in self.procs]
        self.procs = []
        if any(codes):
            raise RuntimeError(f"child exit codes {codes}")


def _run_multi(
    benchmark: Any, impl: Impl, workload: str, *, producers: int, n: int, value_size: int
) -> None:
    run = MultiRun(impl, producers, n)
    benchmark.extra_info.update(
        workload=workload,
        impl=_label(impl),
        items=n,
        producers=producers,
        value_size=value_size,
    )
    benchmark.pedantic(
        run.target, setup=run.setup, teardown=run.teardown, rounds=5, warmup_rounds=1
    )
    if isinstance(impl, PyMQueue):
        st = impl.q.stats()
        assert st.items == 0
        assert st.dropped == 0, "pymqueue dropped items: the figure would be wrong"
        benchmark.extra_info["putters_waited"] = st.rejected


def _n(impl: Impl, n: int) -> int:
    return n // SLOW_DIVISOR if impl.slow else n


# ---- W1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "pymqueue",
        "floor",
        "floor_bytes",
        "mp_queue",
        "mp_simplequeue",
        "faster_fifo",
        "posix_ipc",
        "cloudtoid",
        "redis",
    ],
)
def test_w1_add_then_fetch(benchmark: Any, make_impl: Any, key: str) -> None:
    impl = make_impl(key, 64)
    n = N_PAIRS // 10 if key in ("redis", "mp_queue") else N_PAIRS
    benchmark.extra_info.update(workload="W1", impl=_label(impl), items=n, value_size=64)
    benchmark.pedantic(impl.pairs, args=(n,), rounds=7, warmup_rounds=1)


# ---- W2, W3 -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [*MULTI, "floor_bytes"])
@pytest.mark.parametrize("value_size", [64, 4096], ids=["64B", "4KiB"])
def test_w2_one_to_one(benchmark: Any, make_impl: Any, key: str, value_size: int) -> None:
    n = N_SMALL if value_size == 64 else N_LARGE
    impl = make_impl(key, value_size, n)
    n = _n(impl, n)
    workload = "W2 64 B" if value_size == 64 else "W2 4 KiB"
    _run_multi(benchmark, impl, workload, producers=1, n=n, value_size=value_size)


@pytest.mark.parametrize("key", MULTI)
def test_w3_four_to_one(benchmark: Any, make_impl: Any, key: str) -> None:
    impl = make_impl(key, 64, N_SMALL)
    _run_multi(benchmark, impl, "W3", producers=4, n=_n(impl, N_SMALL), value_size=64)


# ---- W4 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["pymqueue", "pymqueue_batch", "floor", "faster_fifo", "cloudtoid", "redis"]
)
def test_w4_batch(benchmark: Any, make_impl: Any, key: str) -> None:
    impl = make_impl(key, 64)
    label = _label(impl)
    if key == "faster_fifo":
        label = "faster-fifo put_many/get_many"
    benchmark.extra_info.update(workload="W4", impl=label, items=BATCH, value_size=64)
    benchmark.pedantic(
        impl.batch, rounds=20, iterations=20 if key != "redis" else 5, warmup_rounds=1
    )


# ---- add cost against queue length --------------------------------------------------------

OPS = 100  # adds per timed call
ADD_ROUNDS, ADD_ITERS = 15, 10


@pytest.mark.parametrize("length", [10, 100_000], ids=["len10", "len100k"])
@pytest.mark.parametrize(
    ("addmode", "case"),
    [(0, "new"), (1, "new"), (2, "new"), (1, "dup"), (2, "dup")],
    ids=["mode0-new", "mode1-new", "mode2-new", "mode1-dup", "mode2-dup"],
)
def test_add_cost(benchmark: Any, addmode: int, case: str, length: int) -> None:
    """``new``: add an item with a key not queued, then fetch the oldest (so the length stays
    put; the figure includes that fetch). ``dup``: add an item whose key is queued (mode 1
    ignores it, mode 2 removes the old one and appends: the length stays put)."""
    value = b"v" * 64
    # default capacity (16 MiB): 100 000 items use 10.4 MB of it, and its key index is
    # touched all over by the warm-up round (a much larger ring would add first-touch page
    # faults of the index to the "new" figures, for either length)
    q = Queue(f"addcost{os.getpid()}", create=True, addmode=AddMode(addmode))
    try:
        add, fetch = q.add, q.fetch
        # Walk the whole ring once first, so that neither length pays first-touch page
        # faults of the shared memory when timed.
        for i in range(q.capacity // (24 + 16 + 64) + 1):
            add(b"w%015d" % i, value)
            fetch()
        keys = [b"%016d" % i for i in range(length)]
        q.add_many((k, value) for k in keys)
        total = 2 * (ADD_ROUNDS + 1) * ADD_ITERS * OPS  # generous: warmup and calibration
        if case == "new":
            fresh = iter([b"n%015d" % i for i in range(total)])

            def op() -> None:
                for _ in range(OPS):
                    add(next(fresh), value)
                    fetch()
        else:
            # cycle over queued keys, spread over the whole queue
            step = max(length // OPS, 1)
            cycle = [keys[(i * step) % length] for i in range(OPS)]

            def op() -> None:
                for k in cycle:
                    add(k, value)

        benchmark.extra_info.update(
            workload="ADD",
            impl=f"addmode {addmode} {case}",
            addmode=addmode,
            case=case,
            length=length,
            items=OPS,
        )
        benchmark.pedantic(op, rounds=ADD_ROUNDS, iterations=ADD_ITERS, warmup_rounds=1)
        st = q.stats()
        assert st.items == length
        assert st.dropped == 0
    finally:
        q.unlink()
        q.close()
