"""pymqueue as a drop-in for multiprocessing's queues (issue 11).

Part 1 runs CPython's own queue tests against pymqueue: the queue cases of
``Lib/test/_test_multiprocessing.py`` (``_TestQueue``, ``TestSimpleQueue``, the manager's
``test_queue``/``test_joinable_queue``) under fork and spawn with real processes, and
``Lib/test/test_queue.py``'s ``BaseQueueTestMixin`` where it applies (a FIFO queue; threads).
The test logic is adapted from CPython 3.11 (PSF licence); what changed: no sleeps as
synchronisation (a blocking call is proven to block by seeing it asleep in the kernel
before the trigger runs), no timed asserts except "did not return before its timeout", and
``put`` of an object that cannot be pickled raises at the caller (multiprocessing's feeder
thread prints it and drops the item).

Part 2: private queues are unlinked by their creator only (close, collection, exit, a
forked child exiting or SIGKILLed, a SIGKILLed creator swept); part 3: JoinableQueue's
unfinished count across processes and crashes.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import pickle
import queue as pyqueue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import asleep_in_futex, proc_state, wait_until

import pymqueue
from pymqueue import JoinableQueue, Queue, SimpleQueue

SHM = Path("/dev/shm")


@pytest.fixture(params=["fork", "spawn"])
def ctx(request: pytest.FixtureRequest) -> Iterator[Any]:
    context = mp.get_context(request.param)
    yield context
    for child in mp.active_children():  # a failed assertion leaves none behind
        child.kill()
        child.join(10)


def seg(q: Queue) -> Path:
    return SHM / q._shm.decode()[1:]


def close_queue(q: Queue) -> None:
    """_test_multiprocessing.close_queue: close, then join the (absent) feeder thread."""
    q.close()
    q.join_thread()


def thread_asleep(tid: int) -> bool:
    """A thread of this process asleep in a futex wait."""
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        wchan = Path(f"/proc/self/task/{tid}/wchan").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "S" and "futex" in wchan


def sleeping(q: Queue, flag: str, tid: int) -> Callable[[], bool]:
    def check() -> bool:
        return getattr(q.stats(), flag) == 1 and thread_asleep(tid)

    return lambda: check() and check()


# =============================================================================================
# Part 1a. Lib/test/_test_multiprocessing.py, _TestQueue (adapted), under fork and spawn
# =============================================================================================


def _test_put(queue: Queue, child_can_start: Any, parent_can_continue: Any) -> None:
    child_can_start.wait()
    for _ in range(6):
        queue.get()
    parent_can_continue.set()


def test_put(ctx: Any) -> None:
    maxsize = 6
    queue = Queue(maxsize=maxsize)
    child_can_start = ctx.Event()
    parent_can_continue = ctx.Event()
    proc = ctx.Process(target=_test_put, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()

    assert queue.empty() is True
    assert queue.full() is False

    queue.put(1)
    queue.put(2, True)
    queue.put(3, True, None)
    queue.put(4, False)
    queue.put(5, False, None)
    queue.put_nowait(6)

    # (multiprocessing sleeps here: its items may still be in the feeder's buffer)
    assert queue.empty() is False
    assert queue.full() is True

    with pytest.raises(pyqueue.Full):
        queue.put(7, False)
    with pytest.raises(pyqueue.Full):
        queue.put(7, False, None)
    with pytest.raises(pyqueue.Full):
        queue.put_nowait(7)
    start = time.monotonic()
    with pytest.raises(pyqueue.Full):
        queue.put(7, True, 0.1)
    assert time.monotonic() - start >= 0.1  # it did wait (a lower bound cannot flake)
    with pytest.raises(pyqueue.Full):
        queue.put(7, False, 0.1)
    with pytest.raises(pyqueue.Full):
        queue.put(7, True, timeout=0.1)

    child_can_start.set()
    parent_can_continue.wait()

    assert queue.empty() is True
    assert queue.full() is False

    proc.join(30)
    assert proc.exitcode == 0
    close_queue(queue)


def _test_get(queue: Queue, child_can_start: Any, parent_can_continue: Any) -> None:
    child_can_start.wait()
    queue.put(1)  # (commented out in CPython: "Hangs unexpectedly"; fine here)
    queue.put(2)
    queue.put(3)
    queue.put(4)
    queue.put(5)
    parent_can_continue.set()


def test_get(ctx: Any) -> None:
    queue = Queue()
    child_can_start = ctx.Event()
    parent_can_continue = ctx.Event()
    proc = ctx.Process(target=_test_get, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()

    assert queue.empty() is True
    child_can_start.set()
    parent_can_continue.wait()
    assert queue.empty() is False

    assert queue.get() == 1
    assert queue.get(True, None) == 2
    assert queue.get(True) == 3
    assert queue.get(timeout=1) == 4
    assert queue.get_nowait() == 5
    assert queue.empty() is True

    with pytest.raises(pyqueue.Empty):
        queue.get(False)
    with pytest.raises(pyqueue.Empty):
        queue.get(False, None)
    with pytest.raises(pyqueue.Empty):
        queue.get_nowait()
    with pytest.raises(pyqueue.Empty):
        queue.get(True, 0.1)
    with pytest.raises(pyqueue.Empty):
        queue.get(False, 0.1)
    with pytest.raises(pyqueue.Empty):
        queue.get(timeout=0.1)

    proc.join(30)
    assert proc.exitcode == 0
    close_queue(queue)


def _test_fork(queue: Queue) -> None:
    for i in range(10, 20):
        queue.put(i)


def test_fork(ctx: Any) -> None:
    queue = Queue()
    for i in range(10):
        queue.put(i)
    p = ctx.Process(target=_test_fork, args=(queue,))
    p.daemon = True
    p.start()
    for i in range(20):
        assert queue.get(timeout=30) == i
    with pytest.raises(pyqueue.Empty):
        queue.get(False)
    p.join(30)
    assert p.exitcode == 0
    close_queue(queue)


def test_qsize() -> None:
    q = Queue()
    assert q.qsize() == 0
    q.put(1)
    assert q.qsize() == 1
    q.put(5)
    assert q.qsize() == 2
    q.get()
    assert q.qsize() == 1
    q.get()
    assert q.qsize() == 0
    close_queue(q)


def _test_task_done(q: JoinableQueue) -> None:
    for _ in iter(q.get, None):
        q.task_done()  # (CPython sleeps DELTA before this)


def test_task_done(ctx: Any) -> None:
    queue = JoinableQueue()
    workers = [ctx.Process(target=_test_task_done, args=(queue,)) for _ in range(4)]
    for p in workers:
        p.daemon = True
        p.start()
    for i in range(10):
        queue.put(i)
    queue.join()
    assert queue.unfinished() == 0
    for _ in workers:
        queue.put(None)
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    close_queue(queue)


def test_no_import_lock_contention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name = "imported_by_an_imported_module_pmq"
    (tmp_path / f"{module_name}.py").write_text(
        "from pymqueue import Queue\n"
        "q = Queue()\n"
        "q.put('knock knock')\n"
        "q.get(timeout=3)\n"
        "q.close()\n"
        "del q\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        __import__(module_name)
    except pyqueue.Empty:
        pytest.fail("Probable regression on import lock contention; see Issue #22853")
    finally:
        sys.modules.pop(module_name, None)


def test_timeout() -> None:
    q = Queue()
    start = time.monotonic()
    with pytest.raises(pyqueue.Empty):
        q.get(True, 0.200)
    assert time.monotonic() - start >= 0.100  # as in CPython: not before its timeout
    close_queue(q)


class NotSerializable:
    def __reduce__(self) -> Any:
        raise AttributeError


def test_queue_feeder_donot_stop_onexc() -> None:
    # bpo-30414 / bpo-33078, adapted: the error reaches the caller of put (there is no
    # feeder thread), nothing is queued, and the queue and its size stay right.
    q = Queue()
    with pytest.raises(AttributeError):
        q.put(NotSerializable())
    q.put(True)
    assert q.get(timeout=30) is True
    close_queue(q)

    q = Queue(maxsize=1)
    with pytest.raises(AttributeError):
        q.put(NotSerializable())
    q.put(True)
    assert q.qsize() == 1
    assert q.get(timeout=30) is True
    assert q.empty()
    close_queue(q)


def test_closed_queue_put_get_exceptions() -> None:
    for q in Queue(), JoinableQueue():
        q.close()
        with pytest.raises(ValueError, match="is closed"):
            q.put("foo")
        with pytest.raises(ValueError, match="is closed"):
            q.get()


# ---- _TestManagerRestart-free part of the manager tests: test_queue, test_joinable_queue --


def _test_queue_in_worker(obj: Queue) -> None:
    assert obj.qsize() == 2
    assert obj.full()
    assert not obj.empty()
    assert obj.get() == 5
    assert not obj.empty()
    assert obj.get() == 6
    assert obj.empty()


@pytest.mark.parametrize("cls", [Queue, JoinableQueue])
def test_queue_in_worker(ctx: Any, cls: type[Queue]) -> None:
    o = cls(2)  # maxsize, positionally, as multiprocessing.Queue(2)
    o.put(5)
    o.put(6)
    p = ctx.Process(target=_test_queue_in_worker, args=(o,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert o.empty()
    assert not o.full()
    o.close()


# ---- TestSimpleQueue ----------------------------------------------------------------------


def _test_empty(queue: SimpleQueue, child_can_start: Any, parent_can_continue: Any) -> None:
    child_can_start.wait()
    try:
        queue.put(queue.empty())
        queue.put(queue.empty())
    finally:
        parent_can_continue.set()


def test_simplequeue_empty(ctx: Any) -> None:
    queue = SimpleQueue()
    child_can_start = ctx.Event()
    parent_can_continue = ctx.Event()
    proc = ctx.Process(target=_test_empty, args=(queue, child_can_start, parent_can_continue))
    proc.daemon = True
    proc.start()
    assert queue.empty()
    child_can_start.set()
    parent_can_continue.wait()
    assert not queue.empty()
    assert queue.get() is True
    assert queue.get() is False
    assert queue.empty()
    proc.join(30)
    assert proc.exitcode == 0
    queue.close()


def test_simplequeue_close() -> None:
    queue = SimpleQueue()
    queue.close()
    queue.close()  # closing a queue twice should not fail
    assert queue.closed  # (CPython checks its private _reader/_writer)


# =============================================================================================
# Part 1b. Lib/test/test_queue.py, BaseQueueTestMixin (adapted): FIFO queues, threads
# =============================================================================================

QUEUE_SIZE = 5


def qfull(q: Queue) -> bool:
    return q.maxsize > 0 and q.qsize() == q.maxsize


def do_blocking_test(
    block_func: Callable[..., Any],
    block_args: tuple[Any, ...],
    trigger_func: Callable[..., Any],
    trigger_args: tuple[Any, ...],
    *,
    q: Queue,
    flag: str,
) -> Any:
    """test_queue's do_blocking_test, without its sleep: the trigger runs once the blocking
    call sleeps in the kernel with the queue's sleep flag up (so it did block)."""
    tid = threading.get_native_id()
    started = threading.Event()

    def trigger() -> None:
        wait_until(sleeping(q, flag, tid), f"the blocking call sleeps ({flag})")
        started.set()
        trigger_func(*trigger_args)

    thread = threading.Thread(target=trigger)
    thread.start()
    try:
        result = block_func(*block_args)
        assert started.is_set(), f"blocking function {block_func!r} appeared not to block"
        return result
    finally:
        thread.join(30)


