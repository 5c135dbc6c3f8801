"""The Python side of the wait/wake redesign: settings, trust options, close, asyncio room waits.

The engine's own behaviour (dead waiters, deadlines against a stopped lock holder, lost
wake-ups, trust in C) is tested in test_engine_wait.py and test_engine_segment.py; this file
checks what a user of ``pymqueue.Queue``/``AsyncQueue`` relies on.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from engine_helpers import asleep_in_futex, shm_path, stopped, wait_until
from queue_helpers import fresh_queue, unique_name

import pymqueue
from pymqueue.errors import UntrustedSegment
from pymqueue.queue import _engine

NOBODY = 65534


@pytest.fixture
def lock_timeout() -> Iterator[None]:
    before = pymqueue.get_lock_timeout()
    yield
    pymqueue.set_lock_timeout(before)


# ---- settings -------------------------------------------------------------------------------


def test_lock_timeout_is_a_python_setting(lock_timeout: None) -> None:
    assert pymqueue.get_lock_timeout() == 5.0
    pymqueue.set_lock_timeout(0.25)
    assert pymqueue.get_lock_timeout() == 0.25
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="lock timeout"):
            pymqueue.set_lock_timeout(bad)
    assert pymqueue.get_lock_timeout() == 0.25


def _hold_lock_and_stop(q: pymqueue.Queue, conn: Any) -> None:
    assert _engine.lib.pmq_test_hold_lock(q._handle) == 0
    conn.send("held")
    os.kill(os.getpid(), signal.SIGSTOP)


def test_an_unbounded_call_gives_up_after_the_lock_timeout_set_in_python(
    lock_timeout: None,
) -> None:
    pymqueue.set_lock_timeout(0.3)
    ctx = mp.get_context("fork")
    with fresh_queue() as q:
        r, w = ctx.Pipe(duplex=False)
        holder = ctx.Process(target=_hold_lock_and_stop, args=(q, w))
        holder.start()
        try:
            assert r.recv() == "held"
            wait_until(lambda: stopped(holder.pid), "the holder stopped")
            for call in (q.fetch, lambda: q.add(b"k", b"v"), q.size, lambda: q.peek_many(3)):
                t0 = time.monotonic()
                with pytest.raises(pymqueue.LockTimeout, match=repr(q.name)):
                    call()
                # the 0.3 s setting, not the 5 s default (generous margin for a loaded machine)
                assert time.monotonic() - t0 < 0.3 + 1.5
            t0 = time.monotonic()
            assert f"{q.name!r} items=0" in repr(q)  # a repr never waits for the lock
            assert time.monotonic() - t0 < 0.3
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(10)
        q.add(b"k", b"v")  # the dead holder is recovered at once
        assert q.fetch() == (b"k", b"v")


@pytest.mark.parametrize(
    "call",
    [
        "q.get()",
        # calls that only need the lock: with a 10-minute lock timeout, only Ctrl-C ends them
        "len(q)",
        "q.stats()",
        "q.peek_many(3)",
        "q.peek_records(3)",
        "q.discard_through(1)",
        "q.release_through(1)",
        "q.fileno()",  # registers and arms the doorbell
    ],
)
def test_ctrl_c_ends_an_unbounded_wait_while_a_stopped_process_holds_the_lock(call: str) -> None:
    with fresh_queue() as q:
        ctx = mp.get_context("fork")
        r, w = ctx.Pipe(duplex=False)
        holder = ctx.Process(target=_hold_lock_and_stop, args=(q, w))
        holder.start()
        child = None
        try:
            assert r.recv() == "held"
            wait_until(lambda: stopped(holder.pid), "the holder stopped")
            code = (
                "import sys, pymqueue\n"
                "pymqueue.set_lock_timeout(600)\n"
                f"q = pymqueue.Queue({q.name!r}, create=False)\n"
                "print('waiting', flush=True)\n"
                "try:\n"
                f"    {call}\n"
                "except KeyboardInterrupt:\n"
                "    print('interrupted', flush=True)\n"
            )
            child = subprocess.Popen(
                [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "waiting"
            pid = child.pid
            wait_until(lambda: asleep_in_futex(pid), "the child waits for the lock")
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=30)  # long before the 600 s lock timeout
            assert out.strip() == "interrupted"
        finally:
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(10)


def test_spin_can_be_set_per_queue_and_per_process() -> None:
    pymqueue.set_default_spin(0)
    try:
        with fresh_queue(spin=0.0001) as q:
            # Both a sleeping and a spinning consumer get the item from another thread.
            t = threading.Thread(target=lambda: q.add(b"k", b"v"))
            t.start()
            assert q.fetch(timeout=10) == (b"k", b"v")
            t.join()
    finally:
        pymqueue.set_default_spin(_engine.DEFAULT_SPIN)
    with pytest.raises(ValueError, match="spin"):
        pymqueue.set_default_spin(-1)


# ---- close ----------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["fetch", "get", "add", "wait"])
def test_close_wakes_this_handles_waiters_in_other_threads(call: str) -> None:
    with fresh_queue(size=1, policy="block") as owner:
        q = pymqueue.Queue(owner.name, create=False)
        if call == "add":
            q.add(b"", b"fills it")
        waiting = {
            "fetch": lambda: q.fetch(timeout=None),
            "get": q.get,
            "add": lambda: q.add(b"", b"no room", timeout=None),
            "wait": lambda: q.wait(readable=True, timeout=None),
        }[call]
        outcome: list[BaseException | object] = []

        def run() -> None:
            try:
                outcome.append(waiting())
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=run)
        t.start()
        wait_until(
            lambda: owner.stats().getters_waiting or owner.stats().putters_waiting,
            "the thread sleeps in its wait",
        )
        q.close()
        t.join(5)
        assert not t.is_alive(), "close() left a waiter asleep"
        assert len(outcome) == 1
        assert isinstance(outcome[0], pymqueue.QueueClosed)
        # Other handles on the same queue are not affected.
        if call != "add":
            owner.add(b"k", b"v")
        assert owner.fetch() is not None


# ---- trust, through the Python API ----------------------------------------------------------


def test_a_queue_created_with_a_wider_mode_needs_the_same_mode_to_attach() -> None:
    name = unique_name("mode")
    with pymqueue.Queue(name, create=True, mode=0o660) as q:
        try:
            assert shm_path(q).stat().st_mode & 0o777 == 0o660
            with pytest.raises(UntrustedSegment) as exc:
                pymqueue.Queue(name)
            assert isinstance(exc.value, PermissionError)
            with pymqueue.Queue(name, create=False, mode=0o660) as other:
                other.add(b"k", b"v")
            assert q.fetch() == (b"k", b"v")
        finally:
            q.unlink()


@pytest.mark.parametrize("bad", [0o400, 0o1777, -1, "0600"])
def test_bad_modes_are_config_errors(bad: Any) -> None:
    with pytest.raises(pymqueue.ConfigError, match="mode"):
        pymqueue.Queue(unique_name("mode"), mode=bad)


def _plant_as_nobody(name: str, namespace: str, conn: Any) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    os.environ["PYMQUEUE_NAMESPACE"] = namespace
    q = pymqueue.Queue(name, create=True, capacity=8192, mode=0o600)
    q.put("from nobody")
    q.close()
    conn.send("planted")


def test_another_users_queue_is_used_only_when_that_user_is_trusted() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test plants a queue as uid 65534 and must run as root (CI does)")
    name = unique_name("planted")
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_plant_as_nobody, args=(name, os.environ["PYMQUEUE_NAMESPACE"], w))
    p.start()
    assert r.recv() == "planted"
    p.join(10)
    try:
        with pytest.raises(UntrustedSegment):
            pymqueue.Queue(name)
        with pymqueue.Queue(name, create=False, trusted_owners=[NOBODY]) as q:
            assert q.get(timeout=1) == "from nobody"
        with pymqueue.Queue(name, create=False, trusted_owners=["nobody"]) as q:
            assert q.size() == 0
            # pickled by name, the trust travels with it (a spawn child attaches the same way)
            clone = q.__reduce__()
            assert NOBODY in clone[1][4]
        with pytest.raises(pymqueue.ConfigError, match="no such user"):
            pymqueue.Queue(name, create=False, trusted_owners=["no-such-user-pmq"])
    finally:
        pymqueue.unlink(name)


# ---- asyncio: waiting for room ---------------------------------------------------------------


def test_async_add_under_the_block_policy_waits_for_room_for_its_item() -> None:
    """A big item waits until it fits (not merely until the count drops below the limit),
    without spinning through the executor, and a give-up counts one rejection."""
    with fresh_queue(capacity=4096, policy="block") as q:
        while True:
            try:
                q.add(b"", b"x" * 200, timeout=0)
            except pymqueue.Full:
                break
        q.stats()  # a snapshot before the waits
        big = b"y" * 1500

        async def main() -> None:
            aq = pymqueue.AsyncQueue(q)
            loop = asyncio.get_running_loop()
            calls = 0
            real = loop.run_in_executor

            def counting(*args: Any) -> Any:
                nonlocal calls
                calls += 1
                return real(*args)

            loop.run_in_executor = counting  # type: ignore[method-assign]
            before = q.stats().rejected
            with pytest.raises(pymqueue.Full):
                await aq.add(b"", big, timeout=0.5)
            assert q.stats().rejected == before + 1  # once per call, not per look
            # 0.5 s of waiting in 50 ms slices: about 10 executor calls, not thousands
            assert calls <= 30
            # Free one small item: still no room for 1500 bytes, the add keeps waiting.
            task = asyncio.ensure_future(aq.add(b"", big, timeout=10))
            q.fetch()
            done, _ = await asyncio.wait({task}, timeout=0.3)
            assert not done
            for _ in range(8):  # now there is room
                q.fetch()
            assert await asyncio.wait_for(task, 10) is True

        asyncio.run(main())
