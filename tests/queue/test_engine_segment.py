"""Segments that were planted, overwritten or left half-made; locks whose bytes lie.

* Trust: a segment is used only if its owner is us (or a uid we trust) and it carries no
  permission bits beyond the allowed mode; nothing in a refused segment is read.
* A creator killed mid-create leaves no name behind (built unnamed, linked when whole).
* Geometry overwritten after attach: the private copy is used; no signal, no out-of-bounds.
* A lock word naming an owner that does not exist is corruption, answered in milliseconds.
* A recovery that fails poisons the segment for every process.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import random
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import (
    OFF_ADDMODE,
    OFF_DATA_CAP,
    OFF_DATA_OFF,
    OFF_EPOCH,
    OFF_INDEX_SLOTS,
    OFF_MAX_ITEMS,
    OFF_POLICY,
    REC_CHECK,
    SEC,
    c_fetch,
    mapped,
    read_u64,
    set_lock_timeout,
    shm_path,
)
from fix_postgres import missing
from pymqueue._pmq_c import ffi, lib
from queue_helpers import fresh_queue, unique_name

import pymqueue
from pymqueue.errors import UntrustedSegment
from pymqueue.queue import _engine

NOBODY = 65534
CTX = mp.get_context("fork")  # setuid children: a spawned interpreter could not read the tree


@pytest.fixture
def name() -> Iterator[str]:
    n = unique_name("seg")
    yield n
    shm_path(n).unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def default_lock_timeout() -> Iterator[None]:
    yield
    set_lock_timeout(5 * SEC)


def shm(name: str) -> bytes:
    return _engine.shm_name(name.encode(), os.environ["PYMQUEUE_NAMESPACE"])


def c_open(name: str, trust: Any = ffi.NULL) -> tuple[int, Any]:
    out = ffi.new("pmq_queue **")
    rc = lib.pmq_open(shm(name), trust, out)
    return rc, (ffi.gc(out[0], lib.pmq_close) if rc == 0 else None)


def trust(allowed_mode: int = 0, owners: tuple[int, ...] = ()) -> Any:
    t = ffi.new("pmq_trust *")
    t.allowed_mode = allowed_mode
    t.n_owners = len(owners)
    for i, uid in enumerate(owners):
        t.owners[i] = uid
    return t


# ---- trust ---------------------------------------------------------------------------------


MARKER = Path("/tmp") / f"pmq-unpickled-{os.getpid()}"


def _mark(path: str) -> None:
    Path(path).write_text("unpickled")


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark, (str(MARKER),))


def run_as_nobody(target: Any, *args: Any) -> None:
    def body() -> None:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        target(*args)

    p = CTX.Process(target=body)
    p.start()
    p.join(30)
    assert p.exitcode == 0


def _plant_with_api(name: str) -> None:
    with pymqueue.Queue(name, create=True, capacity=8192) as q:
        q.put(Evil())


def _plant_raw(path: str, image: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, image)
    os.close(fd)


def assert_refused(name: str) -> None:
    for attach in (
        lambda: pymqueue.Queue(name, create=False),
        lambda: pymqueue.Queue(name),  # create-or-attach: must not adopt it either
    ):
        with pytest.raises(UntrustedSegment) as exc:
            attach()
        assert isinstance(exc.value, PermissionError)
        assert exc.value.queue == name
    assert name not in pymqueue.list_queues()
    assert not MARKER.exists()


def test_own_segment_writable_by_others_is_refused(name: str) -> None:
    with pymqueue.Queue(name, create=True) as q:
        q.add(b"k", b"v")
    shm_path(name).chmod(0o666)
    assert_refused(name)
    assert c_open(name)[0] == lib.PMQ_E_UNTRUSTED
    rc, handle = c_open(name, trust(allowed_mode=0o666))  # the deployment opts in
    assert rc == 0
    count = ffi.new("uint64_t *")
    assert lib.pmq_count(handle, count) == 0
    assert count[0] == 1
    shm_path(name).chmod(0o640)
    assert c_open(name)[0] == lib.PMQ_E_UNTRUSTED  # group-readable is beyond 0600 too


def test_creating_with_a_wider_mode_needs_the_same_trust_to_attach(name: str) -> None:
    cfg = ffi.new("pmq_config *", {"capacity": 8192, "mode": 0o660})
    out = ffi.new("pmq_queue **")
    created = ffi.new("int *")
    raw = name.encode()
    assert lib.pmq_create(shm(name), raw, len(raw), cfg, 1, ffi.NULL, out, created) == 0
    lib.pmq_close(out[0])
    assert shm_path(name).stat().st_mode & 0o777 == 0o660
    assert c_open(name)[0] == lib.PMQ_E_UNTRUSTED
    assert c_open(name, trust(allowed_mode=0o660))[0] == 0


@pytest.mark.parametrize("how", ["api", "raw"])
def test_a_segment_planted_by_another_uid_is_refused_and_nothing_unpickled(
    name: str, how: str
) -> None:
    if os.geteuid() != 0:
        missing("root, to plant a segment as another uid")
    if how == "api":
        run_as_nobody(_plant_with_api, name)
    else:
        # A valid image (made by us, holding the pickle) written raw by the other uid.
        donor = unique_name("donor")
        with pymqueue.Queue(donor, create=True, capacity=8192) as q:
            q.put(Evil())
        image = shm_path(donor).read_bytes()
        pymqueue.unlink(donor)
        run_as_nobody(_plant_raw, str(shm_path(name)), image)
    assert shm_path(name).stat().st_uid == NOBODY
    assert_refused(name)
    assert c_open(name, trust(allowed_mode=0o600))[0] == lib.PMQ_E_UNTRUSTED
    # Opting in: that uid is trusted (and, for good measure, a wider mode).
    rc, handle = c_open(name, trust(allowed_mode=0o666, owners=(12345, NOBODY)))
    assert rc == 0
    count = ffi.new("uint64_t *")
    assert lib.pmq_count(handle, count) == 0
    assert count[0] == 1
    assert not MARKER.exists()  # attaching never unpickles
    bad = trust(owners=(NOBODY,))
    bad.n_owners = lib.PMQ_TRUST_MAX_OWNERS + 1
    assert c_open(name, bad)[0] == lib.PMQ_E_INVAL


def test_a_symlink_is_not_followed(name: str, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"\0" * 8192)
    shm_path(name).symlink_to(target)
    with pytest.raises(UntrustedSegment):
        pymqueue.Queue(name, create=False)


# ---- creation is all or nothing ------------------------------------------------------------


def _create_and_crash(name: str) -> None:
    lib.pmq_test_crash_at(7)  # after the segment is whole, before it gets its name
    pymqueue.Queue(name, create=True)
    os._exit(3)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_creator_killed_mid_create_leaves_no_name(name: str, start_method: str) -> None:
    before = set(os.listdir("/dev/shm"))
    p = mp.get_context(start_method).Process(target=_create_and_crash, args=(name,))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert not shm_path(name).exists()
    assert not [f for f in set(os.listdir("/dev/shm")) - before if f.startswith(".pmq-new")]
    with pytest.raises(pymqueue.QueueNotFound):
        pymqueue.Queue(name, create=False)
    with pymqueue.Queue(name, create=True) as q:  # the name is free
        assert q.created
        q.unlink()


# ---- geometry overwritten after attach -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (OFF_DATA_CAP, 1 << 40),
        (OFF_DATA_CAP, 8),
        (OFF_INDEX_SLOTS, 1 << 30),
        (OFF_INDEX_SLOTS, 2),
        (OFF_MAX_ITEMS, 1),
        (OFF_POLICY, 0xFFFFFFFF),
        (OFF_ADDMODE, 7),
        (OFF_EPOCH, 0),
    ],
)
@pytest.mark.parametrize("addmode", [0, 2])
def test_geometry_overwritten_after_attach_is_not_used(
    field: int, value: int, addmode: int
) -> None:
    with fresh_queue(capacity=8192, size=100, addmode=addmode) as q:
        for i in range(20):
            q.add(b"k%d" % i, b"v" * 50)
        with mapped(q) as m:
            assert read_u64(m, OFF_DATA_CAP) == 8192  # the offsets are the layout's
            size = 4 if field in (OFF_POLICY, OFF_ADDMODE) else 8
            m[field : field + size] = value.to_bytes(size, "little")
        # This handle works on from its private copy: every call goes through as before.
        for i in range(200):
            q.add(b"k%d" % (i % 30), b"w" * 60)
        assert len(q) <= 100
        assert len(q.peek_many(1000)) == len(q)
        # A new attach validates and refuses the forged header.
        with pytest.raises(pymqueue.InvalidSegment):
            pymqueue.Queue(q.name, create=False)
        got = q.fetch_many(1000)
        assert got
        assert all(v in (b"v" * 50, b"w" * 60) for _, v in got)
        assert q.stats().items == 0


def test_the_published_state_overwritten_is_refused_not_followed() -> None:
    with fresh_queue(capacity=8192) as q:
        q.add(b"k", b"v")
        with mapped(q) as m:
            data_off = read_u64(m, OFF_DATA_OFF)
            header = bytes(m[:data_off])
            # head/tail of both states: find them as the (0, 32) pair after the mutex
            for off in range(64, data_off - 16, 8):
                if struct.unpack_from("<QQQ", header, off) == (0, 32, 1):
                    m[off : off + 16] = struct.pack("<QQ", 1 << 50, 1 << 62)
        with pytest.raises(pymqueue.InvalidSegment):
            q.fetch()
        with pytest.raises(pymqueue.InvalidSegment):
            q.add(b"k", b"v")


# ---- lock words that lie -------------------------------------------------------------------


def _hold_lock(q: pymqueue.Queue, w: Any) -> None:
    assert lib.pmq_test_hold_lock(q._handle) == 0
    w.send(os.getpid())
    signal.pause()


def lock_word_offset(q: pymqueue.Queue) -> int:
    """Where the mutex's owner word is: the holder's TID appears there."""
    r, w = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_hold_lock, args=(q, w))
    p.start()
    pid = r.recv()
    with mapped(q) as m:
        data_off = read_u64(m, OFF_DATA_OFF)
        offs = [
            o
            for o in range(0, data_off, 4)
            if struct.unpack_from("<I", m, o)[0] & 0x3FFFFFFF == pid
        ]
    p.kill()
    p.join(10)
    q.stats()  # recover from the dead holder
    assert len(offs) >= 1
    return offs[0]


def dead_pid() -> int:
    p = CTX.Process(target=os._exit, args=(0,))
    p.start()
    p.join(10)
    return int(p.pid)


@pytest.mark.parametrize(
    "word",
    ["dead", "beyond_pid_max", "waiters_no_owner"],
)
def test_a_lock_word_naming_no_live_owner_is_corruption_in_milliseconds(word: str) -> None:
    # The default lock timeout (5 s) stays: the answer must not come from it.
    with fresh_queue() as q:
        q.add(b"k", b"v")
        off = lock_word_offset(q)
        value = {
            "dead": dead_pid(),
            "beyond_pid_max": 0x3FFFFFF0,
            "waiters_no_owner": 0x80000000,
        }[word]
        with mapped(q) as m:
            struct.pack_into("<I", m, off, value)
        for call in (q.fetch, lambda: q.add(b"k", b"v"), q.stats, lambda: q.get(timeout=None)):
            t0 = time.monotonic()
            with pytest.raises(pymqueue.InvalidSegment):
                call()
            assert time.monotonic() - t0 < 0.5
        t0 = time.monotonic()
        assert c_fetch(q, 2 * SEC)[0] == lib.PMQ_E_CORRUPT
        assert time.monotonic() - t0 < 0.5


def test_random_mutex_bit_flips_are_answered_quickly() -> None:
    set_lock_timeout(SEC // 4)  # a flip that names a live process waits this long at most
    rng = random.Random(7)
    with fresh_queue() as q:
        q.add(b"k", b"v")
        off = lock_word_offset(q)
        with mapped(q) as m:
            clean = bytes(m[off : off + 40])  # sizeof(pthread_mutex_t) on x86_64 glibc
        for _ in range(60):
            with mapped(q) as m:
                m[off : off + 40] = clean
                pos = off + rng.randrange(40)
                m[pos] ^= 1 << rng.randrange(8)
            t0 = time.monotonic()
            for call in (q.fetch, lambda: q.add(b"k", b"v"), q.stats):
                with contextlib.suppress(pymqueue.InvalidSegment, pymqueue.LockTimeout):
                    call()
            assert time.monotonic() - t0 < 3 * (0.25 + 0.5)
        with mapped(q) as m:
            m[off : off + 40] = clean


# ---- a failed recovery poisons ---------------------------------------------------------------


def _attached_then_try(name: str, go: Any, out: Any) -> None:
    q = pymqueue.Queue(name, create=False)
    out.send("attached")
    go.recv()
    try:
        q.fetch()
        out.send("no error")
    except pymqueue.InvalidSegment:
        out.send("InvalidSegment")
    q.close()


def _try_attach(name: str, out: Any) -> None:
    try:
        pymqueue.Queue(name, create=False).close()
        out.send("attached")
    except pymqueue.InvalidSegment:
        out.send("InvalidSegment")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_failed_recovery_poisons_the_segment_for_everyone(start_method: str) -> None:
    ctx = mp.get_context(start_method)
    with fresh_queue(capacity=8192) as q:
        q.add(b"k", b"v")
        lock_off = lock_word_offset(q)
        go_r, go_w = ctx.Pipe(duplex=False)
        out_r, out_w = ctx.Pipe(duplex=False)
        other = ctx.Process(target=_attached_then_try, args=(q.name, go_r, out_w))
        other.start()
        assert out_r.recv() == "attached"
        # A holder dies, and the record it leaves fails validation: recovery cannot vouch
        # for the queue.
        r, w = CTX.Pipe(duplex=False)
        holder = CTX.Process(target=_hold_lock, args=(q, w))
        holder.start()
        r.recv()
        with mapped(q) as m:
            data_off = read_u64(m, OFF_DATA_OFF)
            m[data_off + REC_CHECK] ^= 0xFF
        holder.kill()
        holder.join(10)
        for _ in range(3):  # every later call, not only the one that ran the recovery
            t0 = time.monotonic()
            with pytest.raises(pymqueue.InvalidSegment):
                q.fetch()
            assert time.monotonic() - t0 < 0.5
        with pytest.raises(pymqueue.InvalidSegment):
            q.add(b"k2", b"v")
        go_w.send("go")
        assert out_r.recv() == "InvalidSegment"  # a process attached before
        other.join(10)
        p = ctx.Process(target=_try_attach, args=(q.name, out_w))
        p.start()
        assert out_r.recv() == "InvalidSegment"  # and one attaching after
        p.join(10)
        # Belt and braces: without the header's poisoned flag (the word after the 40-byte
        # mutex), the unrecoverable mutex alone keeps refusing, at once, every time.
        with mapped(q) as m:
            assert struct.unpack_from("<I", m, lock_off + 40)[0] == 1
            struct.pack_into("<I", m, lock_off + 40, 0)
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(pymqueue.InvalidSegment):
                q.fetch()
            assert time.monotonic() - t0 < 0.5


def test_the_planted_payload_would_run_if_unpickled() -> None:
    """Keeps the trust tests honest: their "nothing unpickled" check can fail."""
    pickle.loads(pickle.dumps(Evil()))
    assert MARKER.exists()
    MARKER.unlink()
