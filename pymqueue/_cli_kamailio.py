"""``pymqueue serve``, ``get_size``, ``get_sizes`` and ``fetch``.

``serve -c FILE`` runs an :class:`~pymqueue.instance.Instance` until SIGTERM/SIGINT.
The other three are the ``mqueue.*`` RPCs done directly on the shared memory (no server
needed), printed as ``kamcmd`` prints them, or as JSON with ``--json``. Unlike ``kamcmd``,
an error gives a non-zero exit status (1).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from pymqueue.errors import ConfigError, QueueNotFound

if TYPE_CHECKING:
    from pymqueue._queue import Queue


class _RpcLikeError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} - {message}")
        self.code = code
        self.message = message


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve", help="run an instance (queues, DB, RPC) from a config until SIGTERM/SIGINT"
    )
    serve.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config")
    serve.add_argument("--namespace", help="shared-memory namespace (overrides the config)")
    serve.set_defaults(func=cmd_serve)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", metavar="FILE", help="use the queues of this config")
        p.add_argument("--namespace", help="shared-memory namespace (overrides the config)")
        p.add_argument("--json", action="store_true", help="print JSON instead of kamcmd text")

    p = subparsers.add_parser("get_size", help="item count of one queue (mqueue.get_size)")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_get_size)

    p = subparsers.add_parser("get_sizes", help="item counts of all queues (mqueue.get_sizes)")
    common(p)
    p.set_defaults(func=cmd_get_sizes)

    p = subparsers.add_parser("fetch", help="take the oldest item of a queue (mqueue.fetch)")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_fetch)


# -- serve --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from pymqueue.instance import Instance  # noqa: PLC0415

    instance = Instance.from_file(args.config, namespace=args.namespace)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            instance.start()
        except OSError as exc:
            print(f"pymqueue: error: cannot start {args.config}: {exc}", file=sys.stderr)
            return 1
        try:
            names = ", ".join(instance.queues) or "no queues"
            rpc = ""
            if instance.rpc is not None:
                if instance.rpc.http_address is not None:
                    host, port = instance.rpc.http_address
                    rpc += f", rpc http://{host}:{port}/"
                if instance.rpc.unix_path is not None:
                    rpc += f", rpc unix {instance.rpc.unix_path}"
            print(
                f"pymqueue: ready: pid {os.getpid()}, {len(instance.queues)} queue(s) "
                f"({names}){rpc}",
                flush=True,
            )
            stop.wait()
        finally:
            instance.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("pymqueue: stopped", flush=True)
    return 0


# -- the RPC-like commands ------------------------------------------------------------------


def _namespace(args: argparse.Namespace) -> str | None:
    if args.namespace is not None:
        return str(args.namespace)
    if args.config is not None:
        from pymqueue.config import load_config  # noqa: PLC0415

        return load_config(args.config).namespace
    return None


def _config_names(args: argparse.Namespace) -> list[bytes] | None:
    """Raw names of the config's queues, registry order (newest first); None without -c."""
    if args.config is None:
        return None
    from pymqueue.config import load_config  # noqa: PLC0415

    return [q.name for q in reversed(load_config(args.config).queues)]


def _attach(name: bytes, namespace: str | None, unknown_code: int) -> Queue:
    from pymqueue._queue import Queue  # noqa: PLC0415

    try:
        return Queue(name, create=False, namespace=namespace)
    except QueueNotFound:
        raise _RpcLikeError(unknown_code, "No such queue") from None


def _check_name(args: argparse.Namespace, bad_code: int, unknown_code: int) -> bytes:
    raw = os.fsencode(args.name)
    if not raw:
        raise _RpcLikeError(bad_code, "Invalid queue name")
    names = _config_names(args)
    if names is not None and raw not in names:
        raise _RpcLikeError(unknown_code, "No such queue")
    return raw


def _fields(field: str, data: bytes) -> dict[str, str]:
    """``{field: text}``, plus ``{field_b64: exact bytes}`` when not UTF-8 (as the RPC does)."""
    try:
        return {field: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            field: data.decode("utf-8", "replace"),
            field + "_b64": base64.b64encode(data).decode("ascii"),
        }


def _emit_struct(args: argparse.Namespace, obj: dict[str, bytes | int]) -> None:
    if args.json:
        return
    out = sys.stdout.buffer
    out.write(b"{\n")
    for key, value in obj.items():
        data = value if isinstance(value, bytes) else str(value).encode()
        out.write(b"\t" + key.encode() + b": " + data + b"\n")
    out.write(b"}\n")
    out.flush()


def _emit_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _run(args: argparse.Namespace, body: Any) -> int:
    try:
        body()
    except _RpcLikeError as exc:
        if args.json:
            _emit_json({"error": {"code": exc.code, "message": exc.message}})
        else:
            sys.stderr.write(f"error: {exc.code} - {exc.message}\n")
        return 1
    except ConfigError as exc:
        sys.stderr.write(f"pymqueue: error: {exc}\n")
        return 1
    return 0


def cmd_get_size(args: argparse.Namespace) -> int:
    def body() -> None:
        raw = _check_name(args, 400, 404)
        q = _attach(raw, _namespace(args), 404)
        try:
            size = q.size()
        finally:
            q.close()
        if args.json:
            _emit_json({**_fields("name", raw), "size": size})
        else:
            _emit_struct(args, {"name": raw, "size": size})

    return _run(args, body)


def cmd_get_sizes(args: argparse.Namespace) -> int:
    def body() -> None:
        namespace = _namespace(args)
        names = _config_names(args)
        if names is None:
            from pymqueue._queue import list_queues  # noqa: PLC0415

            names = sorted(os.fsencode(n) for n in list_queues(namespace))
        result: list[tuple[bytes, int]] = []
        for raw in names:
            q = _attach(raw, namespace, 404)
            try:
                result.append((raw, q.size()))
            finally:
                q.close()
        if args.json:
            _emit_json([{**_fields("name", raw), "size": size} for raw, size in result])
        else:
            for raw, size in result:
                _emit_struct(args, {"name": raw, "size": size})

    return _run(args, body)


def cmd_fetch(args: argparse.Namespace) -> int:
    def body() -> None:
        raw = _check_name(args, 500, 500)
        q = _attach(raw, _namespace(args), 500)
        try:
            item = q.fetch(timeout=0)
        finally:
            q.close()
        if item is None:
            raise _RpcLikeError(404, "Empty queue")
        key, val = bytes(item[0]), bytes(item[1])
        if args.json:
            _emit_json({**_fields("key", key), **_fields("val", val)})
        else:
            _emit_struct(args, {"key": key, "val": val})

    return _run(args, body)
