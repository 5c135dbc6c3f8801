"""The queues on this host, worked on in shared memory directly (no server needed): the
README's "Queues" commands.

* ``ls``, ``stats NAME``, ``unlink NAME``: list, observe and remove queues.
* ``get_size NAME``, ``get_sizes``, ``fetch NAME``: the ``mqueue.*`` RPCs done directly on the
  shared memory, printed as ``kamcmd`` prints them, or as JSON with ``--json``. Unlike
  ``kamcmd``, an error gives a non-zero exit status (1).
(``demo``, which runs on these queues, is :mod:`pymqueue.cli.demo`.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from pymqueue.errors import QueueNotFound, RpcError
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
