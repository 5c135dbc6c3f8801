"""The ``pymqueue`` command.

Each area keeps its subcommands in a module of its own, one per README section, that defines
``register(subparsers)``: :mod:`~pymqueue.cli.queue` (``ls``, ``stats``, ``unlink``,
``get_size``, ``get_sizes``, ``fetch``), :mod:`~pymqueue.cli.demo` (``demo``),
:mod:`~pymqueue.cli.top` (``top``), :mod:`~pymqueue.cli.serve` (``serve``),
:mod:`~pymqueue.cli.dmq` (``dmq list``, ``dmq remove``), :mod:`~pymqueue.cli.htable`
(``htable get|set|setex|delete|dump|list``); what they share is in
:mod:`~pymqueue.cli._common`. This file only lists those modules and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pymqueue.errors import Error

# Modules that add subcommands; each has register(subparsers) and sets `func` on its parsers
# (func(args) -> int exit status).
_COMMAND_MODULES = [
    "pymqueue.cli.queue",
    "pymqueue.cli.demo",
    "pymqueue.cli.top",
    "pymqueue.cli.serve",
    "pymqueue.cli.dmq",
    "pymqueue.cli.htable",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pymqueue", description="Kamailio-style shared-memory message queues."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ModuleNotFoundError as exc:
        if exc.name != "pymqueue._pmq_c":
            raise
        print(exc, file=sys.stderr)  # one sentence naming the fix (pymqueue/__init__.py)
        return 1
    try:
        status: int = args.func(args)
    except Error as exc:
        print(f"pymqueue: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