def basic_queue_test(q: Queue) -> None:
    if q.qsize():
        raise RuntimeError("Call this function with an empty queue")
    assert q.empty()
    assert not q.full()
    q.put(111)
    q.put(333)
    q.put(222)
    actual_order = [q.get(), q.get(), q.get()]
    assert actual_order == [111, 333, 222], "Didn't seem to queue the correct data!"
    for i in range(QUEUE_SIZE - 1):
        q.put(i)
        assert q.qsize(), "Queue should not be empty"
    assert not qfull(q), "Queue should not be full"
    last = 2 * QUEUE_SIZE
    full = 3 * 2 * QUEUE_SIZE
    q.put(last)
    assert qfull(q), "Queue should be full"
    assert not q.empty()
    assert q.full()
    with pytest.raises(pyqueue.Full):
        q.put(full, block=False)
    with pytest.raises(pyqueue.Full):
        q.put(full, timeout=0.01)
    # Test a blocking put
    do_blocking_test(q.put, (full,), q.get, (), q=q, flag="putters_waiting")
    do_blocking_test(q.put, (full, True, 10), q.get, (), q=q, flag="putters_waiting")
    # Empty it
    for _ in range(QUEUE_SIZE):
        q.get()
    assert not q.qsize(), "Queue should be empty"
    with pytest.raises(pyqueue.Empty):
        q.get(block=False)
    with pytest.raises(pyqueue.Empty):
        q.get(timeout=0.01)
    # Test a blocking get
    do_blocking_test(q.get, (), q.put, ("empty",), q=q, flag="getters_waiting")
    do_blocking_test(q.get, (True, 10), q.put, ("empty",), q=q, flag="getters_waiting")


