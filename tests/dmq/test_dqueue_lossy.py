"""Queues across hosts over a lossy link: every datagram between three nodes passes a UDP
proxy of the test that drops and duplicates (the copy sent after the next datagram, so it also
arrives out of order) at random, seeded. Nothing is applied twice, nothing is lost from the
outboxes, per-origin order holds.

Each node is a real bus on its own UDP socket, bound to a private port and announced at its
proxy's address (``Bus(bind=…)``), with its own shared-memory queue; the nodes run in this
process (``pymqueue serve`` cannot bind elsewhere than it announces). The link turns lossy
once the nodes have joined and agree on the owner; pings are every 60 s, so the membership
stays put while the data is lossy (a lossy ping would take a node down and move the owner,
which is the failover test's business)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dqueue_helpers import IP, LossyProxy, lossy_proxy, stop_in_process, wait_for

from pymqueue import Queue
from pymqueue.dmq import BusThread
from pymqueue.dmq.mqueue_service import MqueueService

N = 5_000
PAD = b"x" * 1500  # about 35 items a message: many messages to lose


def seq(value: bytes) -> int:
    return int(value.split(b":", 1)[0])


@pytest.fixture
def proxy() -> Iterator[tuple[LossyProxy, list[int]]]:
    with lossy_proxy(seed=13) as both:
        yield both


def test_lossy_link(namespace: str, proxy: tuple[LossyProxy, list[int]]) -> None:
    lossy, reals = proxy
    uris = [f"sip:{IP}:{p}" for p in lossy.ports]
    queues = [Queue("jobs", create=True, namespace=f"{namespace}l{i}") for i in range(3)]
    buses = [
        BusThread(
            uris[i], uris[0] if i else None, bind=(IP, reals[i]), ping_interval=60, fr_timer=1
        )
        for i in range(3)
    ]
    services = [MqueueService(b, [(q, uris[0])]) for b, q in zip(buses, queues, strict=True)]
    try:
        for b, s in zip(buses, services, strict=True):
            b.start()
            s.start()

        def owners() -> list[str | None]:
            return [s.stats()["jobs"].owner for s in services]

        def actives() -> list[int]:
            return [sum(1 for n in b.nodes() if str(n.status) == "active") for b in buses]

        wait_for(actives, lambda a: a == [3, 3, 3], 30, "all active")
        wait_for(owners, lambda o: o == [uris[0]] * 3, 30, "owner agreed")
        lossy.lossy = True
        got: list[tuple[bytes, int]] = []
        for start in range(0, N, 250):  # producers on all three, the consumer on the owner
            for i, q in enumerate(queues):
                q.add_many([(b"n%d" % i, b"%d:%s" % (j, PAD)) for j in range(start, start + 250)])
            got += [(k, seq(v)) for k, v in queues[0].fetch_many(10_000)]

        def consumed() -> int:
            got.extend((k, seq(v)) for k, v in queues[0].fetch_many(10_000))
            return len(got)

        wait_for(consumed, lambda k: k >= 3 * N, 120, "every item on the owner")
        # nothing applied twice, nothing lost, per-origin order
        by_origin: dict[bytes, list[int]] = {}
        for k, v in got:
            by_origin.setdefault(k, []).append(v)
        assert by_origin == {b"n%d" % i: list(range(N)) for i in range(3)}
        assert lossy.dropped > 0
        assert lossy.duplicated > 0
        # the outboxes empty once their last batch's 200 got through (it may be resent)
        for s in services[1:]:
            wait_for(lambda s=s: s.stats()["jobs"], lambda st: st.acknowledged == N, 60,
                     "the outbox acknowledged")  # fmt: skip
            assert s.stats()["jobs"].outbox == 0
        stats = [s.stats()["jobs"] for s in services]
        assert queues[0].size() == 0  # and nothing came twice meanwhile
        print(
            f"lossy: {lossy.dropped} dropped, {lossy.duplicated} duplicated of "
            f"{lossy.passed + lossy.dropped}; resent {[s.resent for s in stats]}, "
            f"duplicates dropped by the owner {stats[0].duplicates}"
        )
    finally:
        stop_in_process(buses, services, queues)
