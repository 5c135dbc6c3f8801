"""``pymqueue dmq list`` and ``pymqueue dmq remove URI``: ask a running instance over its RPC.

The instance is found from its config (``-c FILE``: ``[rpc]`` port, else unix socket) or
given directly (``--http HOST:PORT`` / ``--unix PATH``). Output is shaped like ``kamcmd``'s
(``dmq.list_nodes`` prints one ``{ … }`` block per node), or JSON with ``--json``. An RPC
error prints ``error: <code> - <message>`` and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import sys
import tempfile
from typing import Any

from pymqueue.errors import ConfigError, RpcError

TIMEOUT = 10.0


def register(subparsers: Any) -> None:
    dmq = subparsers.add_parser("dmq", help="DMQ bus of a running instance (over its RPC)")
    sub = dmq.add_subparsers(dest="dmq_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", metavar="FILE", help="config of the running instance")
        p.add_argument("--http", metavar="HOST:PORT", help="RPC over HTTP at HOST:PORT")
        p.add_argument("--unix", metavar="PATH", help="RPC over this unix datagram socket")
        p.add_argument("--json", action="store_true", help="print JSON instead of kamcmd text")
        p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds (default 10)")

    p = sub.add_parser("list", help="the node list (dmq.list_nodes)")
    common(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("remove", help="forget a node (dmq.remove sip:HOST:PORT)")
    p.add_argument("uri")
    common(p)
    p.set_defaults(func=cmd_remove)


# -- RPC client ---------------------------------------------------------------------------


def _endpoint(args: argparse.Namespace) -> tuple[str, Any]:
    if args.http:
        host, _, port = str(args.http).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--http wants HOST:PORT, got {args.http!r}")
        return "http", (host, int(port))
    if args.unix:
        return "unix", str(args.unix)
    if args.config:
        from pymqueue.config import load_config  # noqa: PLC0415

        rpc = load_config(args.config).rpc
        if rpc.http is not None and rpc.http[1] != 0:
            return "http", rpc.http
        if rpc.unix is not None:
            return "unix", rpc.unix
        raise ConfigError(f"{args.config}: no [rpc] port or unix socket to reach the instance")
    raise ConfigError("give -c FILE, --http HOST:PORT or --unix PATH")


def rpc_call(args: argparse.Namespace, method: str, params: list[Any]) -> Any:
    """One JSON-RPC call; returns ``result`` or raises :class:`RpcError`."""
    kind, where = _endpoint(args)
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
    if kind == "http":
        conn = http.client.HTTPConnection(where[0], where[1], timeout=args.timeout)
        try:
            conn.request("POST", "/RPC", body, {"Content-Type": "application/json"})
            data = conn.getresponse().read()
        except OSError as exc:
            raise RpcError(
                500, f"cannot reach the instance at {where[0]}:{where[1]}: {exc}"
            ) from None
        finally:
            conn.close()
    else:
        with tempfile.TemporaryDirectory(prefix="pmq-cli-") as tmp:
            me = os.path.join(tmp, "c.sock")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.bind(me)
                s.settimeout(args.timeout)
                try:
                    s.sendto(body, where)
                    data = s.recv(1 << 20)
                except OSError as exc:
                    raise RpcError(500, f"cannot reach the instance at {where}: {exc}") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise RpcError(500, "the instance sent no JSON reply") from None
    if "error" in doc:
        err = doc["error"]
        raise RpcError(int(err.get("code", 500)), str(err.get("message", "")))
    return doc.get("result")


# -- commands -----------------------------------------------------------------------------


def _run(args: argparse.Namespace, method: str, params: list[Any]) -> int:
    try:
        result = rpc_call(args, method, params)
    except RpcError as exc:
        if args.json:
            _print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        else:
            sys.stderr.write(f"error: {exc.code} - {exc.message}\n")
        return 1
    if args.json:
        _print(json.dumps(result, ensure_ascii=False))
    elif isinstance(result, list):
        for item in result:
            _print(_struct(item) if isinstance(item, dict) else str(item))
    elif isinstance(result, dict):
        _print(_struct(result))
    else:
        _print(str(result))
    return 0


def _struct(obj: dict[str, Any]) -> str:
    return "{\n" + "".join(f"\t{k}: {v}\n" for k, v in obj.items()) + "}"


def _print(text: str) -> None:
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def cmd_list(args: argparse.Namespace) -> int:
    return _run(args, "dmq.list_nodes", [])


def cmd_remove(args: argparse.Namespace) -> int:
    return _run(args, "dmq.remove", [args.uri])
