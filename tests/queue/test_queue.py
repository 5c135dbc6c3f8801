"""The queue engine in one process: Kamailio semantics, policies, vocabularies, lifecycle."""

from __future__ import annotations

import pickle
import queue as stdqueue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from queue_helpers import fresh_queue, unique_name

import pymqueue
from pymqueue import AddMode, Overflow


def drain(q: pymqueue.Queue) -> list[tuple[bytes, bytes]]:
    return list(q)


def test_fifo_and_size_t08_t09() -> None:
    with fresh_queue(size=3) as q:
        sizes = []
        for i in range(1, 6):
            assert q.add(f"k{i}", f"v{i}") is True
            sizes.append(len(q))
        assert sizes == [1, 2, 3, 3, 3]
        assert [q.fetch() for _ in range(4)] == [
            (b"k3", b"v3"),
            (b"k4", b"v4"),
            (b"k5", b"v5"),
            None,
        ]
        st = q.stats()
        assert (st.added, st.fetched, st.dropped, st.items) == (5, 3, 2, 0)


def test_duplicates_allowed_in_append_mode_t16() -> None:
    with fresh_queue() as q:
        for k, v in [("a", "1"), ("b", "2"), ("a", "3")]:
            q.add(k, v)
        assert drain(q) == [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]


def test_addmode1_keeps_oldest_t17() -> None:
    with fresh_queue(addmode=1) as q:
        assert [q.add(k, v) for k, v in [("a", "1"), ("b", "2"), ("a", "3")]] == [True, True, False]
        assert len(q) == 2
        assert drain(q) == [(b"a", b"1"), (b"b", b"2")]
        assert q.stats().duplicates == 1


def test_addmode2_keeps_newest_at_tail_t18() -> None:
    with fresh_queue(addmode=AddMode.UNIQUE_KEEP_NEWEST) as q:
        for k, v in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4"), ("c", "5")]:
            q.add(k, v)
        assert len(q) == 3
        assert drain(q) == [(b"b", b"2"), (b"a", b"4"), (b"c", b"5")]
        st = q.stats()
        assert st.replaced == 2
        assert st.added == st.fetched + st.items + st.dropped + st.replaced


def test_addmode2_dedup_before_overflow_t19() -> None:
    with fresh_queue(size=2, addmode=2) as q:
        for k, v in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")]:
            q.add(k, v)
        assert drain(q) == [(b"a", b"3"), (b"c", b"4")]


def test_addmode1_key_free_again_after_drop_t20() -> None:
    with fresh_queue(size=2, addmode=1) as q:
        for k, v in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("a", "5")]:
            q.add(k, v)
        assert drain(q) == [(b"c", b"4"), (b"a", b"5")]


def test_keys_compare_byte_exactly_t21() -> None:
    # Kamailio stops comparing at NUL and would ignore a\0y; pymqueue keeps it.
    with fresh_queue(addmode=1) as q:
        assert q.add(b"a\0x", b"1")
        assert q.add(b"a\0y", b"2")
        assert q.add(b"a\0yz", b"3")
        assert not q.add(b"a\0y", b"4")
        assert [k for k, _ in drain(q)] == [b"a\0x", b"a\0y", b"a\0yz"]


def test_binary_and_empty_items_round_trip_t14_t22() -> None:
    with fresh_queue() as q:
        items = [
            (b"", b""),
            (b"", b"onlyval"),
            (b"k\0ey\xff", bytes(range(256))),
            ("ключ", "значение"),
        ]
        for k, v in items:
            q.add(k, v)
        assert drain(q) == [
            (b"", b""),
            (b"", b"onlyval"),
            (b"k\0ey\xff", bytes(range(256))),
            ("ключ".encode(), "значение".encode()),
        ]


def test_addmode2_many_replacements_reclaim_space() -> None:
    # Tombstones of replaced items are reclaimed; a hot key never fills the ring.
    with fresh_queue(addmode=2, capacity=8192) as q:
        for i in range(5000):
            q.add("hot", b"%d" % i)
        assert drain(q) == [(b"hot", b"4999")]


def test_byte_capacity_drops_oldest_and_wraps() -> None:
    with fresh_queue(capacity=4096) as q:
        for i in range(1000):
            q.add(b"k", b"%04d" % i + b"v" * 100)
        st = q.stats()
        assert st.dropped > 0
        assert st.added == st.fetched + st.items + st.dropped
        got = [int(v[:4]) for _, v in drain(q)]
        assert got == list(range(1000 - len(got), 1000))


