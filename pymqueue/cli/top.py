"""``pymqueue top``: a live view of the queues on this host, refreshed every second.

Per queue: items, bytes, the add and fetch rates since the last refresh, drops (overflow),
waiters (getters and putters asleep in a wait), the high-water mark. On a terminal it redraws
until ``q`` (or Ctrl-C); when stdout is not a terminal, or with ``--once``, it prints one
snapshot (two looks ``--interval`` apart, so the rates are real) and exits. Drawn with
``rich`` when it is installed (the ``cli`` extra), as plain text otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pymqueue.cli._render import Table, plain_table, rich_console, to_rich
from pymqueue.errors import Error
from pymqueue.queue import _engine
from pymqueue.queue.sync import Queue, list_queues
from pymqueue.queue.types import QueueStats


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("top", help="a live view of the queues on this host (q quits)")
    p.add_argument("--namespace", default=None, help="default: $PYMQUEUE_NAMESPACE")
    p.add_argument(
        "-A", "--all-namespaces", action="store_true", help="the queues of every namespace"
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--plain", action="store_true", help="plain text even when rich is installed")
    p.set_defaults(func=cmd_top)


@dataclass(frozen=True)
class Row:
    namespace: str
    name: str
    stats: QueueStats
    add_rate: float | None
    fetch_rate: float | None


class Watcher:
    """Keeps the queues attached between looks and turns two looks into rates."""

    def __init__(self, namespace: str | None, all_namespaces: bool) -> None:
        self.namespace = namespace
        self.all_namespaces = all_namespaces
        self.queues: dict[tuple[str, str], Queue] = {}
        self.last: dict[tuple[str, str], tuple[float, QueueStats]] = {}

    def namespaces(self) -> list[str | None]:
        if not self.all_namespaces:
            return [self.namespace]
        found: set[str | None] = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(_engine.SHM_DIR):
                parts = _engine.split_shm_name(entry)
                if parts is not None:
                    found.add(parts[0])
        return sorted(found, key=lambda ns: ns or "")

    def look(self) -> list[Row]:
        rows: list[Row] = []
        seen: set[tuple[str, str]] = set()
        for ns in self.namespaces():
            for name in list_queues(ns):
                key = (ns or "", name)
                try:
                    q = self.queues.get(key)
                    if q is None:
                        q = self.queues[key] = Queue(name, create=False, namespace=ns)
                    stats = q.stats()
                except (Error, OSError):
                    continue  # unlinked between the listing and the attach: gone
                now = time.monotonic()
                seen.add(key)
                add_rate = fetch_rate = None
                prev = self.last.get(key)
                if prev is not None and now > prev[0]:
                    dt = now - prev[0]
                    add_rate = (stats.added - prev[1].added) / dt
                    fetch_rate = (stats.fetched - prev[1].fetched) / dt
                self.last[key] = (now, stats)
                rows.append(Row(key[0], name, stats, add_rate, fetch_rate))
        for key in set(self.queues) - seen:
            self.queues.pop(key).close()
            self.last.pop(key, None)
        return rows

    def close(self) -> None:
        for q in self.queues.values():
            q.close()
        self.queues.clear()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def table(rows: list[Row], title: str) -> Table:
    show_ns = len({r.namespace for r in rows}) > 1
    headers = ["NAMESPACE"] if show_ns else []
    headers += ["NAME", "ITEMS", "BYTES", "SIZE", "ADD/S", "FETCH/S", "DROPPED", "WAITING", "HIGH"]
    t = Table(headers, title=title, left=(0, 1) if show_ns else (0,))
    for r in rows:
        s = r.stats
        cells: list[object] = [r.namespace or "-"] if show_ns else []
        cells += [
            r.name,
            f"{s.items:,}",
            _bytes(s.bytes),
            f"{s.max_items:,}" if s.max_items else "-",
            _rate(r.add_rate),
            _rate(r.fetch_rate),
            f"{s.dropped:,}",
            f"{s.getters_waiting + s.putters_waiting}",
            f"{s.high_water:,}",
        ]
        t.add(*cells)
    return t


def _title(args: argparse.Namespace, rows: list[Row]) -> str:
    where = (
        "all namespaces"
        if args.all_namespaces
        else f"namespace {args.namespace or os.environ.get('PYMQUEUE_NAMESPACE') or '(default)'}"
    )
    return f"pymqueue top: {len(rows)} queue(s), {where}, {time.strftime('%H:%M:%S')}"


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one at a time, unechoed; the terminal is restored on exit."""
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _quit_pressed(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for a key; True if it was ``q`` (or ``Q``)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        key = os.read(fd, 32)
        if not key or b"q" in key.lower():
            return True  # q, or end of input
    return False


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        print("pymqueue: error: --interval must be positive", file=sys.stderr)
        return 2
    console = rich_console(args.plain)
    watcher = Watcher(args.namespace, args.all_namespaces)
    try:
        interactive = not args.once and sys.stdout.isatty() and sys.stdin.isatty()
        if not interactive:
            watcher.look()
            time.sleep(args.interval)  # the sampling interval of the rates
            rows = watcher.look()
            t = table(rows, _title(args, rows))
            if console is None:
                print(plain_table(t), flush=True)
            else:
                console.print(to_rich(t))
            return 0
        return _live(args, watcher, console)
    finally:
        watcher.close()


def _live(args: argparse.Namespace, watcher: Watcher, console: Any) -> int:
    fd = sys.stdin.fileno()
    hint = "q quits"
    with _cbreak(fd):
        if console is not None:
            from rich.console import Group  # noqa: PLC0415
            from rich.live import Live  # noqa: PLC0415
            from rich.text import Text  # noqa: PLC0415

            def render() -> Any:
                rows = watcher.look()
                return Group(to_rich(table(rows, _title(args, rows))), Text(hint, style="dim"))

            with Live(render(), console=console, screen=True, auto_refresh=False) as live:
                while not _quit_pressed(fd, args.interval):
                    live.update(render(), refresh=True)
            return 0
        while True:
            rows = watcher.look()
            sys.stdout.write("\033[H\033[J" + plain_table(table(rows, _title(args, rows))))
            sys.stdout.write(f"\n{hint}\n")
            sys.stdout.flush()
            if _quit_pressed(fd, args.interval):
                return 0
