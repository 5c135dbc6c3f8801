"""``pymqueue demo``: producers and consumers on one queue, two consumers killed mid-run, the
leftovers persisted to SQLite between runs.

What it shows, in a few seconds (``--items`` per producer at ``--rate`` items/s):

1. Producers add items to the queue ``demo``; consumers fetch and handle them.
2. Once every producer is a third of the way, consumer 0 is told to take its time over its next
   batch (the others let it have it), and is killed with SIGKILL while it handles it (it is
   running, not waiting).
3. Two thirds of the way, the producers hold still, the queue drains, and consumer 1 is killed
   with SIGKILL while it sleeps in the queue's wait (the queue counts it among its waiters and
   ``/proc/<pid>/wchan`` shows it asleep in the kernel). A queue whose wake-ups depend on every
   waiter cooperating hangs here; pymqueue's survivors must wake for the next items.
4. The survivors carry on to the end; the final table shows what each consumer fetched after
   the kills, the lock recoveries, and that ``added = fetched + left + dropped (+ replaced)``.
5. The items left in the queue are saved to SQLite at stop and loaded back by the next run.

The parent synchronises on what it can observe (counters in shared memory, the queue's
statistics, ``/proc``), never on a sleep. If the queue stops moving for ``STALL`` seconds the
demo says so and exits 1 instead of hanging.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pymqueue
from pymqueue.cli._render import Table, print_table, rich_console
from pymqueue.config import InstanceConfig
from pymqueue.definitions import DbMode, QueueDef
from pymqueue.errors import LockTimeout
from pymqueue.instance import Instance
from pymqueue.queue.sync import Queue
from pymqueue.queue.types import QueueStats

DEMO_QUEUE = "demo"
DEMO_DB = "pymqueue-demo.db"
BATCH = 64
STALL = 15.0  # seconds without any add or fetch while work remains: the queue is stuck
REFRESH = 0.1  # seconds between two looks at the queue (the display's tempo)

# Internal switch (not an option): step 3, the kill of a consumer asleep in a wait, runs when
# KILL_WAITER is true; PYMQUEUE_DEMO_KILL_WAITER=1/0 overrides it. An engine whose waits are
# process-shared pthread condvars hangs there (a producer blocks for ever in the signal; the
# demo then reports the stall and exits 1); the futex eventcounts of issue 9 do not.
KILL_WAITER = True
KILL_WAITER_ENV = "PYMQUEUE_DEMO_KILL_WAITER"

# consumer states (shared array)
IDLE, WAITING, WORKING, HOLDING = 0, 1, 2, 3


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="producers and consumers on one queue, two consumers killed mid-run, "
        "the leftovers saved to SQLite",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--producers", type=int, default=3)
    p.add_argument("--consumers", type=int, default=4, help="at least 3 (two are killed)")
    p.add_argument("--items", type=int, default=12_000, help="items per producer")
    p.add_argument(
        "--rate", type=int, default=4_000, help="items/s per producer (0: as fast as it can)"
    )
    p.add_argument(
        "--leave",
        type=int,
        default=1000,
        help="stop consuming when this many items are left (they are saved)",
    )
    p.add_argument("--db", default=DEMO_DB, help=f"SQLite file (default ./{DEMO_DB})")
    p.add_argument("--namespace", default=None)
    p.add_argument("--plain", action="store_true", help="plain text even when rich is installed")
    p.set_defaults(func=cmd_demo)


# ---- the workers (module level: spawn pickles them by name) -------------------------------


@dataclass
class _Shared:
    """What the parent and the workers share (created from a spawn context)."""

    start: Any  # Event: go
    checkpoint: Any  # Value: producers waiting at the current checkpoint
    go: Any  # list of Events, one per checkpoint: the parent lets the producers on
    budget: Any  # Value: items the consumers may still take (exactly --leave stay queued)
    fetched: Any  # Array: items fetched, per consumer
    handled: Any  # Array: items handled, per consumer
    state: Any  # Array: IDLE / WAITING / WORKING / HOLDING, per consumer
    slow: Any  # Array: 1 = take your time over the next batch (the parent will kill you)
    victim: Any  # Event: the slow consumer holds its batch (the others wait for it meanwhile)
    checkpoints: tuple[int, ...] = field(default=())  # items per producer at each checkpoint


def _produce(q: Queue, pid: int, n: int, rate: int, sh: _Shared) -> None:
    sh.start.wait()
    key = f"producer-{pid}".encode()
    t0 = time.monotonic()
    sent = 0
    stops = list(zip(sh.checkpoints, sh.go, strict=True))
    while sent < n:
        if stops and sent >= stops[0][0]:
            with sh.checkpoint.get_lock():
                sh.checkpoint.value += 1
            stops.pop(0)[1].wait()
            t0 = time.monotonic() - (sent / rate if rate else 0)  # no catch-up burst
        limit = stops[0][0] if stops else n
        k = min(BATCH, n - sent, max(limit - sent, 1))
        q.add_many([(key, b"%d:%d" % (pid, seq)) for seq in range(sent, sent + k)])
        sent += k
        if rate:
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # the demo's tempo (--rate), not synchronisation
    q.close()


def _handle(value: bytes) -> int:
    """A consumer's work on one item (a little CPU)."""
    return hashlib.blake2b(value * 32, digest_size=8).digest()[0]