def test_item_that_can_never_fit_fails_at_once() -> None:
    with fresh_queue(capacity=4096) as q:
        q.add("keep", "me")
        with pytest.raises(pymqueue.ItemTooLarge, match="capacity 4096") as exc:
            q.add("big", b"x" * 4096)
        assert isinstance(exc.value, ValueError)
        assert exc.value.queue == q.name
        with pytest.raises(pymqueue.ItemTooLarge):
            q.add_many([("ok", "1"), ("big", b"x" * 5000)])
        assert drain(q) == [(b"keep", b"me")]


def test_largest_item_fits_empty_ring_whatever_its_position() -> None:
    with fresh_queue(capacity=4096) as q:
        biggest = 4096 - 24 - 1
        for i in range(7):
            q.add(b"k", b"v" * (i * 97))
            q.fetch()
            q.add(b"", b"z" * biggest)
            assert q.fetch() == (b"", b"z" * biggest)


def test_reject_policy_raises_full() -> None:
    with fresh_queue(size=2, policy="reject") as q:
        q.add("a", "1")
        q.add("b", "2")
        with pytest.raises(pymqueue.Full) as exc:
            q.add("c", "3")
        assert isinstance(exc.value, stdqueue.Full)
        with pytest.raises(pymqueue.Full) as exc2:
            q.add_many([("x", "1")])
        assert exc2.value.done == 0  # type: ignore[attr-defined]
        assert q.stats().rejected == 2
        assert drain(q) == [(b"a", b"1"), (b"b", b"2")]


def test_block_policy_times_out_then_succeeds_when_room_appears() -> None:
    with fresh_queue(size=1, policy=Overflow.BLOCK) as q:
        q.add("a", "1")
        with pytest.raises(pymqueue.Full):
            q.add("b", "2", timeout=0.05)
        with pytest.raises(pymqueue.Full):
            q.put_nowait("x")
        done = threading.Event()

        def consumer() -> None:
            assert q.wait(readable=True, timeout=5)
            done.set()
            assert q.fetch() == (b"a", b"1")

        t = threading.Thread(target=consumer)
        t.start()
        assert q.add("b", "2", timeout=10) is True  # blocks until the consumer fetched
        t.join()
        assert done.is_set()
        assert q.fetch() == (b"b", b"2")


def test_blocking_get_wakes_on_put_from_another_thread() -> None:
    with fresh_queue() as q:
        started = threading.Event()

        def producer() -> None:
            started.wait()
            q.put({"n": 1})

        t = threading.Thread(target=producer)
        t.start()
        started.set()
        assert q.get(timeout=10) == {"n": 1}
        t.join()


def test_stdlib_vocabulary() -> None:
    with fresh_queue(size=3) as q:
        assert q.empty()
        assert not q.full()
        assert q.qsize() == 0
        q.put([1, 2])
        q.put_nowait("two")
        assert q.put_many([3.0]) == 1
        assert q.full()
        assert q.qsize() == 3
        assert q.get() == [1, 2]
        assert q.get_nowait() == "two"
        assert q.get_many(10) == [3.0]
        with pytest.raises(stdqueue.Empty):
            q.get_nowait()
        with pytest.raises(pymqueue.Empty):
            q.get(timeout=0.01)
        with pytest.raises(stdqueue.Empty):
            q.get_many(5, block=False)


def test_custom_serializer() -> None:
    class Upper:
        def dumps(self, obj: object) -> bytes:
            return str(obj).upper().encode()

        def loads(self, data: bytes) -> object:
            return data.decode()

    with fresh_queue(serializer=Upper()) as q:
        q.put("hello")
        assert q.get() == "HELLO"


def test_batches_keep_order_and_grow_buffers() -> None:
    with fresh_queue(capacity=32 * 1024 * 1024) as q:  # the items total 13.4 MB
        items = [(b"k%d" % i, bytes([i % 256]) * (i * 300)) for i in range(300)]
        assert q.add_many(items) == 300
        got = q.fetch_many(1000)
        assert got == items
        assert q.fetch_many(5) == []
        q.add("big", b"B" * 200_000)  # larger than the default fetch buffer
        assert q.fetch() == (b"big", b"B" * 200_000)


