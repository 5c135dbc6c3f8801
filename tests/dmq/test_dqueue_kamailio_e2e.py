"""pymqueue and Kamailio 5.6.3 on the same queues, end to end, with the real service (issue 13).

K is a real Kamailio running ``docs/kamailio/dqueue-send.cfg`` and ``dqueue-receive.cfg`` as
documented (config: ``tests/kamailio_dqueue.py``); P is a ``pymqueue serve`` process (its own
shared-memory namespace, one ``dmq = "owner"`` queue ``jobs``, RPC for its stats) that joins
the bus through K; the test is P's producer or consumer through P's shared-memory queue.

* Kamailio → pymqueue: K's script (the send snippet) pushes items into P's queue over DMQ;
  a consumer on P gets each exactly once, in order (a re-sent message with the same ids adds
  nothing);
* pymqueue → Kamailio: P's queue with ``owner = K`` and ``batch_items = 100`` is forwarded by
  P's real forwarder to K, whose receive snippet ``mq_add``s the items: all in K's
  ``mqueue``, in order, none twice, the outbox back to 0;
* the 400 path against the real K: the receive snippet's ``DQ_MAX_ITEMS`` below what the
  forwarder packs (no ``batch_items``): the forwarder narrows its batches down and every item
  arrives;
* a poison item: an in-process pymqueue bus O as owner refuses (400) any message holding one
  given key: exactly that item is dropped (``refused == 1``), every other arrives in order.

Waits poll a condition with a deadline (``wait_for``); processes are stopped by PID.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmq_helpers import udp_port, uri
from dqueue_helpers import Node, nodes, wait_for
from fix_kamailio import Kamailio, KamailioFactory
from kamailio_dqueue import Item, dqueue_config, kam_fetch_all, kam_send, kuri, size

from pymqueue.dmq import BusThread, IncomingRequest, PeerReply
from pymqueue.dmq.mqueue_codec import (
    CONTENT_TYPE,
    Carries,
    Dedup,
    decode,
    encode_carries,
    encode_reply,
)
from pymqueue.dmq.mqueue_service import REFUSED_STREAK

pytestmark = pytest.mark.kamailio

DEADLINE = 60.0


def sees_active(statuses: list[dict[str, object]], port: int) -> bool:
    return any(str(n["port"]) == str(port) and n["status"] == "active" for n in statuses)


def joined(kam: Kamailio, node: Node) -> None:
    """Until K lists P active and P lists K active."""
    wait_for(lambda: kam.jsonrpc("dmq.list_nodes"), lambda s: sees_active(s, node.port),
             DEADLINE, "P active on K")  # fmt: skip
    wait_for(lambda: node.rpc("dmq.list_nodes"), lambda s: sees_active(s, kam.sip_port),
             DEADLINE, "K active on P")  # fmt: skip


def fetch_kam(kam: Kamailio, q: str, want: int) -> list[tuple[bytes, bytes]]:
    """Everything in K's queue ``q`` (``mq_fetch`` in K's SIP worker, 100 per request: K may
    run with the default max_while_loops) once ``mqueue.get_size`` shows ``want`` items."""
    wait_for(lambda: size(kam, q), lambda n: n >= want, DEADLINE, f"{want} items in K's {q}")
    out: list[tuple[bytes, bytes]] = []
    while True:
        part = kam_fetch_all(kam, q, limit=100)
        out += part
        if len(part) < 100:
            return out


def awkward(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` items whose keys number them; values of every kind the codec must carry."""
    kinds = [
        b"plain",
        b"nul\x00inside",  # UTF-8 with a NUL: base64 (5.6.3's jansson cannot read \u0000)
        b"\xff\xfe not utf-8",
        'q"uo"te \\ \u00e9 \U0001f600 \u4e2d\u6587'.encode(),
        b"ctl\t\n\r\x01\x1f\x7f",
        b"",
        b"\x00",
        b'{"json": [1]}',
    ]
    out = [(b"k%05d" % i, kinds[i % len(kinds)] + b"-%d" % i) for i in range(n)]
    out[3] = (b"", b"empty key")
    out[5] = (b"\x80key", b"\x00")
    return out


# -- Kamailio script -> pymqueue ------------------------------------------------------------


