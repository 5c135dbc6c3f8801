"""``pymqueue htable get|set|setex|delete|dump|list``: a running instance's replicated htables
(``[[dmq.htable]]``), over its RPC (Kamailio's ``htable.*`` commands).

The instance is found as for ``pymqueue dmq`` (``-c FILE``, ``--http HOST:PORT`` or ``--unix
PATH``). Output is shaped like ``kamcmd``'s, or JSON with ``--json``; an RPC error prints
``error: <code> - <message>`` and exits 1 (``get`` of a missing key: 500, ``delete``: 404).
"""

from __future__ import annotations

import argparse
from typing import Any

from pymqueue.cli._common import (
    add_rpc_target_arguments,
    emit_json,
    emit_struct,
    emit_text,
    rpc_call,
    run_rpc_like,
)


def register(subparsers: Any) -> None:
    ht = subparsers.add_parser("htable", help="replicated htables of a running instance")
    sub = ht.add_subparsers(dest="htable_command", metavar="ACTION", required=True)

    p = sub.add_parser("get", help="one cell (htable.get TABLE KEY)")
    p.add_argument("table")
    p.add_argument("key")
    add_rpc_target_arguments(p)
    p.set_defaults(func=lambda a: _run(a, "htable.get", [a.table, a.key]))

    p = sub.add_parser("set", help="set a cell (htable.sets, or htable.seti with --int)")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--int", action="store_true", help="store an integer (type 0)")
    add_rpc_target_arguments(p)
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("setex", help="expire a cell SECONDS from now (htable.setex)")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("seconds", type=int)
    add_rpc_target_arguments(p)
    p.set_defaults(func=lambda a: _run(a, "htable.setex", [a.table, a.key, a.seconds]))

    p = sub.add_parser("delete", help="delete a cell (htable.delete TABLE KEY)")
    p.add_argument("table")
    p.add_argument("key")
    add_rpc_target_arguments(p)
    p.set_defaults(func=lambda a: _run(a, "htable.delete", [a.table, a.key]))

    p = sub.add_parser("dump", help="every cell of a table (htable.dump TABLE)")
    p.add_argument("table")
    add_rpc_target_arguments(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("list", help="the tables (htable.listTables)")
    add_rpc_target_arguments(p)
    p.set_defaults(func=lambda a: _run(a, "htable.listTables", []))


def _print(result: Any) -> None:
    if isinstance(result, list):
        for item in result:
            _print(item)
    elif isinstance(result, dict):
        inner = result.get("item")
        emit_struct(inner if isinstance(inner, dict) and len(result) == 1 else result)
    else:
        emit_text(str(result))


def _run(args: argparse.Namespace, method: str, params: list[Any]) -> int:
    def body() -> None:
        result = rpc_call(args, method, params)
        if args.json:
            emit_json(result)
        else:
            _print(result)

    return run_rpc_like(args, body)


def cmd_set(args: argparse.Namespace) -> int:
    if args.int:
        return _run(args, "htable.seti", [args.table, args.key, args.value])
    return _run(args, "htable.sets", [args.table, args.key, args.value])


def cmd_dump(args: argparse.Namespace) -> int:
    def body() -> None:
        result = rpc_call(args, "htable.dump", [args.table])
        if args.json:
            emit_json(result)
            return
        for slot in result:
            for cell in slot.get("slot", []):
                emit_struct(cell)

    return run_rpc_like(args, body)
