"""Segments that are not ours, truncated, of another version or with forged bytes: attaching
fails with a clear error, and operations on a forged-but-plausible segment fail cleanly;
nothing crashes or hangs."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymqueue._pmq_c import lib
from queue_helpers import unique_name

import pymqueue
from pymqueue.queue import _engine


def shm_path(name: str) -> Path:
    return (
        Path("/dev/shm")
        / _engine.shm_name(name.encode(), os.environ["PYMQUEUE_NAMESPACE"]).decode()[1:]
    )


@pytest.fixture
def name() -> Iterator[str]:
    n = unique_name("hostile")
    yield n
    pymqueue.unlink(n)


@pytest.fixture(autouse=True)
def short_lock_timeout() -> Iterator[None]:
    lib.pmq_set_lock_timeout(200_000_000)  # a forged "held" lock fails in 0.2 s, not 5 s
    yield
    lib.pmq_set_lock_timeout(5_000_000_000)


def write_segment(name: str, data: bytes) -> None:
    path = shm_path(name)
    path.write_bytes(data)
    path.chmod(0o600)


def test_random_bytes_are_refused(name: str) -> None:
    write_segment(name, os.urandom(64 * 1024))
    with pytest.raises(pymqueue.InvalidSegment, match="not a valid pymqueue segment") as exc:
        pymqueue.Queue(name, create=False)
    assert exc.value.queue == name
    with pytest.raises(pymqueue.InvalidSegment):
        pymqueue.Queue(name)  # create-or-attach attaches, and refuses too


def test_empty_file_is_refused(name: str) -> None:
    write_segment(name, b"")
    with pytest.raises(pymqueue.InvalidSegment):
        pymqueue.Queue(name, create=False)


def valid_image(name: str, **kwargs: object) -> bytes:
    with pymqueue.Queue(name, create=True, capacity=8192, **kwargs) as q:  # type: ignore[arg-type]
        for i in range(5):
            q.add(b"k%d" % i, b"v" * (i * 10))
    data = shm_path(name).read_bytes()
    pymqueue.unlink(name)
    return data


def test_truncated_segment_is_refused(name: str) -> None:
    data = valid_image(name)
    for size in (100, len(data) // 2, len(data) - 8):
        write_segment(name, data[:size])
        with pytest.raises(pymqueue.InvalidSegment):
            pymqueue.Queue(name, create=False)


def test_other_layout_version_is_refused(name: str) -> None:
    data = bytearray(valid_image(name))
    struct.pack_into("<I", data, 8, 99)
    write_segment(name, bytes(data))
    with pytest.raises(pymqueue.InvalidSegment, match="another layout version"):
        pymqueue.Queue(name, create=False)


def test_inconsistent_offsets_are_refused(name: str) -> None:
    data = bytearray(valid_image(name))
    # data_off (offset 32) pointing past the end of the file
    struct.pack_into("<Q", data, 32, 1 << 40)
    write_segment(name, bytes(data))
    with pytest.raises(pymqueue.InvalidSegment):
        pymqueue.Queue(name, create=False)


def exercise(name: str) -> None:
    """Attach and use a queue; only pymqueue's own errors may come out."""
    try:
        q = pymqueue.Queue(name, create=False)
    except pymqueue.Error:
        return
    try:
        for op in (
            q.fetch,
            lambda: q.add("k", "v"),
            lambda: q.fetch_many(10),
            lambda: q.peek_many(10),
            lambda: q.add_many([("k3", "x")]),
            q.stats,
            lambda: len(q),
        ):
            with contextlib.suppress(pymqueue.Error):
                op()
    finally:
        q.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=8),
    addmode=st.integers(0, 2),
)
def test_forged_bytes_never_crash_or_hang(
    name: str, flips: list[tuple[int, int]], addmode: int
) -> None:
    pymqueue.unlink(name)  # the previous example's forged segment
    data = bytearray(valid_image(name, addmode=addmode))
    for offset, xor in flips:
        # Aim at the header and the first records, where the interesting fields are.
        pos = offset % min(len(data), 4096 + 1024)
        data[pos] ^= xor
    write_segment(name, bytes(data))
    exercise(name)
