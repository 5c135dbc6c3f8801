"""What the command modules share: the RPC client and its error, name and namespace checks,
and output shaped like ``kamcmd``'s (or JSON with ``--json``).

An error a command reports as ``kamcmd`` would is an :class:`~pymqueue.errors.RpcError`
(code, message), whether it came from a running instance over its RPC or from a command
that does the RPC's work on the shared memory directly; :func:`run_rpc_like` prints it
(``error: <code> - <message>``, exit status 1).
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
from collections.abc import Callable, Mapping
from typing import Any

from pymqueue.errors import ConfigError, RpcError

__all__ = [
    "RPC_TIMEOUT",
    "check_name",
    "config_names",
    "emit_json",
    "emit_struct",
    "emit_text",
    "namespace_of",
    "rpc_call",
    "run_rpc_like",
]

RPC_TIMEOUT = 10.0


# -- output -------------------------------------------------------------------------------


def _write(data: bytes) -> None:
    """Bytes to stdout as they are (a reader that went away is not an error)."""
    with contextlib.suppress(BrokenPipeError):
        out = sys.stdout
        buffer = getattr(out, "buffer", None)
        if buffer is None:  # stdout replaced by a text-only stream
            out.write(data.decode("utf-8", "surrogateescape"))
            out.flush()
            return
        out.flush()
        buffer.write(data)
        buffer.flush()


def emit_text(text: str) -> None:
    """One line of text on stdout."""
    _write(text.encode("utf-8") + b"\n")


def emit_json(value: object) -> None:
    """``value`` as one line of JSON (non-ASCII kept as is)."""
    emit_text(json.dumps(value, ensure_ascii=False))


def emit_struct(obj: Mapping[str, object]) -> None:
    """A struct as ``kamcmd`` prints it: ``{``, a tab-indented ``key: value`` line each (bytes
    written as they are), ``}``."""
    lines = [b"{\n"]
    for key, value in obj.items():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        lines.append(b"\t" + key.encode("utf-8") + b": " + data + b"\n")
    lines.append(b"}\n")
    _write(b"".join(lines))


def run_rpc_like(args: argparse.Namespace, body: Callable[[], None]) -> int:
    """Run ``body``; an :class:`RpcError` is printed as ``kamcmd`` does (JSON with
    ``--json``), a :class:`ConfigError` as pymqueue's error line; both exit 1."""
    try:
        body()
    except RpcError as exc:
        if args.json:
            emit_json({"error": {"code": exc.code, "message": exc.message}})
        else:
            sys.stderr.write(f"error: {exc.code} - {exc.message}\n")
        return 1
    except ConfigError as exc:
        sys.stderr.write(f"pymqueue: error: {exc}\n")
        return 1
    return 0


# -- names and namespaces -----------------------------------------------------------------


def namespace_of(args: argparse.Namespace) -> str | None:
    """``--namespace``, else the namespace of ``-c FILE``'s config, else None (default)."""
    if args.namespace is not None:
        return str(args.namespace)
    if args.config is not None:
        from pymqueue.config import load_config  # noqa: PLC0415

        return load_config(args.config).namespace
    return None


def config_names(args: argparse.Namespace) -> list[bytes] | None:
    """Raw names of the config's queues, registry order (newest first); None without -c."""
    if args.config is None:
        return None
    from pymqueue.config import load_config  # noqa: PLC0415

    return [q.name for q in reversed(load_config(args.config).queues)]


def check_name(args: argparse.Namespace, bad_code: int, unknown_code: int) -> bytes:
    """``args.name`` as raw bytes, refused as the RPC refuses it: empty → ``bad_code``
    ``Invalid queue name``, not in ``-c FILE``'s queues → ``unknown_code`` ``No such queue``."""
    raw = os.fsencode(args.name)
    if not raw:
        raise RpcError(bad_code, "Invalid queue name")
    names = config_names(args)
    if names is not None and raw not in names:
        raise RpcError(unknown_code, "No such queue")
    return raw


# -- RPC client ---------------------------------------------------------------------------


def add_rpc_target_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a command that asks a running instance over its RPC: where it is
    (``-c FILE``, ``--http``, ``--unix``), ``--json`` output and the ``--timeout``."""
    p.add_argument("-c", "--config", metavar="FILE", help="config of the running instance")
    p.add_argument("--http", metavar="HOST:PORT", help="RPC over HTTP at HOST:PORT")
    p.add_argument("--unix", metavar="PATH", help="RPC over this unix datagram socket")
    p.add_argument("--json", action="store_true", help="print JSON instead of kamcmd text")
    p.add_argument("--timeout", type=float, default=RPC_TIMEOUT, help="seconds (default 10)")


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
    """One JSON-RPC call to the instance ``args`` names (``-c``, ``--http`` or ``--unix``,
    ``--timeout``); returns ``result`` or raises :class:`RpcError`."""
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
