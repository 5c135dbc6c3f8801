"""Tables and live displays for the commands that draw (``demo``, ``top``): with ``rich`` when
it is installed (the ``cli`` extra) and wanted, as plain text otherwise.

Only this module imports ``rich``; the core install does not need it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["Table", "have_rich", "plain_table", "print_table", "rich_console"]


def have_rich() -> bool:
    """Whether ``rich`` can be imported (the ``cli`` extra)."""
    return importlib.util.find_spec("rich") is not None


def rich_console(plain: bool = False) -> Any:
    """A ``rich`` console on stdout, or None (plain text) when ``plain`` or without ``rich``."""
    if plain or not have_rich():
        return None
    from rich.console import Console  # noqa: PLC0415

    if sys.stdout.isatty():
        return Console(highlight=False)
    # Not a terminal: rich would squeeze tables into 80 columns; tables keep their natural
    # width (they never expand) up to this one.
    return Console(highlight=False, width=200)


class Table:
    """Rows of cells under a header: right-aligned unless the column is listed in ``left``."""

    def __init__(
        self, headers: Sequence[str], *, title: str | None = None, left: Sequence[int] = (0,)
    ) -> None:
        self.headers = list(headers)
        self.title = title
        self.left = set(left)
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])


def plain_table(table: Table) -> str:
    """The table as aligned plain text (two spaces between columns)."""
    widths = [len(h) for h in table.headers]
    for row in table.rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=False)):
            out.append(cell.ljust(width) if i in table.left else cell.rjust(width))
        return "  ".join(out).rstrip()

    lines = [table.title] if table.title else []
    lines.append(line(table.headers))
    lines.extend(line(row) for row in table.rows)
    return "\n".join(lines)


def to_rich(table: Table) -> Any:
    from rich.table import Table as RichTable  # noqa: PLC0415

    rt = RichTable(title=table.title, title_justify="left")
    for i, header in enumerate(table.headers):
        rt.add_column(header, justify="left" if i in table.left else "right")
    for row in table.rows:
        rt.add_row(*row)
    return rt


def print_table(console: Any, table: Table) -> None:
    """Print ``table`` on ``console`` (rich) or as plain text on stdout (console None)."""
    if console is None:
        print(plain_table(table), flush=True)
    else:
        console.print(to_rich(table))
    sys.stdout.flush()
