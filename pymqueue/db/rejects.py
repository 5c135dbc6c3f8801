"""The reject file: items a database table cannot hold, kept instead of dropped.

A PostgreSQL ``varchar``/``text`` table (Kamailio's layout) cannot store a NUL byte or
invalid UTF-8, and ``varchar(64)`` refuses a longer key. Kamailio loses such items (and
crashes on an empty key or value). pymqueue stores every item exactly when the column is
``bytea``/BLOB (the schema it creates); otherwise it appends the item to a JSON-lines file,
one object per item::

    {"time": "2024-05-01T12:00:00Z", "db": "...", "queue": "acc", "queue_b64": "YWNj",
     "table": "acc", "reason": "key has 70 characters, column key is varchar(64)",
     "key_b64": "...", "val_b64": "..."}

and logs a warning naming the queue and the reason. :func:`read_rejected` reads the file
back, e.g. to re-add the items once the table was altered to ``bytea``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RejectedItem", "append_rejected", "read_rejected"]


@dataclass(frozen=True)
class RejectedItem:
    queue: bytes
    table: str
    reason: str
    key: bytes
    value: bytes


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def append_rejected(path: str | os.PathLike[str], db: str, items: Sequence[RejectedItem]) -> None:
    """Append ``items`` to ``path`` and fsync it (the caller commits only afterwards)."""
    if not items:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = []
    for it in items:
        lines.append(
            json.dumps(
                {
                    "time": now,
                    "db": db,
                    "queue": it.queue.decode("utf-8", "replace"),
                    "queue_b64": _b64(it.queue),
                    "table": it.table,
                    "reason": it.reason,
                    "key_b64": _b64(it.key),
                    "val_b64": _b64(it.value),
                },
                ensure_ascii=False,
            )
            + "\n"
        )
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        data = "".join(lines).encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rejected(path: str | os.PathLike[str]) -> Iterator[RejectedItem]:
    """The items of a reject file, oldest first."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            yield RejectedItem(
                base64.b64decode(d["queue_b64"]),
                str(d["table"]),
                str(d["reason"]),
                base64.b64decode(d["key_b64"]),
                base64.b64decode(d["val_b64"]),
            )