@pytest.mark.parametrize("cls", [Queue, JoinableQueue])
def test_basic(cls: type[Queue]) -> None:
    q = cls(QUEUE_SIZE)
    basic_queue_test(q)  # done twice, to make sure it works with the same instance reused
    basic_queue_test(q)
    q.close()


def queue_join_test(q: JoinableQueue) -> None:
    cum = 0
    cumlock = threading.Lock()

    def worker() -> None:
        nonlocal cum
        while True:
            x = q.get()
            if x < 0:
                q.task_done()
                return
            with cumlock:
                cum += x
            q.task_done()

    threads = [threading.Thread(target=worker) for _ in (0, 1)]
    for t in threads:
        t.start()
    for i in range(100):
        q.put(i)
    q.join()
    assert cum == sum(range(100)), "q.join() did not block until all tasks were done"
    for _ in (0, 1):
        q.put(-1)  # instruct the threads to close
    q.join()  # verify that you can join twice
    for t in threads:
        t.join(30)


def test_queue_task_done() -> None:
    q = JoinableQueue()
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()
    q.close()


def test_queue_join() -> None:
    q = JoinableQueue()
    queue_join_test(q)
    queue_join_test(q)
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()
    q.close()


@pytest.mark.parametrize("cls", [Queue, JoinableQueue])
def test_negative_timeout_raises_exception(cls: type[Queue]) -> None:
    q = cls(QUEUE_SIZE)
    with pytest.raises(ValueError, match="timeout"):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(True, timeout=-1)
    q.close()


