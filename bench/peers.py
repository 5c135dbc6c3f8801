"""The implementations under test, behind one small interface.

Each adapter is built in the parent (before the children are forked, so fork-only objects
such as ``multiprocessing.Queue`` and faster-fifo's ring are inherited) and offers:

* ``producer(n)`` / ``consumer(n)``: run in a child; send / receive ``n`` items, blocking
  on a full / empty queue with the implementation's ordinary blocking call;
* ``pairs(n)``: in one process, ``n`` times add one item then fetch it (W1);
* ``batch()``: add ``BATCH`` items in one call, then fetch them in as few calls as it takes
  (W4; only implementations with a batch API);
* ``child_init(role)`` (after fork: e.g. open a socket) and ``close()`` (in the parent: close
  and unlink whatever was created).

Peers carry the item as ONE message ``key + value`` (16 + value bytes) and do not split it
on receipt; pymqueue passes and returns key and value separately. That favours the peers
slightly. Hot loops bind methods to locals for every implementation alike.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import time
from pathlib import Path
from typing import Any, ClassVar

from pymqueue._pmq_c import ffi, lib

from pymqueue import AddMode, AsyncQueue, Overflow, Queue

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
try:
    import cloudtoid_interprocess
except ImportError:  # pragma: no cover - the bench extra installs it
    cloudtoid_interprocess = None

KEY = b"k" * 16
BATCH = 256
WAIT_SLICE_NS = 50_000_000  # the facade's wait slice (pymqueue.queue._engine.WAIT_SLICE)
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

    def child_init(self, role: str) -> None:
        """After fork, before the child reports ready; ``role``: producer or consumer."""

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
        self.q = Queue(
            unique("bench"), create=True, capacity=capacity, policy=policy, addmode=addmode
        )

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


class PyMQueueBatchValues(PyMQueue):
    """W4 with the batch object: ``add_many(items)``, then ``fetch_batch(256).values()``
    (one bytes object per item, the keys not copied out: like a peer's single receives,
    which return one message per item)."""

    name = "pymqueue fetch_batch().values()"

    def batch(self) -> None:
        items = self.options.get("items")
        if items is None:
            items = self.options["items"] = [(KEY, self.value)] * BATCH
        self.q.add_many(items)
        got = self.q.fetch_batch(BATCH).values()
        assert len(got) == BATCH


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
        lib.pmq_fetch_many(
            self.h, o["bigbuf"], len(self.msg) * BATCH, o["mlens"], BATCH, o["done"], 0
        )
        assert o["done"][0] == BATCH


class FloorBytes(Floor):
    """Diagnostic: the floor plus materialising key and value as bytes on fetch (the least
    any facade returning ``(bytes, bytes)`` must do): W1, and the consumer of W2 (its
    producer is the floor's)."""

    name = "floor + bytes out"

    def consumer(self, n: int) -> None:
        fetch = lib.pmq_fetch
        h, buf, cap, lens = self.h, self.buf, self.cap, self.lens
        view = ffi.buffer(buf)
        for _ in range(n):
            while fetch(h, buf, cap, lens, WAIT_SLICE_NS) != 0:
                pass
            a = lens[0]
            _item = (view[0:a], view[a : a + lens[1]])

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
            self.mq_name,
            posix_ipc.O_CREX,
            max_messages=self.depth,
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
        self.child_init("")

    def child_init(self, role: str) -> None:
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


class Cloudtoid(Impl):
    """cloudtoid-interprocess 3.0.2: a named byte ring in /dev/shm (16 MiB, like our default
    ring), with the adapter a user writes: it has no blocking send, so producers retry
    ``try_send`` with ``os.sched_yield()``; no batch receive, so the consumer takes one
    message per ``receive(None)`` (blocks for ever). W1: ``try_send`` + ``try_receive``; W4:
    ``try_send_batch`` (its best batch form, retried until all are in), then single
    ``try_receive`` calls. Endpoints are opened after fork (each child its own), in the
    parent only for W1/W4."""

    name = "cloudtoid-interprocess"
    has_batch = True
    PATH = "/dev/shm"

    def __init__(self, value_size: int, **options: Any) -> None:
        super().__init__(value_size, **options)
        self.qname = unique("pmqbench")
        self.ends: list[Any] = []
        self.pub: Any = None
        self.sub: Any = None

    def _open(self, pub: bool, sub: bool) -> None:
        ci = cloudtoid_interprocess
        if sub and self.sub is None:
            self.sub = ci.Subscriber(self.qname, DEFAULT_CAPACITY, path=self.PATH)
            self.ends.append(self.sub)
        if pub and self.pub is None:
            self.pub = ci.Publisher(self.qname, DEFAULT_CAPACITY, path=self.PATH)
            self.ends.append(self.pub)

    def child_init(self, role: str) -> None:
        self.ends = []
        self.pub = self.sub = None
        self._open(role == "producer", role == "consumer")

    def producer(self, n: int) -> None:
        send, m, yield_ = self.pub.try_send, self.msg, os.sched_yield
        for _ in range(n):
            while not send(m):
                yield_()
        self.close()

    def consumer(self, n: int) -> None:
        receive = self.sub.receive
        for _ in range(n):
            receive(None)
        self.close()

    def pairs(self, n: int) -> None:
        self._open(True, True)
        send, receive, m = self.pub.try_send, self.sub.try_receive, self.msg
        for _ in range(n):
            send(m)
            receive()

    def batch(self) -> None:
        self._open(True, True)
        items = self.options.get("items")
        if items is None:
            items = self.options["items"] = [self.msg] * BATCH
        sent = self.pub.try_send_batch(items)
        while sent < BATCH:
            sent += self.pub.try_send_batch(items[sent:])
        receive = self.sub.try_receive
        for _ in range(BATCH):
            if receive() is None:
                raise RuntimeError("cloudtoid lost an item")

    def close(self) -> None:
        for end in self.ends:
            end.close()
        self.ends = []
        self.pub = self.sub = None


IMPLS: dict[str, type[Impl]] = {
    "pymqueue": PyMQueue,
    "floor": Floor,
    "floor_bytes": FloorBytes,
    "pymqueue_batch": PyMQueueBatchValues,
    "mp_queue": MpQueue,
    "mp_simplequeue": MpSimpleQueue,
    "faster_fifo": FasterFifo,
    "faster_fifo_many": FasterFifoMany,
    "posix_ipc": PosixMQ,
    "redis": RedisList,
    "cloudtoid": Cloudtoid,
}


# ---- hand-off (ping-pong) ---------------------------------------------------------------
#
# Two channels, A->B and B->A. The initiator (the parent) times each round trip with
# ``time.perf_counter_ns()``: send one item on A->B, block until the echo arrives on B->A.
# The responder (a forked child) blocks on A->B with no timeout and sends what it got back
# on B->A. Both sides use the implementation's ordinary blocking receive with no timeout.


class Handoff:
    name: ClassVar[str] = "?"
    peer: ClassVar[bool] = True  # False: pymqueue's own rows, not a peer to compare with

    def __init__(self, value_size: int = 64) -> None:
        self.value = b"v" * value_size
        self.msg = KEY + self.value

    def child_init(self) -> None:
        """In the responder, after fork, before it reports ready."""

    def parent_init(self) -> None:
        """In the initiator, after the responder reported ready."""

    def ping(self, n: int) -> list[int]:
        """``n`` round trips; the duration of each in ns."""
        raise NotImplementedError

    def pong(self, n: int) -> None:
        """Echo ``n`` items."""
        raise NotImplementedError

    def child_close(self) -> None:
        pass

    def close(self) -> None:
        pass


class PyMQueueHandoff(Handoff):
    """Two queues (default policy and capacity): ``add(k, v)`` then ``fetch(timeout=None)``."""

    name = "pymqueue"
    peer = False

    def __init__(self, value_size: int = 64) -> None:
        super().__init__(value_size)
        self.q1 = Queue(unique("hand"), create=True)
        self.q2 = Queue(unique("hand"), create=True)

    def ping(self, n: int) -> list[int]:
        add, fetch, clock = self.q1.add, self.q2.fetch, time.perf_counter_ns
        k, v = KEY, self.value
        out: list[int] = []
        rec = out.append
        for _ in range(n):
            t0 = clock()
            add(k, v)
            fetch(None)
            rec(clock() - t0)
        return out

    def pong(self, n: int) -> None:
        add, fetch = self.q2.add, self.q1.fetch
        for _ in range(n):
            k, v = fetch(None)  # type: ignore[misc]
            add(k, v)

    def close(self) -> None:
        for q in (self.q1, self.q2):
            q.unlink()
            q.close()


class AsyncQueueHandoff(PyMQueueHandoff):
    """The responder awaits ``AsyncQueue.fetch()`` (no timeout) in an event loop; the
    initiator is the synchronous facade, as in the ``pymqueue`` row."""

    name = "pymqueue AsyncQueue"

    def pong(self, n: int) -> None:
        asyncio.run(self._apong(n))

    async def _apong(self, n: int) -> None:
        afetch = AsyncQueue(self.q1).fetch
        add = self.q2.add
        for _ in range(n):
            k, v = await afetch()  # type: ignore[misc]
            add(k, v)


class PosixMQHandoff(Handoff):
    """Two ``posix_ipc.MessageQueue`` (depth msg_max, message size = the item);
    ``send(m)`` / ``receive()`` (no timeout: blocks in the kernel)."""

    name = "posix_ipc"

    def __init__(self, value_size: int = 64) -> None:
        super().__init__(value_size)
        depth = mq_limit("msg_max", 10)
        self.mqs = [
            posix_ipc.MessageQueue(
                "/" + unique("pmqbench"),
                posix_ipc.O_CREX,
                max_messages=depth,
                max_message_size=len(self.msg),
            )
            for _ in range(2)
        ]

    def ping(self, n: int) -> list[int]:
        send, receive, clock = self.mqs[0].send, self.mqs[1].receive, time.perf_counter_ns
        m = self.msg
        out: list[int] = []
        rec = out.append
        for _ in range(n):
            t0 = clock()
            send(m)
            receive()
            rec(clock() - t0)
        return out

    def pong(self, n: int) -> None:
        send, receive = self.mqs[1].send, self.mqs[0].receive
        for _ in range(n):
            send(receive()[0])

    def close(self) -> None:
        for mq in self.mqs:
            mq.close()
            mq.unlink()


class CloudtoidHandoff(Handoff):
    """cloudtoid-interprocess 3.x: two named byte rings in /dev/shm (64 KiB each);
    ``Publisher.try_send(m)`` / ``Subscriber.receive(timeout=None)`` (waits for ever).
    Endpoints are opened after fork: the responder's first, then the initiator's."""

    name = "cloudtoid-interprocess"
    CAPACITY = 64 * 1024
    PATH = "/dev/shm"

    def __init__(self, value_size: int = 64) -> None:
        super().__init__(value_size)
        self.names = (unique("pmqbench"), unique("pmqbench"))
        self.ends: list[Any] = []

    def _open(self, send_on: str, receive_on: str) -> None:
        ci = cloudtoid_interprocess
        self.ends = [
            ci.Subscriber(receive_on, self.CAPACITY, path=self.PATH),
            ci.Publisher(send_on, self.CAPACITY, path=self.PATH),
        ]

    def child_init(self) -> None:
        self._open(self.names[1], self.names[0])

    def parent_init(self) -> None:
        self._open(self.names[0], self.names[1])

    def ping(self, n: int) -> list[int]:
        sub, pub = self.ends
        send, receive, clock = pub.try_send, sub.receive, time.perf_counter_ns
        m = self.msg
        out: list[int] = []
        rec = out.append
        for _ in range(n):
            t0 = clock()
            if not send(m):
                raise RuntimeError("cloudtoid ring full")
            receive(None)
            rec(clock() - t0)
        return out

    def pong(self, n: int) -> None:
        sub, pub = self.ends
        send, receive = pub.try_send, sub.receive
        for _ in range(n):
            if not send(receive(None)):
                raise RuntimeError("cloudtoid ring full")

    def child_close(self) -> None:
        self.close()

    def close(self) -> None:
        for end in self.ends:
            end.close()
        self.ends = []


class PipeHandoff(Handoff):
    """One duplex ``multiprocessing.Pipe`` (a socketpair): ``send_bytes`` / ``recv_bytes``."""

    name = "multiprocessing.Pipe"

    def __init__(self, value_size: int = 64) -> None:
        super().__init__(value_size)
        self.a, self.b = CTX.Pipe(duplex=True)

    def ping(self, n: int) -> list[int]:
        send, recv, clock = self.a.send_bytes, self.a.recv_bytes, time.perf_counter_ns
        m = self.msg
        out: list[int] = []
        rec = out.append
        for _ in range(n):
            t0 = clock()
            send(m)
            recv()
            rec(clock() - t0)
        return out

    def pong(self, n: int) -> None:
        send, recv = self.b.send_bytes, self.b.recv_bytes
        for _ in range(n):
            send(recv())

    def close(self) -> None:
        self.a.close()
        self.b.close()


class FasterFifoHandoff(Handoff):
    """Two ``faster_fifo.Queue`` (16 MiB): ``put(m)`` / ``get(True, 1e9)`` (pickled, the
    default; its longest timeout stands for "none")."""

    name = "faster-fifo"

    def __init__(self, value_size: int = 64) -> None:
        super().__init__(value_size)
        self.qs = [faster_fifo.Queue(max_size_bytes=DEFAULT_CAPACITY) for _ in range(2)]

    def ping(self, n: int) -> list[int]:
        put, get, clock = self.qs[0].put, self.qs[1].get, time.perf_counter_ns
        m = self.msg
        out: list[int] = []
        rec = out.append
        for _ in range(n):
            t0 = clock()
            put(m, True, 1e9)
            get(True, 1e9)
            rec(clock() - t0)
        return out

    def pong(self, n: int) -> None:
        put, get = self.qs[1].put, self.qs[0].get
        for _ in range(n):
            put(get(True, 1e9), True, 1e9)

    def close(self) -> None:
        for q in self.qs:
            q.close()


HANDOFFS: dict[str, type[Handoff]] = {
    "pymqueue": PyMQueueHandoff,
    "pymqueue_async": AsyncQueueHandoff,
    "posix_ipc": PosixMQHandoff,
    "cloudtoid": CloudtoidHandoff,
    "mp_pipe": PipeHandoff,
    "faster_fifo": FasterFifoHandoff,
}