def test_kamailio_script_pushes_into_pymqueue(
    kamailio: KamailioFactory, tmp_path: Path, namespace: str
) -> None:
    kam = kamailio.start(dqueue_config())
    with nodes(tmp_path, namespace) as ns:
        p = ns.add("p", notify=kuri(kam), fr=2).start()
        joined(kam, p)
        first: list[Item] = [
            ("plain", "value", "1"),
            ('q"uo"te', 'say "hi" \\ back', "2"),
            ("h\u00e9 \u2603", "\U0001f600 \u00fc\u00df \u4e2d\u6587", "3"),
            ("ctl\t", "line1\nline2\r\n\x01\x1f", "4"),
            ("", "", "5"),
            (b"\xff\xfe", b"not utf-8 \x80", "6"),
            (b"text", b"nul\x00inside", "7"),
            ("no-id", "x", None),
        ]
        # 3 messages of 100 more, ids "m<msg>-<i>"
        more: list[list[Item]] = [
            [(f"m{m}-{i}", f"v{m}-{i}", f"m{m}-{i}") for i in range(100)] for m in range(3)
        ]
        for batch in [first, *more]:
            reply = kam_send(kam, p.uri, "jobs", batch)
            assert (reply.status, reply.header("X-Count")) == (200, str(len(batch))), reply
        # sent again (as a script re-sends after a doubt): only the new items are added
        again: list[Item] = [*first[:7], ("new", "after", "8"), ("no-id", "x", None)]
        assert kam_send(kam, p.uri, "jobs", again).status == 200

        def b(x: str | bytes) -> bytes:
            return x if isinstance(x, bytes) else x.encode()

        expected = [(b(k), b(v)) for k, v, _ in first]
        expected += [(b(k), b(v)) for batch in more for k, v, _ in batch]
        expected += [(b"new", b"after"), (b"no-id", b"x")]
        total = len(first) + 300 + len(again)
        s = wait_for(p.stats, lambda s: s["received"] >= total, DEADLINE, "all received on P")
        assert (s["applied"], s["duplicates"]) == (len(expected), 7)
        assert s["is_owner"] == 1  # K never announces: P owns its queue
        got = p.queue.fetch_many(10_000)
        assert [(r[0], r[1]) for r in got] == expected  # each once, in order
        assert p.queue.size() == 0


def test_a_kamailio_script_feeds_a_mirror_queue_on_every_pymqueue_node(
    kamailio: KamailioFactory, tmp_path: Path, namespace: str
) -> None:
    kam = kamailio.start(dqueue_config())
    with nodes(tmp_path, namespace) as ns:
        p = ns.add("p", notify=kuri(kam), fr=2, mode="mirror").start()
        r = ns.add("r", notify=kuri(kam), fr=2, mode="mirror").start()
        joined(kam, p)
        joined(kam, r)
        wait_for(p.stats, lambda s: s["carriers"] == 1, DEADLINE, "P knows R carries it")
        sent: list[Item] = [(f"k{i}", f"v{i}", f"id{i}") for i in range(50)]
        assert kam_send(kam, p.uri, "jobs", sent).status == 200
        want = [(k.encode(), v.encode()) for k, v, _ in sent]
        got_p: list[tuple[bytes, bytes]] = []
        got_r: list[tuple[bytes, bytes]] = []
        wait_for(lambda: got_r.extend(r.queue.fetch_many(100)) or len(got_r), lambda n: n >= 50,
                 DEADLINE, "R has the script's items")  # fmt: skip
        wait_for(lambda: got_p.extend(p.queue.fetch_many(100)) or len(got_p), lambda n: n >= 50,
                 DEADLINE, "P has them, released")  # fmt: skip
        assert got_p == want  # on the node the script sent them to
        assert got_r == want  # and mirrored to the other, once, in order
        assert p.stats()["acknowledged"] == 50


# -- pymqueue -> Kamailio ------------------------------------------------------------------


@pytest.fixture
def kam_owner(kamailio: KamailioFactory) -> Kamailio:
    return kamailio.start(dqueue_config())


def forward_to(kam: Kamailio, p: Node, items: list[tuple[bytes, bytes]], before: int = 0
               ) -> dict[str, object]:  # fmt: skip
    """``items`` added to P's outbox, forwarded by P to K: K's queue holds them all, in order,
    once; P's outbox is back to 0 (``before``: items P had forwarded already). P's stats."""
    joined(kam, p)
    wait_for(p.stats, lambda s: s["owner"] == kuri(kam), DEADLINE, "K is P's owner")
    p.queue.add_many(items)
    assert fetch_kam(kam, "jobs", len(items)) == items
    total = before + len(items)
    s = wait_for(p.stats, lambda s: s["acknowledged"] >= total, DEADLINE, "all acknowledged")
    assert s["outbox"] == 0
    assert s["acknowledged"] == total
    assert (s["refused"], s["too_large"]) == (0, 0)
    assert size(kam, "jobs") == 0  # nothing came twice after the fetch either
    return s  # type: ignore[no-any-return]


def test_pymqueue_forwards_to_kamailio(kam_owner: Kamailio, tmp_path: Path, namespace: str) -> None:
    kam = kam_owner
    n = 3000
    with nodes(tmp_path, namespace) as ns:
        p = ns.add("p", notify=kuri(kam), owner=kuri(kam), batch_items=100, fr=2).start()
        s = forward_to(kam, p, awkward(n))
        assert s["batches"] >= n // 100  # never more than 100 items per message
        assert s["is_owner"] == 0
        # a second stream after the first: the forwarder woke up again
        forward_to(kam, p, [(b"again", b"%d" % i) for i in range(250)], before=n)