@pytest.mark.parametrize("cls", [Queue, JoinableQueue])
def test_nowait(cls: type[Queue]) -> None:
    q = cls(QUEUE_SIZE)
    for _ in range(QUEUE_SIZE):
        q.put_nowait(1)
    with pytest.raises(pyqueue.Full):
        q.put_nowait(1)
    for _ in range(QUEUE_SIZE):
        q.get_nowait()
    with pytest.raises(pyqueue.Empty):
        q.get_nowait()
    q.close()


# =============================================================================================
# Part 2. Private queues: made by Queue() without a name, unlinked by their creator only
# =============================================================================================


def test_private_queue_settings_and_names(namespace: str) -> None:
    q = Queue()
    j = JoinableQueue(maxsize=3)
    s = SimpleQueue()
    try:
        assert q.name.startswith(f"mp-{os.getpid()}-")
        assert len({q.name, j.name, s.name}) == 3
        assert q.namespace == namespace
        assert seg(q).exists()
        assert (q.maxsize, q.policy) == (0, pymqueue.Overflow.BLOCK)  # never drops
        assert (j.maxsize, j.policy) == (3, pymqueue.Overflow.BLOCK)
        assert Queue(-1).maxsize == 0  # maxsize <= 0: unbounded, as multiprocessing
        assert repr(j).startswith(f"<pymqueue.JoinableQueue '{j.name}' items=0/3")
    finally:
        for x in (q, j, s):
            x.close()


