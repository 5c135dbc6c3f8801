"""``pymqueue dmq list`` and ``pymqueue dmq remove URI``: ask a running instance over its RPC.

The instance is found from its config (``-c FILE``: ``[rpc]`` port, else unix socket) or
given directly (``--http HOST:PORT`` / ``--unix PATH``). Output is shaped like ``kamcmd``'s
(``dmq.list_nodes`` prints one ``{ … }`` block per node), or JSON with ``--json``. An RPC
error prints ``error: <code> - <message>`` and exits 1.
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
    dmq = subparsers.add_parser("dmq", help="DMQ bus of a running instance (over its RPC)")
    sub = dmq.add_subparsers(dest="dmq_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="the node list (dmq.list_nodes)")
    add_rpc_target_arguments(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("remove", help="forget a node (dmq.remove sip:HOST:PORT)")
    p.add_argument("uri")
    add_rpc_target_arguments(p)
    p.set_defaults(func=cmd_remove)


# -- commands -----------------------------------------------------------------------------


def _run(args: argparse.Namespace, method: str, params: list[Any]) -> int:
    def body() -> None:
        result = rpc_call(args, method, params)
        if args.json:
            emit_json(result)
        elif isinstance(result, list):
            for item in result:
                if isinstance(item, dict):
                    emit_struct(item)
                else:
                    emit_text(str(item))
        elif isinstance(result, dict):
            emit_struct(result)
        else:
            emit_text(str(result))

    return run_rpc_like(args, body)


def cmd_list(args: argparse.Namespace) -> int:
    return _run(args, "dmq.list_nodes", [])


def cmd_remove(args: argparse.Namespace) -> int:
    return _run(args, "dmq.remove", [args.uri])