def test_attach_by_name_sees_the_same_queue_and_checks_settings() -> None:
    with fresh_queue(size=5, addmode=1) as q:
        other = pymqueue.Queue(q.name, create=False)
        assert (other.max_items, other.addmode) == (5, AddMode.UNIQUE_KEEP_OLDEST)
        q.add("a", "1")
        assert other.fetch() == (b"a", b"1")
        same = pymqueue.Queue(q.name, size=5)  # matching settings: fine
        assert not same.created
        with pytest.raises(pymqueue.ConfigError, match="size 7"):
            pymqueue.Queue(q.name, size=7)
        with pytest.raises(pymqueue.QueueExists) as exc:
            pymqueue.Queue(q.name, create=True)
        assert isinstance(exc.value, FileExistsError)
        other.close()
        same.close()


def test_missing_queue() -> None:
    with pytest.raises(pymqueue.QueueNotFound) as exc:
        pymqueue.Queue(unique_name("missing"), create=False)
    assert isinstance(exc.value, FileNotFoundError)
    assert "missing" in str(exc.value)


def test_any_bytes_name_and_listing() -> None:
    odd = b"q.x-y:z/1 \xff%" + unique_name().encode()
    q = pymqueue.Queue(odd, create=True)
    long_name = "L" * 250
    q2 = pymqueue.Queue(long_name, create=True)
    try:
        names = pymqueue.list_queues()
        assert odd.decode("utf-8", "surrogateescape") in names
        assert long_name in names
        assert pymqueue.Queue(odd, create=False).raw_name == odd
    finally:
        for x in (q, q2):
            x.unlink()
            x.close()
    assert pymqueue.unlink(long_name) is False


def test_close_and_unlink_are_idempotent_and_closed_handle_refuses() -> None:
    q = pymqueue.Queue(unique_name(), create=True)
    q.unlink()
    q.unlink()
    q.add("still", "works")  # like an unlinked file: the mapping stays valid
    assert q.fetch() == (b"still", b"works")
    q.close()
    q.close()
    assert q.closed
    with pytest.raises(pymqueue.QueueClosed):
        q.add("a", "b")
    assert "closed" in repr(q)


def test_context_manager_does_not_mask_errors() -> None:
    name = unique_name()
    with pytest.raises(KeyError), pymqueue.Queue(name, create=True) as q:
        raise KeyError("original")
    assert q.closed
    pymqueue.unlink(name)


def test_repr_shows_state_and_non_default_settings() -> None:
    with fresh_queue(size=10, policy="reject", addmode=2) as q:
        q.add("a", "b")
        r = repr(q)
        assert f"'{q.name}'" in r
        assert "items=1/10" in r
        assert "policy=reject" in r
        assert "addmode=2" in r


def test_pickles_by_name() -> None:
    with fresh_queue() as q:
        clone = pickle.loads(pickle.dumps(q))
        q.add("x", "y")
        assert clone.fetch() == (b"x", b"y")
        clone.close()


def test_bad_arguments() -> None:
    with pytest.raises(pymqueue.ConfigError):
        pymqueue.Queue("", create=True)
    with pytest.raises(pymqueue.ConfigError):
        pymqueue.Queue(unique_name(), policy="sometimes")
    with pytest.raises(pymqueue.ConfigError):
        pymqueue.Queue(unique_name(), addmode=7)
    with pytest.raises(pymqueue.ConfigError):
        pymqueue.Queue(unique_name(), capacity=100)
    with pytest.raises(pymqueue.ConfigError):
        pymqueue.Queue(unique_name(), namespace="bad.ns")
    with fresh_queue() as q:
        with pytest.raises(TypeError):
            q.add(1, "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            q.fetch(timeout=-1)


HERE = Path(__file__).resolve().parent


def _blocked_get(name: str) -> None:
    q = pymqueue.Queue(name, create=False)
    try:
        print("waiting", flush=True)
        q.get()  # timeout=None: waits forever
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(0)


def test_ctrl_c_interrupts_a_wait_forever() -> None:
    with fresh_queue() as q:
        code = (
            f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]; "
            "import test_queue as t; "
            f"t._blocked_get({q.name!r})"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        # Interrupt it only once it is blocked inside the engine's wait.
        deadline = time.monotonic() + 10
        while q.stats().getters_waiting == 0:
            assert time.monotonic() < deadline, "the child never started waiting"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert out.strip() == "interrupted"