def test_private_queue_bad_arguments() -> None:
    with pytest.raises(pymqueue.ConfigError):
        Queue(create=False)
    with pytest.raises(pymqueue.ConfigError):
        Queue(3, maxsize=4)
    with pytest.raises(pymqueue.ConfigError):
        Queue(maxsize=3, size=4)
    with pytest.raises(pymqueue.ConfigError):
        Queue(policy="reject")
    with pytest.raises(pymqueue.ConfigError):
        Queue(maxsize=2.5)  # type: ignore[arg-type]
    with pytest.raises(pymqueue.ConfigError):
        Queue(True)  # type: ignore[arg-type]  # neither a name nor a maxsize


def test_named_queue_with_maxsize_blocks() -> None:
    name = f"mpnamed{os.getpid()}"
    q = Queue(name, maxsize=2, create=True)
    try:
        assert (q.maxsize, q.policy) == (2, pymqueue.Overflow.BLOCK)
        q.put(1)
        q.put(2)
        with pytest.raises(pyqueue.Full):
            q.put(3, timeout=0.01)
        with pytest.raises(pymqueue.ConfigError):
            Queue(name, maxsize=3)  # attach: settings differ
        q.close()
        assert seg(q).exists()  # a named queue stays
    finally:
        q.unlink()


def test_close_by_creator_unlinks_attached_handles_keep_working() -> None:
    q = Queue()
    other = pickle.loads(pickle.dumps(q))  # attached by name, as a spawn child does
    path = seg(q)
    assert path.exists()
    other.close()  # not the creator's object: nothing unlinked
    assert path.exists()
    again = pickle.loads(pickle.dumps(q))
    q.close()
    assert not path.exists()
    again.put("still mapped")  # like an open file whose name was removed
    assert again.get() == "still mapped"
    again.close()
    with pytest.raises(pymqueue.QueueNotFound):
        pickle.loads(pickle.dumps(again))


def test_collected_private_queue_is_unlinked() -> None:
    q = Queue()
    path = seg(q)
    del q
    gc.collect()
    assert not path.exists()


_CREATOR = """
import sys
from pymqueue import Queue, JoinableQueue
q = JoinableQueue() if sys.argv[1] == "joinable" else Queue(5)
q.put("x")
print(q._shm.decode()[1:], flush=True)
if sys.argv[2] == "wait":
    sys.stdin.read()   # until the parent kills us or closes our stdin
"""


def start_creator(kind: str, then: str) -> tuple[subprocess.Popen[str], Path]:
    p = subprocess.Popen(
        [sys.executable, "-c", _CREATOR, kind, then],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    return p, SHM / p.stdout.readline().strip()


@pytest.mark.parametrize("kind", ["queue", "joinable"])
def test_creator_exit_unlinks(kind: str) -> None:
    p, path = start_creator(kind, "exit")
    assert p.wait(30) == 0
    assert not path.exists()


def _creator_child(r: Any, w: Any) -> None:
    q = Queue()
    q.put("made by a multiprocessing child")
    w.send(q._shm.decode()[1:])
    r.recv()  # then return: multiprocessing children end in os._exit, not atexit


def test_creator_that_is_a_multiprocessing_child_unlinks_at_exit(ctx: Any) -> None:
    r1, w1 = ctx.Pipe(duplex=False)
    r2, w2 = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_creator_child, args=(r2, w1))
    p.start()
    path = SHM / r1.recv()
    assert path.exists()
    w2.send("go")
    p.join(30)
    assert p.exitcode == 0
    assert not path.exists()


