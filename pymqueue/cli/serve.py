"""``pymqueue serve -c FILE``: run an :class:`~pymqueue.instance.Instance` (its queues, database
and RPC server, and DMQ bus) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve", help="run an instance (queues, DB, RPC) from a config until SIGTERM/SIGINT"
    )
    serve.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config")
    serve.add_argument("--namespace", help="shared-memory namespace (overrides the config)")
    serve.set_defaults(func=cmd_serve)


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