@pytest.mark.parametrize(
    ("limit", "reason"),
    [("max_items", "too many items"), ("max_while_loops", "more items than max_while_loops")],
)
def test_kamailio_400_narrows_the_batch(
    kamailio: KamailioFactory, tmp_path: Path, namespace: str, limit: str, reason: str
) -> None:
    """K takes at most 150 items per message (DQ_MAX_ITEMS), or 100 (Kamailio's default
    max_while_loops); P packs ~1 300 of these without batch_items: K answers 400, P halves its
    batch until K takes it, nothing is lost or dropped."""
    if limit == "max_items":
        kam = kamailio.start(dqueue_config(max_items=150))
    else:
        kam = kamailio.start(dqueue_config(max_while_loops=None))
    n = 2000
    with nodes(tmp_path, namespace) as ns:
        p = ns.add("p", notify=kuri(kam), owner=kuri(kam), fr=5).start()
        s = forward_to(kam, p, [(b"k%05d" % i, b"v%05d" % i) for i in range(n)])
        assert s["last_error"] == f"{kuri(kam)} answered 400 Malformed body: {reason}"
        assert s["forwarded"] > n  # the refused batches were sent too


# -- a poison item ---------------------------------------------------------------------------


class PickyOwner:
    """An in-process pymqueue bus O acting as owner of ``jobs``: it applies what arrives
    (de-duplicated as the service does) but answers 400 to any message holding ``poison``
    (None: to every message)."""

    def __init__(self, poison: bytes | None) -> None:
        self.poison = poison
        self.lock = threading.Lock()
        self.items: list[tuple[bytes, bytes]] = []
        self.log: list[int] = []  # per message: items applied, or -items for a 400
        self.dedup = Dedup()
        self.bus = BusThread(uri(udp_port()), None, ping_interval=5.0, fr_timer=2.0)
        self.bus.register("mqueue", self.handle)

    def handle(self, req: IncomingRequest) -> PeerReply:
        msg = decode(req.body)
        if isinstance(msg, Carries):
            return PeerReply(200, "OK", encode_carries([]), CONTENT_TYPE)
        with self.lock:
            if self.poison is None or any(it.key == self.poison for it in msg.items):
                self.log.append(-len(msg.items))
                return PeerReply(400, "Bad Request - poison")
            fresh = self.dedup.fresh(msg, str(req.node))
            self.dedup.applied(msg, str(req.node), fresh)
            self.items += [(it.key, it.value) for it in fresh]
            self.log.append(len(msg.items))
        dups = len(msg.items) - len(fresh)
        return PeerReply(200, "OK", encode_reply(len(fresh), dups), CONTENT_TYPE)

    def count(self) -> int:
        with self.lock:
            return len(self.items)


@pytest.fixture
def picky(request: pytest.FixtureRequest) -> Iterator[PickyOwner]:
    owner = PickyOwner(request.param)
    with owner.bus:
        yield owner


N_POISON = 1000


@pytest.mark.parametrize("picky", [b"k00000", b"k00537", b"k%05d" % (N_POISON - 1)],
                         indirect=True, ids=["first", "middle", "last"])  # fmt: skip
def test_poison_item_dropped_alone(picky: PickyOwner, tmp_path: Path, namespace: str) -> None:
    o = str(picky.bus.local)
    items = [(b"k%05d" % i, b"v%d" % i) for i in range(N_POISON)]
    with nodes(tmp_path, namespace) as ns:
        p = ns.add("p", notify=o, owner=o).start()
        wait_for(p.stats, lambda s: s["owner"] == o, DEADLINE, "O is P's owner")
        p.queue.add_many(items)
        want = [it for it in items if it[0] != picky.poison]
        wait_for(picky.count, lambda c: c >= len(want), DEADLINE, "every other item on O")
        s = wait_for(p.stats, lambda s: s["outbox"] == 0, DEADLINE, "P's outbox empty")
        with picky.lock:
            assert picky.items == want  # in order, once, without the poison
            log = list(picky.log)
        assert s["refused"] == 1
        assert s["acknowledged"] == len(want)
        assert s["last_error"] == f"{o} answered 400 Bad Request - poison"
        # narrowed down to the poison alone, refused, then back to full size
        alone = log.index(-1)
        if picky.poison != items[-1][0]:
            assert log[alone + 1] > 1
        assert -1 not in log[alone + 1 :]


@pytest.mark.parametrize("picky", [None], indirect=True, ids=["refuses-everything"])
def test_an_owner_refusing_everything_does_not_empty_the_outbox(
    picky: PickyOwner, tmp_path: Path, namespace: str
) -> None:
    o = str(picky.bus.local)
    with nodes(tmp_path, namespace) as ns:
        p = ns.add("p", notify=o, owner=o).start()
        wait_for(p.stats, lambda s: s["owner"] == o, DEADLINE, "O is P's owner")
        p.queue.add_many([(b"k%02d" % i, b"v") for i in range(50)])

        def singles() -> int:
            with picky.lock:
                return picky.log.count(-1)

        # the streak of items dropped alone, then the same item again and again
        wait_for(singles, lambda c: c >= REFUSED_STREAK + 2, DEADLINE, "retries after the streak")
        s = p.stats()
        assert s["refused"] == REFUSED_STREAK
        assert s["outbox"] == 50 - REFUSED_STREAK
        assert picky.count() == 0