def _forked_child_exits(q: Queue, how: str, r: Any) -> None:
    q.put(f"from the child ({how})")
    if how == "close":
        q.close()
    elif how == "wait":
        r.recv()  # until SIGKILLed


@pytest.mark.parametrize("how", ["return", "close", "sigkill"])
def test_children_never_unlink(ctx: Any, how: str) -> None:
    q = Queue()
    path = seg(q)
    r, _w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_forked_child_exits, args=(q, "wait" if how == "sigkill" else how, r))
    p.start()
    got = q.get(timeout=30)
    assert got.startswith("from the child")
    if how == "sigkill":
        os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert path.exists(), "a child unlinked its parent's private queue"
    q.put("the parent carries on")
    assert q.get() == "the parent carries on"
    q.close()
    assert not path.exists()


def test_os_fork_child_exiting_through_atexit_does_not_unlink() -> None:
    q = Queue()
    path = seg(q)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            q.put("child")
            q.close()
            code = 0
        finally:
            sys.stdout.flush()
            # a normal interpreter exit would run pytest's atexit hooks too: run only ours
            mp_util._exit_function()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.exists()
    assert q.get() == "child"
    q.close()
    assert not path.exists()


_FORKING_CREATOR = """
import os, sys
from pymqueue import Queue
q = Queue()
child = os.fork()
if child == 0:
    sys.stdin.read()         # the forked child keeps the inherited lock until stdin closes
    os._exit(0)
print(q._shm.decode()[1:], child, flush=True)
sys.stdin.read()
"""


def test_sigkilled_creator_is_swept_by_the_next_private_queue() -> None:
    p, path = start_creator("queue", "wait")
    assert path.exists()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    assert path.exists()  # nobody could unlink it
    Queue().close()  # a new private queue in the namespace sweeps the dead creator's
    assert not path.exists()


def test_sweep_spares_a_queue_whose_creators_forked_child_lives() -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", _FORKING_CREATOR],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    assert p.stdin is not None
    entry, child = p.stdout.readline().split()
    path = SHM / entry
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    Queue().close()
    assert path.exists(), "swept while the creator's forked child still holds it"
    p.stdin.close()  # the orphaned grandchild reads EOF and exits
    wait_until(lambda: proc_state(int(child))[0] in ("X", "Z"), "the forked child exits")
    Queue().close()
    assert not path.exists()


def test_sweep_leaves_live_creators_and_named_queues_alone(namespace: str) -> None:
    p, path = start_creator("queue", "wait")
    named = Queue(f"mp-1-2-deadbeef{os.getpid()}", create=True)  # looks private, is not
    try:
        Queue().close()
        assert path.exists()
        assert seg(named).exists()
    finally:
        named.unlink()
        named.close()
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(30) == 0
    assert not path.exists()


# =============================================================================================
# Part 3. JoinableQueue across processes: the unfinished count lives in the segment
# =============================================================================================


def _join_in_child(q: JoinableQueue, w: Any) -> None:
    w.send(q.unfinished())
    q.join()
    w.send(q.unfinished())


def test_join_in_another_process_wakes_on_the_last_task_done(ctx: Any) -> None:
    q = JoinableQueue()
    for i in range(3):
        q.put(i)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_join_in_child, args=(q, w))
    p.start()
    assert r.recv() == 3
    for _ in range(3):
        q.get()
    q.task_done()
    q.task_done()
    wait_until(lambda: asleep_in_futex(p.pid), "the child sleeps in join()")
    assert p.is_alive()
    q.task_done()
    assert r.recv() == 0
    p.join(30)
    assert p.exitcode == 0
    q.close()


def _worker_dies_before_task_done(q: JoinableQueue, w: Any) -> None:
    w.send(q.get())
    signal.pause()  # SIGKILLed here: after get, before task_done


