"""The queues on this host, worked on in shared memory directly (no server needed): the
README's "Queues" commands, and its demo.

* ``ls``, ``stats NAME``, ``unlink NAME``: list, observe and remove queues.
* ``get_size NAME``, ``get_sizes``, ``fetch NAME``: the ``mqueue.*`` RPCs done directly on the
  shared memory, printed as ``kamcmd`` prints them, or as JSON with ``--json``. Unlike
  ``kamcmd``, an error gives a non-zero exit status (1).
* ``demo``: producers and consumers on one queue, persisted to SQLite between runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from pymqueue._text import json_bytes_fields
from pymqueue.cli._common import (
    check_name,
    config_names,
    emit_json,
    emit_struct,
    namespace_of,
    run_rpc_like,
)
from pymqueue.config import InstanceConfig
from pymqueue.definitions import DbMode, QueueDef
from pymqueue.errors import QueueNotFound, RpcError
from pymqueue.instance import Instance
from pymqueue.queue.sync import Queue, list_queues, unlink

DEMO_QUEUE = "demo"
DEMO_DB = "pymqueue-demo.db"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ls", help="list the queues on this host")
    p.add_argument("--namespace", default=None, help="default: $PYMQUEUE_NAMESPACE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = subparsers.add_parser("stats", help="print a queue's counters")
    p.add_argument("name")
    p.add_argument("--namespace", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)

    p = subparsers.add_parser("unlink", help="remove a queue from this host")
    p.add_argument("name")
    p.add_argument("--namespace", default=None)
    p.set_defaults(func=cmd_unlink)

    def kamcmd_like(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", metavar="FILE", help="use the queues of this config")
        p.add_argument("--namespace", help="shared-memory namespace (overrides the config)")
        p.add_argument("--json", action="store_true", help="print JSON instead of kamcmd text")

    p = subparsers.add_parser("get_size", help="item count of one queue (mqueue.get_size)")
    p.add_argument("name")
    kamcmd_like(p)
    p.set_defaults(func=cmd_get_size)

    p = subparsers.add_parser("get_sizes", help="item counts of all queues (mqueue.get_sizes)")
    kamcmd_like(p)
    p.set_defaults(func=cmd_get_sizes)

    p = subparsers.add_parser("fetch", help="take the oldest item of a queue (mqueue.fetch)")
    p.add_argument("name")
    kamcmd_like(p)
    p.set_defaults(func=cmd_fetch)

    p = subparsers.add_parser(
        "demo",
        help="producers and consumers on one queue, persisted to SQLite between runs",
    )
    p.add_argument("--producers", type=int, default=3)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--items", type=int, default=100_000, help="items per producer")
    p.add_argument(
        "--leave",
        type=int,
        default=1000,
        help="stop consuming when this many items are left (they are saved)",
    )
    p.add_argument("--db", default=DEMO_DB, help=f"SQLite file (default ./{DEMO_DB})")
    p.add_argument("--namespace", default=None)
    p.set_defaults(func=cmd_demo)


def cmd_ls(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in list_queues(args.namespace):
        try:
            with Queue(name, create=False, namespace=args.namespace) as q:
                s = q.stats()
            rows.append({"name": name, "items": s.items, "size": s.max_items, "bytes": s.bytes})
        except Exception as exc:  # one broken segment must not hide the others
            rows.append({"name": name, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{width}}  {'ITEMS':>10}  {'SIZE':>8}  {'BYTES':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<{width}}  error: {r['error']}")
        else:
            limit = r["size"] or "-"
            print(f"{r['name']:<{width}}  {r['items']:>10}  {limit:>8}  {r['bytes']:>12}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with Queue(args.name, create=False, namespace=args.namespace) as q:
        s = q.stats()
    if args.json:
        print(json.dumps(asdict(s), ensure_ascii=False))
    else:
        for key, value in asdict(s).items():
            print(f"{key}: {value}")
    return 0


def cmd_unlink(args: argparse.Namespace) -> int:
    if not unlink(args.name, args.namespace):
        print(f"pymqueue: error: no queue {args.name!r}", file=sys.stderr)
        return 1
    return 0


# ---- the mqueue.* RPCs, on the shared memory ---------------------------------------------


def _attach(name: bytes, namespace: str | None, unknown_code: int) -> Queue:
    try:
        return Queue(name, create=False, namespace=namespace)
    except QueueNotFound:
        raise RpcError(unknown_code, "No such queue") from None


def cmd_get_size(args: argparse.Namespace) -> int:
    def body() -> None:
        raw = check_name(args, 400, 404)
        q = _attach(raw, namespace_of(args), 404)
        try:
            size = q.size()
        finally:
            q.close()
        if args.json:
            emit_json({**json_bytes_fields("name", raw), "size": size})
        else:
            emit_struct({"name": raw, "size": size})

    return run_rpc_like(args, body)


def cmd_get_sizes(args: argparse.Namespace) -> int:
    def body() -> None:
        namespace = namespace_of(args)
        names = config_names(args)
        if names is None:
            names = sorted(os.fsencode(n) for n in list_queues(namespace))
        result: list[tuple[bytes, int]] = []
        for raw in names:
            q = _attach(raw, namespace, 404)
            try:
                result.append((raw, q.size()))
            finally:
                q.close()
        if args.json:
            emit_json([{**json_bytes_fields("name", raw), "size": size} for raw, size in result])
        else:
            for raw, size in result:
                emit_struct({"name": raw, "size": size})

    return run_rpc_like(args, body)


def cmd_fetch(args: argparse.Namespace) -> int:
    def body() -> None:
        raw = check_name(args, 500, 500)
        q = _attach(raw, namespace_of(args), 500)
        try:
            item = q.fetch(timeout=0)
        finally:
            q.close()
        if item is None:
            raise RpcError(404, "Empty queue")
        key, val = bytes(item[0]), bytes(item[1])
        if args.json:
            emit_json({**json_bytes_fields("key", key), **json_bytes_fields("val", val)})
        else:
            emit_struct({"key": key, "val": val})

    return run_rpc_like(args, body)


# ---- demo --------------------------------------------------------------------------------


def _produce(q: Queue, pid: int, n: int, ready: Any) -> None:
    ready.wait()
    key = f"producer-{pid}".encode()
    batch = []
    for seq in range(n):
        batch.append((key, b"%d:%d" % (pid, seq)))
        if len(batch) == 64:
            q.add_many(batch)
            batch.clear()
    if batch:
        q.add_many(batch)
    q.close()


def _consume(q: Queue, cid: int, shared: tuple[Any, Any, Any, Any]) -> None:
    """Fetch until the shared budget is spent, so exactly --leave items stay queued."""
    budget, stop, counts, ready = shared
    ready.wait()
    got = 0
    while not stop.is_set():
        with budget.get_lock():
            claim = min(256, budget.value)
            budget.value -= claim
        if claim == 0:
            break
        items = q.fetch_many(claim, timeout=0.05)
        if len(items) < claim:
            with budget.get_lock():
                budget.value += claim - len(items)
        got += len(items)
        counts[cid] = got
    q.close()


def _bar(done: int, total: int, width: int = 30) -> str:
    frac = done / total if total else 1.0
    filled = int(frac * width)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {frac:6.1%}"


def cmd_demo(args: argparse.Namespace) -> int:
    if args.producers < 1 or args.consumers < 1 or args.items < 0 or args.leave < 0:
        print("pymqueue: error: producers/consumers >= 1, items/leave >= 0", file=sys.stderr)
        return 2
    db_path = os.path.abspath(args.db)
    config = InstanceConfig(
        queues=(QueueDef(name=DEMO_QUEUE.encode(), dbmode=DbMode.LOAD_SAVE),),
        db_url="sqlite:///" + db_path,  # an absolute path gives Kamailio's 4-slash form
    )
    total_new = args.producers * args.items
    tty = sys.stdout.isatty()
    with Instance(config, namespace=args.namespace) as inst:
        q = inst.queue(DEMO_QUEUE)
        loaded = len(q)
        print(
            f"pymqueue demo: queue {DEMO_QUEUE!r}, {args.producers} producers x "
            f"{args.items:,} items, {args.consumers} consumers, saved to {db_path}"
        )
        if loaded:
            print(f"loaded {loaded:,} items the previous run left in the database")
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        stop = ctx.Event()
        counts = ctx.Array("q", args.consumers)
        budget = ctx.Value("q", max(loaded + total_new - args.leave, 0))
        procs = [
            ctx.Process(target=_produce, args=(q, i, args.items, ready))
            for i in range(args.producers)
        ]
        procs += [
            ctx.Process(target=_consume, args=(q, i, (budget, stop, counts, ready)))
            for i in range(args.consumers)
        ]
        for p in procs:
            p.start()
        before = q.stats()
        start = time.perf_counter()
        ready.set()
        producers = procs[: args.producers]
        last_print = 0.0
        while True:
            s = q.stats()
            produced = s.added - before.added
            done_producing = all(not p.is_alive() for p in producers)
            now = time.perf_counter()
            if tty or now - last_print >= 1.0 or done_producing:
                line = (
                    f"{_bar(produced, total_new)}  added {produced:>11,}  "
                    f"fetched {s.fetched - before.fetched:>11,}  queued {s.items:>9,}"
                )
                print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
                last_print = now
            if all(not p.is_alive() for p in procs):
                break
            time.sleep(0.1)  # the progress bar's refresh rate, not synchronisation
        elapsed = time.perf_counter() - start
        stop.set()
        for p in procs:
            p.join()
        if tty:
            print()
        s = q.stats()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        added = s.added - before.added
        fetched = s.fetched - before.fetched
        rows = [
            ("items added", f"{added:,}"),
            ("items fetched", f"{fetched:,}"),
            ("add rate", f"{added / elapsed:,.0f} items/s"),
            ("fetch rate", f"{fetched / elapsed:,.0f} items/s"),
            ("elapsed", f"{elapsed:.2f} s"),
            ("dropped (overflow)", f"{s.dropped:,}"),
            ("high-water mark", f"{s.high_water:,} items"),
            ("lock recoveries", f"{s.recoveries:,}"),
            ("left in the queue", f"{s.items:,} (saved to the database at stop)"),
        ]
        rows += [(f"consumer {i} fetched", f"{counts[i]:,}") for i in range(args.consumers)]
        width = max(len(r[0]) for r in rows)
        print()
        for label, value in rows:
            print(f"  {label:<{width}}  {value}")
    print(
        f"\nstopped: the items left were saved to {db_path}; run the demo again to see "
        "them loaded back"
    )
    if failed:
        print(f"pymqueue: error: worker exit codes {failed}", file=sys.stderr)
        return 1
    return 0
