"""Helpers for the engine's tests: unique queue names and cleanup, child-process workers.

Workers are module-level functions so that both ``fork`` and ``spawn`` can run them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymqueue

_counter = itertools.count()


def unique_name(prefix: str = "q") -> str:
    return f"{prefix}{os.getpid()}_{next(_counter)}"


@contextmanager
def fresh_queue(**kwargs: Any) -> Iterator[pymqueue.Queue]:
    """A new queue (in the session namespace), unlinked and closed afterwards."""
    q = pymqueue.Queue(unique_name(), create=True, **kwargs)
    try:
        yield q
    finally:
        q.unlink()
        q.close()


def checked_value(producer: int, seq: int, size: int = 64) -> bytes:
    """A value that proves itself whole: payload + its own digest."""
    payload = f"{producer}:{seq}:".encode().ljust(size - 16, b"x")
    return payload + hashlib.blake2b(payload, digest_size=16).digest()


def value_is_whole(value: bytes) -> bool:
    payload, digest = value[:-16], value[-16:]
    return hashlib.blake2b(payload, digest_size=16).digest() == digest


def parse_value(value: bytes) -> tuple[int, int]:
    producer, seq, _ = value.split(b":", 2)
    return int(producer), int(seq)


def producer(q: pymqueue.Queue, producer_id: int, n: int, batch: int = 0) -> None:
    if batch:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            q.add_many(
                (b"p%d" % producer_id, checked_value(producer_id, s)) for s in range(start, stop)
            )
    else:
        for seq in range(n):
            q.add(b"p%d" % producer_id, checked_value(producer_id, seq))
    q.close()


def consumer(q: pymqueue.Queue, out: Any, batch: int = 0) -> None:
    """Fetch until an item with key b'STOP'; send the values back through `out` (a pipe)."""
    got: list[bytes] = []
    while True:
        items = q.fetch_many(batch, timeout=None) if batch else [q.fetch(timeout=None)]
        stops = 0
        for item in items:
            assert item is not None
            if item[0] == b"STOP":
                stops += 1
            else:
                got.append(item[1])
        if stops:
            for _ in range(stops - 1):  # a batch took another consumer's STOP: hand it back
                q.add(b"STOP", b"")
            break
    out.send(got)
    out.close()
    q.close()


def run_in(ctx: Any, target: Callable[..., None], *args: Any) -> Any:
    p = ctx.Process(target=target, args=args)
    p.start()
    return p
