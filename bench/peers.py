"""The implementations under test, behind one small interface.

Each adapter is built in the parent (before the children are forked, so fork-only objects
such as ``multiprocessing.Queue`` and faster-fifo's ring are inherited) and offers:

* ``producer(n)`` / ``consumer(n)``: run in a child; send / receive ``n`` items, blocking
  on a full / empty queue with the implementation's ordinary blocking call;
* ``pairs(n)``: in one process, ``n`` times add one item then fetch it (W1);
* ``batch()``: add ``BATCH`` items in one call, then fetch them in as few calls as it takes
  (W4; only implementations with a batch API);
* ``child_init()`` (after fork: e.g. open a socket) and ``close()`` (in the parent: close
  and unlink whatever was created).

Peers carry the item as ONE message ``key + value`` (16 + value bytes) and do not split it
on receipt; pymqueue passes and returns key and value separately. That favours the peers
slightly. Hot loops bind methods to locals for every implementation alike.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
from pathlib import Path
from typing import Any, ClassVar

from pymqueue._pmq_c import ffi, lib

from pymqueue import AddMode, Overflow, Queue

try:
    import faster_fifo
except ImportError:  # pragma: no cover - the bench extra installs it
    faster_fifo = None
try:
    import posix_ipc
except ImportError:  # pragma: no cover
    posix_ipc = None
try:
    import redis
except ImportError:  # pragma: no cover
    redis = None

KEY = b"k" * 16
BATCH = 256
WAIT_SLICE_NS = 50_000_000  # the facade's wait slice (pymqueue._queue.WAIT_SLICE)
CTX = multiprocessing.get_context("fork")
DEFAULT_CAPACITY = 16 * 1024 * 1024  # pymqueue's default ring, and faster-fifo's here


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}{secrets.token_hex(4)}"


def mq_limit(name: str, default: int) -> int:
    try:
        return int(Path(f"/proc/sys/fs/mqueue/{name}").read_text())
    except (OSError, ValueError):
        return default


class Impl:
    name: ClassVar[str] = "?"
    has_batch: ClassVar[bool] = False
    slow: ClassVar[bool] = False  # gets fewer items in multi-process workloads

    def __init__(self, value_size: int, **options: Any) -> None:
        self.value = b"v" * value_size
        self.msg = KEY + self.value
        self.options = options
        self.label: str | None = None

    def child_init(self) -> None:
        pass

    def producer(self, n: int) -> None:
        raise NotImplementedError

    def consumer(self, n: int) -> None:
        raise NotImplementedError

    def pairs(self, n: int) -> None:
        raise NotImplementedError

    def batch(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---- pymqueue ---------------------------------------------------------------------------


class PyMQueue(Impl):
    """The facade, as a user writes it: ``q.add(k, v)``, ``q.fetch(timeout=None)``."""

    name = "pymqueue"
    has_batch = True

    def __init__(
        self,
        value_size: int,
        policy: Overflow = Overflow.DROP_OLDEST,
        capacity: int = DEFAULT_CAPACITY,
        addmode: AddMode = AddMode.APPEND,
        **options: Any,
    ) -> None:
        super().__init__(value_size, **options)
        self.q = Queue(unique("bench"), create=True, capacity=capacity, policy=policy,
                       addmode=addmode)

    def producer(self, n: int) -> None:
        add = self.q.add
        k, v = KEY, self.value
        for _ in range(n):
            add(k, v)

    def consumer(self, n: int) -> None:
        fetch = self.q.fetch
        for _ in range(n):
            fetch(None)

    def pairs(self, n: int) -> None:
        add = self.q.add
        fetch = self.q.fetch
        k, v = KEY, self.value
        for _ in range(n):
            add(k, v)
            fetch()

    def batch(self) -> None:
        items = self.options.get("items")
        if items is None:
            items = self.options["items"] = [(KEY, self.value)] * BATCH
        self.q.add_many(items)
        got = self.q.fetch_many(BATCH)
        assert len(got) == BATCH

    def close(self) -> None:
        self.q.unlink()
        self.q.close()


class Floor(PyMQueue):
    """The floor probe: the thinnest cffi calls of the C functions on the same queue, with
    preallocated buffers, no facade (no bytes materialised on fetch)."""

    name = "floor (raw cffi)"

    def __init__(self, value_size: int, **options: Any) -> None:
        super().__init__(value_size, **options)
        self.h = self.q._handle  # the cdata handle
        self.cap = 64 * 1024
        self.buf = ffi.new("uint8_t[]", self.cap)
        self.lens = ffi.new("uint32_t[2]")

    def producer(self, n: int) -> None:
        add = lib.pmq_add
        h, k, v = self.h, KEY, self.value
        kl, vl = len(k), len(v)
        full = lib.PMQ_E_FULL
        for _ in range(n):
            while add(h, k, kl, v, vl, WAIT_SLICE_NS) == full:
                pass

    def consumer(self, n: int) -> None:
        fetch = lib.pmq_fetch
        h, buf, cap, lens = self.h, self.buf, self.cap, self.lens
        for _ in range(n):
            while fetch(h, buf, cap, lens, WAIT_SLICE_NS) != 0:
                pass

    def pairs(self, n: int) -> None:
        add = lib.pmq_add
        fetch = lib.pmq_fetch
        h, k, v, buf, cap, lens = self.h, KEY, self.value, self.buf, self.cap, self.lens
        kl, vl = len(k), len(v)
        for _ in range(n):
            add(h, k, kl, v, vl, 0)
            fetch(h, buf, cap, lens, 0)

    def batch(self) -> None:
        if "clens" not in self.options:
            self.options["clens"] = ffi.new("uint32_t[]", [len(KEY), len(self.value)] * BATCH)
            self.options["data"] = self.msg * BATCH
            self.options["mlens"] = ffi.new("uint32_t[]", 2 * BATCH)
            self.options["done"] = ffi.new("size_t *")
            self.options["bigbuf"] = ffi.new("uint8_t[]", len(self.msg) * BATCH)
        o = self.options
        lib.pmq_add_many(self.h, o["clens"], o["data"], BATCH, o["done"], 0)
        lib.pmq_fetch_many(self.h, o["bigbuf"], len(self.msg) * BATCH, o["mlens"], BATCH,
                           o["done"], 0)
        assert o["done"][0] == BATCH


class FloorBytes(Floor):
    """Diagnostic: the floor plus materialising key and value as bytes on fetch (the least
    any facade returning ``(bytes, bytes)`` must do)."""

    name = "floor + bytes out"

    def pairs(self, n: int) -> None:
        add = lib.pmq_add
        fetch = lib.pmq_fetch
        h, k, v, buf, cap, lens = self.h, KEY, self.value, self.buf, self.cap, self.lens
        view = ffi.buffer(buf)
        kl, vl = len(k), len(v)
        for _ in range(n):
            add(h, k, kl, v, vl, 0)
            fetch(h, buf, cap, lens, 0)
            a = lens[0]
            _item = (view[0:a], view[a : a + lens[1]])


# ---- peers ------------------------------------------------------------------------------


class MpQueue(Impl):
    name = "multiprocessing.Queue"

    def __init__(self, value_size: int, **options: Any) -> None:
        super().__init__(value_size, **options)
        self.q = CTX.Queue()

    def producer(self, n: int) -> None:
        put, m = self.q.put, self.msg
        for _ in range(n):
            put(m)
        self.q.close()
        self.q.join_thread()  # flush the feeder thread before the child exits

    def consumer(self, n: int) -> None:
        get = self.q.get
        for _ in range(n):
            get()

    def pairs(self, n: int) -> None:
        put, get, m = self.q.put, self.q.get, self.msg
        for _ in range(n):
            put(m)
            get()

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()


class MpSimpleQueue(Impl):
    name = "multiprocessing.SimpleQueue"

    def __init__(self, value_size: int, **options: Any) -> None:
        super().__init__(value_size, **options)
        self.q = CTX.SimpleQueue()

    def producer(self, n: int) -> None:
        put, m = self.q.put, self.msg
        for _ in range(n):
            put(m)

    def consumer(self, n: int) -> None:
        get = self.q.get
        for _ in range(n):
            get()

    def pairs(self, n: int) -> None:
        put, get, m = self.q.put, self.q.get, self.msg
        for _ in range(n):
            put(m)
            get()

    def close(self) -> None:
        self.q.close()


class FasterFifo(Impl):
    """faster_fifo.Queue, put/get one message at a time (pickled, its default)."""

    name = "faster-fifo"
    has_batch = True

    def __init__(self, value_size: int, **options: Any) -> None:
        super().__init__(value_size, **options)
        self.q = faster_fifo.Queue(max_size_bytes=DEFAULT_CAPACITY)

    def producer(self, n: int) -> None:
        put, m = self.q.put, self.msg
        for _ in range(n):
            put(m, True, 1e9)

    def consumer(self, n: int) -> None:
        get = self.q.get
        for _ in range(n):
            get(True, 1e9)

    def pairs(self, n: int) -> None:
        put, get, m = self.q.put, self.q.get, self.msg
        for _ in range(n):
            put(m)
            get()

    def batch(self) -> None:
        items = self.options.get("items")
        if items is None:
            items = self.options["items"] = [self.msg] * BATCH
        self.q.put_many(items)
        got = 0
        while got < BATCH:
            got += len(self.q.get_many(max_messages_to_get=BATCH - got))

    def close(self) -> None:
        self.q.close()


class FasterFifoMany(FasterFifo):
    """faster-fifo with its batch calls: the consumer drains with get_many (producers put
    one at a time, as producers of single events do); W4 uses put_many/get_many."""

    name = "faster-fifo get_many"

    def consumer(self, n: int) -> None:
        get_many = self.q.get_many
        got = 0
        while got < n:
            got += len(get_many(True, 1e9, BATCH))


class PosixMQ(Impl):
    """posix_ipc.MessageQueue: depth = /proc/sys/fs/mqueue/msg_max (the most this host
    allows without privilege), message size = key + value exactly."""

    name = "posix_ipc"

    def __init__(self, value_size: int, **options: Any) -> None:
        super().__init__(value_size, **options)
        self.depth = mq_limit("msg_max", 10)
        self.mq_name = "/" + unique("pmqbench")
        self.mq = posix_ipc.MessageQueue(
            self.mq_name, posix_ipc.O_CREX, max_messages=self.depth,
            max_message_size=len(self.msg),
        )

    def producer(self, n: int) -> None:
        send, m = self.mq.send, self.msg
        for _ in range(n):
            send(m)

    def consumer(self, n: int) -> None:
        receive = self.mq.receive
        for _ in range(n):
            receive()

    def pairs(self, n: int) -> None:
        send, receive, m = self.mq.send, self.mq.receive, self.msg
        for _ in range(n):
            send(m)
            receive()

    def close(self) -> None:
        self.mq.close()
        self.mq.unlink()


class RedisList(Impl):
    """A Redis list on a private server's Unix socket: RPUSH / BLPOP (LPOP in one process),
    RPUSH of many values / LPOP with a count for batches."""

    name = "redis list"
    has_batch = True
    slow = True

    def __init__(self, value_size: int, socket_path: str = "", **options: Any) -> None:
        super().__init__(value_size, **options)
        self.sock = socket_path
        self.key = unique("bench")
        self.r: Any = None
        self.child_init()

    def child_init(self) -> None:
        self.r = redis.Redis(unix_socket_path=self.sock)

    def producer(self, n: int) -> None:
        rpush, key, m = self.r.rpush, self.key, self.msg
        for _ in range(n):
            rpush(key, m)

    def consumer(self, n: int) -> None:
        blpop, key = self.r.blpop, self.key
        for _ in range(n):
            blpop(key)

    def pairs(self, n: int) -> None:
        rpush, lpop, key, m = self.r.rpush, self.r.lpop, self.key, self.msg
        for _ in range(n):
            rpush(key, m)
            lpop(key)

    def batch(self) -> None:
        items = self.options.get("items")
        if items is None:
            items = self.options["items"] = [self.msg] * BATCH
        self.r.rpush(self.key, *items)
        got = self.r.lpop(self.key, BATCH)
        assert len(got) == BATCH

    def close(self) -> None:
        self.r.delete(self.key)
        self.r.close()


IMPLS: dict[str, type[Impl]] = {
    "pymqueue": PyMQueue,
    "floor": Floor,
    "floor_bytes": FloorBytes,
    "mp_queue": MpQueue,
    "mp_simplequeue": MpSimpleQueue,
    "faster_fifo": FasterFifo,
    "faster_fifo_many": FasterFifoMany,
    "posix_ipc": PosixMQ,
    "redis": RedisList,
}