def _consume(q: Queue, cid: int, sh: _Shared) -> None:
    """Fetch until the shared budget is spent, so that exactly --leave items stay queued."""
    sh.start.wait()
    while True:
        if cid != 0 and sh.slow[0] and not sh.victim.is_set():
            sh.victim.wait()  # let consumer 0 have the next batch
        with sh.budget.get_lock():
            claim = min(BATCH, sh.budget.value)
            sh.budget.value -= claim
        if claim == 0:
            break
        sh.state[cid] = WAITING
        items = q.fetch_many(claim, timeout=0.5)
        sh.state[cid] = WORKING
        if len(items) < claim:
            with sh.budget.get_lock():
                sh.budget.value += claim - len(items)
        if not items:
            continue
        sh.fetched[cid] += len(items)
        if sh.slow[cid]:
            # Told to take its time: hold this batch and work on it until killed (a consumer
            # stuck in a long job). Bounded, so a parent that died cannot leave it spinning.
            sh.victim.set()  # before HOLDING: the parent kills only once this lock is free
            sh.state[cid] = HOLDING
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for _, value in items:
                    _handle(value)
        for _, value in items:
            _handle(value)
            sh.handled[cid] += 1
    sh.state[cid] = IDLE
    q.close()


# ---- the parent ---------------------------------------------------------------------------


def _wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() or "0"
    except OSError:
        return "?"


