"""``dmq = "mirror"`` (fan-out): every add on any node is added on every node carrying the
queue, with the same ids and de-duplication as owner mode.

* three ``pymqueue serve`` nodes, producers and a consumer on each: every consumer sees every
  item exactly once, in per-origin order; stats over RPC (mode, deliveries, outbox back to 0);
* a consumer asleep in a blocking fetch is woken by a mirrored item, and by its own node's
  add — only once both peers have it;
* one node killed with SIGKILL mid-stream: the survivors keep mirroring each other, the dead
  node's deliveries are given up (``missed``) or it is no target; what it held stays held in
  its segment and reaches the survivors, once each, when it is restarted on that segment;
* a lossy link (in-process buses behind :class:`~dqueue_helpers.LossyProxy`): every node sees
  every item once, in per-origin order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dmq_helpers import udp_port, uri
from dqueue_helpers import (
    IP,
    LossyProxy,
    Node,
    Nodes,
    all_active,
    drain,
    lossy_proxy,
    nodes,
    per_origin,
    produce,
    stop_in_process,
    wait_for,
)

from pymqueue import Queue
from pymqueue.dmq import BusThread
from pymqueue.dmq.mqueue_service import DqueueSpec, MqueueService
from pymqueue.instance import Instance

N = 3_000


def start_three(ns: Nodes, **kw: Any) -> list[Node]:
    a = ns.add("a", mode="mirror", **kw)
    b = ns.add("b", notify=a.uri, mode="mirror", **kw)
    c = ns.add("c", notify=a.uri, mode="mirror", **kw)
    for n in (a, b, c):
        n.start()
    return [a, b, c]


def wait_carriers(live: list[Node]) -> None:
    """Until every node of ``live`` knows every other one carries the queue (its targets)."""
    want = [len(live) - 1] * len(live)
    wait_for(lambda: [n.stats()["carriers"] for n in live], lambda c: c == want, 30,
             "carriers known")  # fmt: skip


def take(node: Node, into: list[tuple[str, int]], count: int, what: str, *,
         tag: str | None = None, timeout: float = 60) -> None:  # fmt: skip
    """Consume from ``node`` into ``into`` until it holds ``count`` items (of origin ``tag``
    if given); AssertionError after ``timeout`` (the message shows the count only)."""

    def probe() -> int:
        drain(node, into)
        return sum(1 for t, _ in into if tag is None or t == tag)

    wait_for(probe, lambda k: k >= count, timeout, what)


def test_every_node_sees_every_item_once_in_order(tmp_path: Path, namespace: str) -> None:
    with nodes(tmp_path, namespace) as ns:
        three = start_three(ns, fr=5)
        all_active(three)
        wait_carriers(three)
        got: dict[str, list[tuple[str, int]]] = {n.name: [] for n in three}
        chunk = 250
        for start in range(0, N, chunk):  # producers on all three, a consumer on each
            for n in three:
                produce(n, n.name, start, chunk)
            for n in three:
                drain(n, got[n.name])
        for n in three:
            take(n, got[n.name], 3 * N, f"every item on {n.name}")
        for n in three:
            assert len(got[n.name]) == 3 * N
            assert per_origin(got[n.name]) == {m.name: list(range(N)) for m in three}
        for n in three:
            # the outbox (held adds) empties once both peers answered the last batch
            s = wait_for(n.stats, lambda st: st["outbox"] == 0, 30, f"{n.name} outbox empty")
            assert s["mode"] == "mirror"
            assert (s["owner"], s["is_owner"]) == ("", 0)
            assert s["carriers"] == 2
            assert s["acknowledged"] == 2 * N  # one delivery per peer and item
            assert s["forwarded"] >= 2 * N  # more if a batch was sent again
            assert s["missed"] == 0
            assert s["applied"] == 2 * N
            assert s["received"] == 2 * N + s["duplicates"]
            assert n.queue.stats().held == 0
            assert n.queue.size() == 0  # nothing came twice meanwhile
        metrics = three[0].get("/metrics")
        assert f'pymqueue_dqueue_acknowledged_total{{queue="jobs"}} {float(2 * N)}' in metrics
        assert 'pymqueue_dqueue_missed_total{queue="jobs"} 0.0' in metrics
        assert 'pymqueue_dqueue_carriers{queue="jobs"} 2.0' in metrics
        assert 'pymqueue_dqueue_outbox_items{queue="jobs"} 0.0' in metrics
        assert "pymqueue_dqueue_owner{" not in metrics  # a mirror has no owner


def test_blocking_fetch_woken_by_mirrored_and_own_adds(tmp_path: Path, namespace: str) -> None:
    with nodes(tmp_path, namespace) as ns:
        a, b, c = three = start_three(ns, fr=5)
        all_active(three)
        wait_carriers(three)
        got: list[tuple[bytes, bytes] | None] = []

        def consumer() -> None:  # one blocking fetch on a's queue at a time
            q = Queue("jobs", namespace=a.namespace, create=False)
            try:
                for _ in range(2):
                    got.append(q.fetch(timeout=60))
            finally:
                q.close()

        t = threading.Thread(target=consumer)
        t.start()
        try:
            asleep = lambda: a.queue.stats().getters_waiting  # noqa: E731
            wait_for(asleep, lambda w: w == 1, 30, "the consumer asleep")
            b.queue.add(b"from-b", b"1")  # mirrored to a: wakes the consumer there
            wait_for(lambda: len(got), lambda k: k == 1, 30, "woken by b's item")
            assert got[0] == (b"from-b", b"1")
            wait_for(asleep, lambda w: w == 1, 30, "the consumer asleep again")
            a.queue.add(b"from-a", b"2")  # held on a until b and c answered
            wait_for(lambda: len(got), lambda k: k == 2, 30, "woken by a's own item")
            assert got[1] == (b"from-a", b"2")
            # released on a only after both peers applied it: they have it now, no waiting
            assert b.stats()["applied"] == 1
            assert c.stats()["applied"] == 2
        finally:
            t.join(70)
        assert not t.is_alive()
        assert c.queue.fetch_many(10) == [(b"from-b", b"1"), (b"from-a", b"2")]
        assert b.queue.fetch_many(10) == [(b"from-b", b"1"), (b"from-a", b"2")]


def test_node_killed_mid_stream(tmp_path: Path, namespace: str) -> None:
    with nodes(tmp_path, namespace) as ns:
        a, b, c = three = start_three(ns, fr=1, ping=5)
        all_active(three)
        wait_carriers(three)
        got: dict[str, list[tuple[str, int]]] = {n.name: [] for n in three}
        k = 1_000
        for n in three:  # phase 1: everybody has everything
            produce(n, n.name, 0, k)
        for n in three:
            take(n, got[n.name], 3 * k, f"phase 1 on {n.name}")
        for n in three:
            wait_for(n.stats, lambda st: st["outbox"] == 0, 30, f"{n.name} outbox empty")
        # phase 2: c adds and is killed at once (SIGKILL), its adds held or in flight; a
        # producer on c's host goes on adding to its segment; the survivors go on adding
        produce(c, "c", k, k)
        c.kill()
        produce(c, "c", 2 * k, k)  # no forwarder: held for sure
        c.close_queue()
        total_c = 3 * k
        m = 1_000
        survivors = [a, b]
        for start in range(k, k + m, 100):
            for n in survivors:
                produce(n, n.name, start, 100)
        for n in survivors:
            other = other_of(n, survivors).name
            take(n, got[n.name], k + m, f"the other survivor's items on {n.name}", tag=other)
        for n in survivors:
            s = wait_for(n.stats, lambda st: st["outbox"] == 0, 60, f"{n.name} outbox empty")
            drain(n, got[n.name])
            # phase 1: 2 k deliveries; phase 2: m to the other survivor and none to c, whose
            # deliveries were given up (missed) or not tried (c down: no target)
            assert s["acknowledged"] == 2 * k + m
            assert s["missed"] <= m
            mine = per_origin(got[n.name])
            assert mine[n.name] == list(range(k + m))
            assert mine[other_of(n, survivors).name] == list(range(k + m))
            # c's items: a prefix (what c mirrored before it died), in order, once each
            assert mine["c"] == list(range(len(mine["c"])))
            assert k <= len(mine["c"]) <= 2 * k
            print(
                f"{n.name}: missed {s['missed']}, resent {s['resent']}, "
                f"c's items before its death {len(mine['c'])}, last error {s['last_error']!r}"
            )
        wait_for(lambda: [n.stats()["carriers"] for n in survivors], lambda x: x == [1, 1], 30,
                 "c down on both survivors")  # fmt: skip
        # what c held when it died is still held in its segment: counted, peekable, not
        # fetchable; the released part before it (mirrored, not consumed) is fetchable
        seg = Queue("jobs", namespace=c.namespace, create=False)
        try:
            st = seg.stats()
            held = [int(r.value) for r in seg.peek_records(total_c, held_only=True)]
            sent = min(len(per_origin(got[n.name])["c"]) for n in survivors)
            assert st.hold == 1
            assert st.held == len(held) >= k
            assert held == list(range(total_c - len(held), total_c))  # a suffix of c's adds
            # released only once both survivors had it: what is not held, each has; the
            # batch in flight at the kill may be on a survivor and held here (sent again
            # at the restart, dropped there as a duplicate)
            assert sent >= total_c - len(held)
            assert st.items == total_c - k  # c's phase-2 adds: released or held
        finally:
            seg.close()
        # c restarts on the same segment (reattached by the new instance): its new service
        # holds again and mirrors what was held; the survivors drop what they already had
        c.start()
        all_active(three)
        wait_carriers(three)
        for n in survivors:
            take(n, got[n.name], total_c, f"c's held items on {n.name} after its restart", tag="c")
            assert per_origin(got[n.name])["c"] == list(range(total_c))  # once each, in order
        sc = wait_for(c.stats, lambda st: st["outbox"] == 0, 30, "c's outbox empty")
        assert sc["acknowledged"] == 2 * len(held)
        assert sc["missed"] == 0
        # c's consumer: its own items (released now), none of the survivors' phase-2 items
        # (c was down when they were mirrored)
        take(c, got["c"], total_c, "c's own items on c", tag="c")
        mine = per_origin(got["c"])
        assert mine == {"a": list(range(k)), "b": list(range(k)), "c": list(range(total_c))}


def other_of(n: Node, pair: list[Node]) -> Node:
    return pair[1] if n is pair[0] else pair[0]


def mirror_config(namespace: str, dmq: str | None = "mirror") -> Any:
    """One queue ``fan`` (mirrored unless ``dmq`` is None) on a node whose notification
    peer never answers: it never joins, so its first batch waits (``_settle_time``)."""
    from pymqueue.config import config_from_dict  # noqa: PLC0415

    table: dict[str, Any] = {"name": "fan"}
    if dmq is not None:
        table["dmq"] = dmq
    return config_from_dict({
        "namespace": namespace,
        "queue": [table],
        "dmq": {"server_address": uri(udp_port()), "notification_address": uri(udp_port()),
                "ping_interval": 5, "fr_timer": 1},
    })  # fmt: skip


def test_stop_releases_what_is_held(namespace: str) -> None:
    # a segment the instance attaches (it stays after the stop)
    with Queue("fan", create=True, namespace=namespace) as q:
        try:
            with Instance(mirror_config(namespace)):
                assert q.stats().hold == 1  # every local add is held from now on
                q.add_many([(b"k", b"%d" % i) for i in range(3)])
            st = q.stats()
            assert (st.hold, st.held, st.items) == (0, 0, 3)
            assert q.fetch_many(10) == [(b"k", b"0"), (b"k", b"1"), (b"k", b"2")]
        finally:
            q.unlink()


def test_hold_left_by_a_dead_mirror_is_cleared(namespace: str) -> None:
    # what a SIGKILLed mirror node leaves: a segment that holds, with held items; an
    # instance that attaches it without mirroring it releases them (nobody else would)
    with Queue("fan", create=True, namespace=namespace) as q:
        try:
            q.hold()
            q.add(b"k", b"held")
            assert q.fetch() is None
            with Instance(mirror_config(namespace, dmq=None)):
                assert (q.stats().hold, q.stats().held) == (0, 0)
                assert q.fetch() == (b"k", b"held")
        finally:
            q.unlink()


@pytest.fixture
def proxy() -> Iterator[tuple[LossyProxy, list[int]]]:
    with lossy_proxy(seed=31) as both:
        yield both


def test_lossy_link(namespace: str, proxy: tuple[LossyProxy, list[int]]) -> None:
    lossy, reals = proxy
    n_items = 2_000
    pad = b"x" * 1500  # about 35 items a message: many messages to lose
    uris = [f"sip:{IP}:{p}" for p in lossy.ports]
    queues = [Queue("jobs", create=True, namespace=f"{namespace}m{i}") for i in range(3)]
    buses = [
        BusThread(
            uris[i], uris[0] if i else None, bind=(IP, reals[i]), ping_interval=60, fr_timer=1
        )
        for i in range(3)
    ]
    services = [
        MqueueService(b, [DqueueSpec(q, mode="mirror")]) for b, q in zip(buses, queues, strict=True)
    ]
    try:
        for b, s in zip(buses, services, strict=True):
            b.start()
            s.start()
        wait_for(lambda: [s.stats()["jobs"].carriers for s in services], lambda c: c == [2] * 3,
                 30, "carriers known")  # fmt: skip
        lossy.lossy = True
        got: list[list[tuple[bytes, int]]] = [[], [], []]

        def consume(i: int) -> None:
            got[i].extend((k, int(v.split(b":", 1)[0])) for k, v in queues[i].fetch_many(10_000))

        for start in range(0, n_items, 250):
            for i, q in enumerate(queues):
                q.add_many([(b"n%d" % i, b"%d:%s" % (j, pad)) for j in range(start, start + 250)])
            for i in range(3):
                consume(i)
        for i in range(3):

            def probe(i: int = i) -> int:
                consume(i)
                return len(got[i])

            wait_for(probe, lambda k: k >= 3 * n_items, 120, f"every item on node {i}")
        for i in range(3):
            by_origin: dict[bytes, list[int]] = {}
            for k, v in got[i]:
                by_origin.setdefault(k, []).append(v)
            assert by_origin == {b"n%d" % j: list(range(n_items)) for j in range(3)}
        assert lossy.dropped > 0
        assert lossy.duplicated > 0
        for i, s in enumerate(services):
            st = wait_for(lambda s=s: s.stats()["jobs"], lambda st: st.outbox == 0, 60,
                          f"node {i}: outbox empty")  # fmt: skip
            assert st.missed == 0
            assert st.acknowledged == 2 * n_items
            assert queues[i].size() == 0  # nothing came twice meanwhile
        stats = [s.stats()["jobs"] for s in services]
        print(
            f"lossy mirror: {lossy.dropped} dropped, {lossy.duplicated} duplicated of "
            f"{lossy.passed + lossy.dropped}; resent {[s.resent for s in stats]}, "
            f"duplicates dropped {[s.duplicates for s in stats]}"
        )
    finally:
        stop_in_process(buses, services, queues)