def test_worker_killed_before_task_done_leaves_the_count_up(ctx: Any) -> None:
    q = JoinableQueue()
    q.put("job")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_worker_dies_before_task_done, args=(q, w))
    p.start()
    assert r.recv() == "job"
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert q.empty()
    assert q.unfinished() == 1  # as multiprocessing: the job counts until someone says done
    assert q.join(timeout=0.05) is False
    q.task_done()  # a supervisor that knows the job was lost
    assert q.join(timeout=0) is True
    q.close()


def _sleep_in_join(q: JoinableQueue) -> None:
    q.join()


def test_joiner_killed_while_asleep_does_not_block_other_joiners(ctx: Any) -> None:
    q = JoinableQueue()
    q.put(1)
    dead = ctx.Process(target=_sleep_in_join, args=(q,))
    dead.start()
    wait_until(lambda: asleep_in_futex(dead.pid), "the joiner sleeps")
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(30)
    alive = ctx.Process(target=_sleep_in_join, args=(q,))
    alive.start()
    wait_until(lambda: asleep_in_futex(alive.pid), "the second joiner sleeps")
    q.get()
    q.task_done()
    alive.join(30)
    assert alive.exitcode == 0
    q.close()


def _producer_consumer(q: JoinableQueue, n: int) -> None:
    for i in range(n):
        q.put(i)
        q.get()
        q.task_done()


def test_unfinished_count_adds_up_across_processes(ctx: Any) -> None:
    q = JoinableQueue(maxsize=8)
    procs = [ctx.Process(target=_producer_consumer, args=(q, 500)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert q.unfinished() == 0
    st = q.stats()
    assert st.added == st.fetched == 1500
    assert q.join(timeout=0)
    with pytest.raises(pymqueue.TaskDoneError):
        q.task_done()
    q.close()


def test_dropped_and_replaced_items_count_as_done() -> None:
    name = f"mpjoin{os.getpid()}"
    q = JoinableQueue(name, size=2, addmode=2, create=True)
    try:
        q.add("a", "1")
        q.add("b", "1")
        q.add("c", "1")  # drops a
        q.add("b", "2")  # replaces b
        assert q.stats().dropped == 1
        assert q.stats().replaced == 1
        assert q.unfinished() == 2
        assert [k for k, _ in q.fetch_many(5)] == [b"c", b"b"]
        q.task_done()
        q.task_done()
        assert q.join(timeout=0)
    finally:
        q.unlink()
        q.close()


def test_close_wakes_a_join_in_another_thread() -> None:
    q = JoinableQueue()
    q.put(1)
    errors: list[BaseException] = []

    def joiner() -> None:
        try:
            q.join()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=joiner)
    t.start()
    wait_until(lambda: t.native_id is not None and thread_asleep(t.native_id), "join sleeps")
    q.close()
    t.join(30)
    assert len(errors) == 1
    assert isinstance(errors[0], pymqueue.QueueClosed)


# =============================================================================================
# Part 4. The drop-in, end to end: multiprocessing's documented example with one import changed
# =============================================================================================

_DROP_IN = """
import sys
from multiprocessing import Process, set_start_method
from pymqueue import Queue            # was: from multiprocessing import Queue

def f(q, out):
    print(q.get(timeout=30), flush=True)   # the parent may have exited meanwhile
    out.put([42, None, 'hello'])

if __name__ == '__main__':
    set_start_method(sys.argv[1])
    q, out = Queue(), Queue()
    print(out._shm.decode()[1:], q._shm.decode()[1:], flush=True)
    q.put('from the parent')
    p = Process(target=f, args=(q, out))
    p.start()
    print(out.get(timeout=30), flush=True)
    q.put('after the parent left')
    p2 = Process(target=f, args=(q, out))
    p2.start()            # never joined: the parent exits at once, as plenty of scripts do
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_example_with_one_import_changed(tmp_path: Path, method: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(_DROP_IN)
    done = subprocess.run(
        [sys.executable, str(script), method],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names, *lines = done.stdout.splitlines()
    assert lines == ["from the parent", "[42, None, 'hello']", "after the parent left"]
    for entry in names.split():
        assert not (SHM / entry).exists()  # both unlinked at the parent's exit