def _proc_state(pid: int) -> str:
    """The one-letter state of /proc/<pid>/stat (R running, S sleeping, …)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class _Stuck(Exception):
    """The queue stopped moving (or a step could not be observed) before the deadline."""


@dataclass
class _Kill:
    consumer: int
    pid: int
    how: str
    fetched: int
    handled: int


class _Display:
    """The progress line: rich's progress bar on a terminal, a plain line a second otherwise."""

    def __init__(self, console: Any, total: int) -> None:
        self.console = console
        self.total = total
        self.tty = sys.stdout.isatty()
        self.last = 0.0
        self.progress: Any = None
        self.task: Any = None
        if console is not None and self.tty:
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("added"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.task = self.progress.add_task("added", total=total, detail="")
            self.progress.start()

    def event(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            if self.tty:
                print("\r\033[K", end="")
            print(text, flush=True)

    def update(self, produced: int, s: QueueStats, fetched: int, force: bool = False) -> None:
        detail = f"fetched {fetched:>9,}  queued {s.items:>7,}  waiting {s.getters_waiting}"
        if self.progress is not None:
            self.progress.update(self.task, completed=produced, detail=detail)
            return
        now = time.monotonic()
        if not force and not self.tty and now - self.last < 1.0:
            return
        self.last = now
        frac = produced / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        line = f"[{bar:<30}] {frac:6.1%}  added {produced:>9,}  {detail}"
        print("\r" + line if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif self.tty:
            print()


def cmd_demo(args: argparse.Namespace) -> int:
    if args.producers < 1 or args.consumers < 3 or min(args.items, args.leave, args.rate) < 0:
        print(
            "pymqueue: error: --producers >= 1, --consumers >= 3, --items/--leave/--rate >= 0",
            file=sys.stderr,
        )
        return 2
    kill_waiter = os.environ.get(KILL_WAITER_ENV, "1" if KILL_WAITER else "0") != "0"
    # The kills need live consumers at the second checkpoint (two thirds of the items): the
    # items to take after it must outnumber what the consumers claim at once.
    room = args.producers * args.items // 3 - args.consumers * BATCH
    if args.leave >= room:
        print(
            f"pymqueue: error: --leave {args.leave:,} is too large for {args.items:,} items "
            f"per producer (at most {max(room - 1, 0):,}; or give more --items)",
            file=sys.stderr,
        )
        return 2
    console = rich_console(args.plain)
    db_path = os.path.abspath(args.db)
    config = InstanceConfig(
        queues=(QueueDef(name=DEMO_QUEUE.encode(), dbmode=DbMode.LOAD_SAVE),),
        db_url="sqlite:///" + db_path,  # an absolute path gives Kamailio's 4-slash form
    )
    total_new = args.producers * args.items
    with Instance(config, namespace=args.namespace) as inst:
        q = inst.queue(DEMO_QUEUE)
        loaded = len(q)
        where = os.path.dirname(os.path.abspath(pymqueue.__file__))
        print(f"pymqueue {pymqueue.__version__} demo (package: {where})")
        print(
            f"queue {DEMO_QUEUE!r}: {args.producers} producers x {args.items:,} items"
            + (f" at {args.rate:,}/s" if args.rate else "")
            + f", {args.consumers} consumers; leftovers saved to {db_path}",
            flush=True,
        )
        if loaded:
            print(f"loaded {loaded:,} items the previous run left in the database", flush=True)
        status = _run(
            args, q=q, loaded=loaded, total_new=total_new, kill_waiter=kill_waiter, console=console
        )
    if status.left >= 0:
        print(
            f"\nstopped: the {status.left:,} items left were saved to {db_path}; "
            "run the demo again to see them loaded back",
            flush=True,
        )
    return status.code


@dataclass
class _Outcome:
    code: int
    left: int


def _run(
    args: argparse.Namespace,
    *,
    q: Queue,
    loaded: int,
    total_new: int,
    kill_waiter: bool,
    console: Any,
) -> _Outcome:
    ctx = mp.get_context("spawn")
    n = args.consumers
    third = args.items // 3
    checkpoints = (third, 2 * third) if args.items >= 3 else ()
    sh = _Shared(
        start=ctx.Event(),
        checkpoint=ctx.Value("i", 0),
        go=[ctx.Event() for _ in checkpoints],
        budget=ctx.Value("q", max(loaded + total_new - args.leave, 0)),
        # Lock-free (one writer per slot): a consumer killed while it writes must not leave
        # a lock held that the others need (multiprocessing's locks are not robust; ours are).
        fetched=ctx.Array("q", n, lock=False),
        handled=ctx.Array("q", n, lock=False),
        state=ctx.Array("i", n, lock=False),
        slow=ctx.Array("i", n, lock=False),
        victim=ctx.Event(),
        checkpoints=checkpoints,
    )
    producers = [
        ctx.Process(target=_produce, args=(q, i, args.items, args.rate, sh), name=f"producer-{i}")
        for i in range(args.producers)
    ]
    consumers = [
        ctx.Process(target=_consume, args=(q, i, sh), name=f"consumer-{i}") for i in range(n)
    ]
    procs = producers + consumers
    for p in procs:
        p.start()
    before = q.stats()
    display = _Display(console, total_new)
    kills: list[_Kill] = []
    after_kills: list[int] | None = None  # what each consumer had fetched after the last kill
    budget_after_kills = 0
    start = time.perf_counter()
    sh.start.set()
    stage = 0  # index of the next checkpoint to handle
    last_move = (time.monotonic(), before.added, before.fetched)

    def look() -> QueueStats:
        nonlocal last_move
        s = q.stats()
        now = time.monotonic()
        if (s.added, s.fetched) != last_move[1:]:
            last_move = (now, s.added, s.fetched)
        elif now - last_move[0] > STALL:
            raise _Stuck(f"the queue has not moved for {STALL:.0f} s")
        display.update(s.added - before.added, s, s.fetched - before.fetched)
        return s

    def until(what: str, predicate: Any) -> None:
        """Poll what the parent can observe until ``predicate()`` holds (or STALL passes)."""
        deadline = time.monotonic() + STALL
        while not predicate():
            if time.monotonic() > deadline:
                raise _Stuck(f"{what} did not happen within {STALL:.0f} s")
            time.sleep(0.001)  # a poll interval: the condition itself is what is waited for

    def kill(cid: int, how: str) -> None:
        nonlocal after_kills, budget_after_kills
        pid = consumers[cid].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        consumers[cid].join()
        kills.append(_Kill(cid, pid, how, sh.fetched[cid], sh.handled[cid]))
        after_kills = [sh.fetched[i] for i in range(n)]
        budget_after_kills = sh.budget.value
        display.event(f"killed consumer {cid} (pid {pid}) with SIGKILL {how}")

    try:
        while True:
            s = look()
            if stage < len(checkpoints) and sh.checkpoint.value == args.producers:
                # every producer waits at checkpoint `stage`
                sh.checkpoint.value = 0
                if stage == 0:
                    sh.slow[0] = 1
                    sh.go[0].set()  # items flow again: consumer 0 holds its next batch
                    until("consumer 0 taking a batch", lambda: sh.state[0] == HOLDING)
                    pid0 = consumers[0].pid
                    assert pid0 is not None
                    until("consumer 0 running", lambda p=pid0: _proc_state(p) == "R")
                    kill(0, "while it worked on a batch (running, not waiting)")
                elif kill_waiter:
                    # producers hold still: the queue drains and the consumers fall asleep
                    pid1 = consumers[1].pid
                    assert pid1 is not None

                    def asleep(pid1: int = pid1) -> bool:
                        s = look()
                        return (
                            s.items == 0
                            and s.getters_waiting >= 1
                            and sh.state[1] == WAITING
                            and _proc_state(pid1) == "S"
                            and "futex" in _wchan(pid1)
                        )

                    until("consumer 1 asleep in the queue's wait", asleep)
                    waiting, wchan = q.stats().getters_waiting, _wchan(pid1)
                    kill(
                        1,
                        f"while it slept in the queue's wait (wchan {wchan}, "
                        f"{waiting} waiter(s) on the queue)",
                    )
                    sh.go[1].set()
                else:
                    display.event("(skipped: the kill of a consumer asleep in a wait)")
                    sh.go[1].set()
                stage += 1
                continue
            if all(not p.is_alive() for p in procs):
                break
            time.sleep(REFRESH)  # the display's refresh rate, not synchronisation
    except BaseException as exc:
        display.close()
        for p in procs:  # never leave a worker behind
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
            p.join()
        if not isinstance(exc, _Stuck | LockTimeout):
            raise
        print(f"pymqueue: error: {exc}: the demo gives up", file=sys.stderr)
        return _Outcome(1, -1)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    s = q.stats()
    display.update(s.added - before.added, s, s.fetched - before.fetched, force=True)
    display.close()
    return _report(
        console=console,
        s=s,
        before=before,
        loaded=loaded,
        elapsed=elapsed,
        procs=procs,
        consumers=consumers,
        sh=sh,
        kills=kills,
        after_kills=after_kills,
        work_after_kills=budget_after_kills > 0,
    )


def _report(
    *,
    console: Any,
    s: QueueStats,
    before: QueueStats,
    loaded: int,
    elapsed: float,
    procs: list[Any],
    consumers: list[Any],
    sh: _Shared,
    kills: list[_Kill],
    after_kills: list[int] | None,
    work_after_kills: bool,
) -> _Outcome:
    killed = {k.consumer: k for k in kills}
    table = Table(
        ["consumer", "pid", "fate", "fetched", "handled", "after the kills"],
        title="Consumers",
        left=(0, 2),
    )
    for i, p in enumerate(consumers):
        fetched, handled = sh.fetched[i], sh.handled[i]
        if i in killed:
            k = killed[i]
            fate = "killed (working)" if i == 0 else "killed (asleep in a wait)"
            after = "-"
            fetched, handled = k.fetched, k.handled
        else:
            fate = "carried on" if p.exitcode == 0 else f"exit code {p.exitcode}"
            after = f"{fetched - after_kills[i]:,}" if after_kills is not None else "-"
        table.add(i, p.pid, fate, f"{fetched:,}", f"{handled:,}", after)
    print()
    print_table(console, table)

    in_flight = sum(k.fetched - k.handled for k in kills)
    added, fetched = s.added - before.added, s.fetched - before.fetched
    rows = Table(["queue", "value"], title=f"Queue {DEMO_QUEUE!r}")
    rows.add("loaded from the database", f"{loaded:,}")
    rows.add("added by the producers", f"{added:,} ({added / elapsed:,.0f}/s)")
    rows.add("fetched by the consumers", f"{fetched:,} ({fetched / elapsed:,.0f}/s)")
    rows.add("  of which died with a killed consumer", f"{in_flight:,}")
    rows.add("left in the queue (saved at stop)", f"{s.items:,}")
    rows.add("dropped (overflow)", f"{s.dropped:,}")
    rows.add("high-water mark", f"{s.high_water:,} items")
    rows.add("lock recoveries (a holder died)", f"{s.recoveries:,}")
    rows.add("elapsed", f"{elapsed:.1f} s")
    print_table(console, rows)

    # The queue's own counters, since it was created (the loaded items count as added).
    identity = s.fetched + s.items + s.dropped + s.replaced
    replaced = f" + replaced {s.replaced:,}" if s.replaced else ""
    verdict = "holds" if s.added == identity else "DOES NOT HOLD"
    print(
        f"\nadded {s.added:,} = fetched {s.fetched:,} + left {s.items:,} + dropped "
        f"{s.dropped:,}{replaced}: {verdict}",
        flush=True,
    )
    survivors = [i for i in range(len(consumers)) if i not in killed]
    # the survivors carried on: they exited normally and, if work was left after the kills,
    # fetched it between them
    carried_on = all(consumers[i].exitcode == 0 for i in survivors) and (
        not work_after_kills
        or (after_kills is not None and sum(sh.fetched[i] - after_kills[i] for i in survivors) > 0)
    )
    if kills:
        print(
            f"{len(kills)} consumer(s) killed with SIGKILL; the {len(survivors)} survivors "
            + ("carried on" if carried_on else "DID NOT carry on")
            + f" ({sum(sh.fetched[i] for i in survivors):,} items fetched in all)",
            flush=True,
        )
    bad = [
        (p.name, p.exitcode)
        for p in procs
        if p.exitcode != 0 and not (p in consumers and consumers.index(p) in killed)
    ]
    if bad:
        print(f"pymqueue: error: workers failed: {bad}", file=sys.stderr)
    ok = not bad and s.added == identity and carried_on
    return _Outcome(0 if ok else 1, s.items)
