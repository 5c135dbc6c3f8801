"""pymqueue's Htable replica on one DMQ bus with real Kamailio 5.6.3 htable nodes.

K1 (no notification address) and K2 (notification address K1) hold tables ``t`` and ``tx``
(``autoexpire`` 60) with ``dmqreplicate=1`` and ``dmq_init_sync=1`` (tests/htable_helpers.py).
F is a :class:`BusThread` in this process holding replicas of both. Covered: spec §12 cases
13-19 through the replica, both directions for every action (RPC and script writes, setex,
delete, prefix and regex removals on names and values), expiry, sync both ways (10 000 cells,
and 100 000 in the ``slow`` test), and the 5.6.3 answers to refused bodies (differential).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import pytest
from dmq_helpers import udp_port, uri
from fix_kamailio import Kamailio, KamailioFactory
from htable_helpers import (
    ht_count,
    ht_get,
    kuri,
    script,
    start_ht,
    wait_listed,
    wait_rpc,
)

from pymqueue.dmq import BusThread, NodeStatus
from pymqueue.dmq.htable_replica import Htable, HtableChange

pytestmark = pytest.mark.kamailio

BUS = {"ping_interval": 5.0, "fr_timer": 5.0}


@pytest.fixture
def cluster(kamailio: KamailioFactory) -> Iterator[tuple[Kamailio, Kamailio, BusThread]]:
    k1 = start_ht(kamailio)
    k2 = start_ht(kamailio, kuri(k1))
    wait_listed(k1, kuri(k2))
    f = BusThread(uri(udp_port()), kuri(k2), **BUS)
    with f:
        yield k1, k2, f


def test_kamailio_to_pymqueue(cluster: tuple[Kamailio, Kamailio, BusThread]) -> None:
    k1, k2, f = cluster
    t, tx = Htable(f, "t"), Htable(f, "tx", autoexpire=60)
    changes: list[HtableChange] = []
    t.on_change(changes.append)
    wait_listed(k1, str(f.local))
    wait_listed(k2, str(f.local))

    # RPC writes on either node (case 13, 14): strings stay strings, integers integers
    assert k1.jsonrpc("htable.sets", "t", "a", "x") == "Ok. Key set to new value."
    k2.jsonrpc("htable.seti", "t", "n", 5)
    k1.jsonrpc("htable.sets", "t", "u", "h\u00e9\U0001f600")
    t.wait_until(lambda h: h.get("a") == "x" and h.get("n") == 5 and "u" in h, timeout=10)
    assert (t["a"], t["n"], t["u"]) == ("x", 5, "h\u00e9\U0001f600")
    assert isinstance(t["n"], int)
    assert changes[0].origin is not None
    assert str(changes[0].origin) == kuri(k1)

    # script writes: $sht, then $sht = $null (a delete)
    script(k1, "set", "from-script", k="s")
    script(k2, "seti", "-42", k="si")
    t.wait_until(lambda h: h.get("s") == "from-script" and h.get("si") == -42, timeout=10)
    script(k2, "null", k="s")
    t.wait_until(lambda h: "s" not in h, timeout=10)

    # setex on an autoexpire table: the replica's cell gets the new lifetime
    k1.jsonrpc("htable.sets", "tx", "e", "y")
    tx.wait_until(lambda h: "e" in h, timeout=10)
    assert tx.expire_at("e") == pytest.approx(time.time() + 60, abs=5)
    assert k1.jsonrpc("htable.setex", "tx", "e", 1000) == "Ok"
    tx.wait_until(lambda h: (h.expire_at("e") or 0) > time.time() + 900, timeout=10)

    # delete (case 14)
    assert k2.jsonrpc("htable.delete", "t", "a") == "Ok. Key deleted."
    t.wait_until(lambda h: "a" not in h, timeout=10)

    # removals by regex and prefix, on names and on values
    for key, val in [("pre1", "p"), ("pre2", "p"), ("keep", "valx"), ("Re9", "r"), ("zz", "vq")]:
        k1.jsonrpc("htable.sets", "t", key, val)
    t.wait_until(lambda h: "zz" in h and "Re9" in h, timeout=10)
    script(k1, "rmsw", "pre")  # sht_rm_name(t, "sw", "pre")
    t.wait_until(lambda h: "pre1" not in h and "pre2" not in h, timeout=10)
    script(k2, "rmre", "^re[0-9]$")  # case-insensitive, as POSIX REG_ICASE
    t.wait_until(lambda h: "Re9" not in h, timeout=10)
    script(k1, "rmvsw", "valx")
    t.wait_until(lambda h: "keep" not in h, timeout=10)
    script(k1, "rmvre", "q$")
    t.wait_until(lambda h: "zz" not in h, timeout=10)
    assert dict(t) == {"n": 5, "u": "h\u00e9\U0001f600", "si": -42}
    assert {c.op for c in changes} >= {"set", "delete", "rm_prefix", "rm_regex"}


def test_pymqueue_to_kamailio(cluster: tuple[Kamailio, Kamailio, BusThread]) -> None:
    k1, k2, f = cluster
    t, tx = Htable(f, "t"), Htable(f, "tx", autoexpire=60)
    wait_listed(k1, str(f.local))
    wait_listed(k2, str(f.local))
    assert f.wait_status(kuri(k1), NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE

    t["py"] = "hello-from-python"
    t["pi"] = 7
    t["neg"] = -(2**31)
    t["emoji"] = '\U0001f600 \\ " \n'
    for k in (k1, k2):
        wait_rpc(partial(ht_get, k, "t", "emoji"), bool, 10, "emoji on Kamailio")
        assert ht_get(k, "t", "py") == {
            "name": "py", "value": "hello-from-python", "flags": 2, "expire": "NEVER"
        }  # fmt: skip
        assert ht_get(k, "t", "pi") == {"name": "pi", "value": 7, "flags": 0, "expire": "NEVER"}
        assert ht_get(k, "t", "neg")["value"] == -(2**31)  # type: ignore[index]
        assert ht_get(k, "t", "emoji")["value"] == '\U0001f600 \\ " \n'  # type: ignore[index]

    # delete, prefix and regex removals (sent with cname "", which 5.6.3 accepts)
    for key in ("pa", "pb", "Rx1", "vv"):
        t[key] = "val-" + key
    wait_rpc(lambda: ht_get(k2, "t", "vv"), bool, 10, "vv on K2")
    del t["py"]
    assert set(t.rm_prefix("p")) == {"pi", "pa", "pb"}
    assert set(t.rm_regex("^rx[0-9]")) == {"Rx1"}
    assert t.rm_regex("-vv$", on="value") == ["vv"]
    for k in (k1, k2):
        wait_rpc(partial(ht_count, k, "t"), lambda n: n == 2, 10, "removals on Kamailio")
        assert ht_get(k, "t", "py") is None
        assert ht_get(k, "t", "pa") is None
        assert ht_get(k, "t", "emoji") is not None
        assert ht_get(k, "t", "neg") is not None

    # expiry honoured: setex 1 s on the autoexpire table, Kamailio drops the cell
    tx["soon"] = "gone"
    wait_rpc(lambda: ht_get(k1, "tx", "soon"), bool, 10, "tx cell on K1")
    assert tx.setex("soon", 1) is True
    for k in (k1, k2):
        wait_rpc(partial(ht_get, k, "tx", "soon"), lambda v: v is None, 10, "expiry")
    tx.wait_until(lambda h: "soon" not in h, timeout=5)
    # on a table without autoexpire, setex is replicated and does nothing (as in 5.6.3)
    assert t.setex("emoji", 1) is False


def test_sync_10000_both_ways(kamailio: KamailioFactory) -> None:
    # Kamailio → pymqueue: K1 alone holds 10 000 cells; F joins and asks for them
    k1 = start_ht(kamailio)
    script(k1, "fill", n="10000", p="k")
    assert ht_count(k1, "t") == 10000
    f = BusThread(uri(udp_port()), kuri(k1), **BUS)
    t = Htable(f, "t")
    with f:
        t.wait_until(lambda h: len(h) == 10000, timeout=30)
        assert dict(t) == {f"k{i}": f"v{i}" for i in range(10000)}
        assert t.service.stats.sync_requests_sent == 1  # asked one node, once

    # pymqueue → Kamailio: G alone holds 10 000 cells; a Kamailio starting with
    # notification_address G (dmq_init_sync=1) gets all of them from G
    g = BusThread(uri(udp_port()), None, **BUS)
    gt = Htable(g, "t")
    with g:
        gt.update({f"g{i}": (i if i % 2 else f"s{i}") for i in range(10000)})
        k2 = start_ht(kamailio, str(g.local))
        wait_rpc(lambda: ht_count(k2, "t"), lambda n: n == 10000, 30, "10 000 cells on K2")
        assert ht_get(k2, "t", "g9999")["value"] == 9999  # type: ignore[index]
        assert ht_get(k2, "t", "g1234")["value"] == "s1234"  # type: ignore[index]
        assert gt.service.stats.sync_messages_sent >= 5  # many chunks
        assert gt.service.stats.peer_errors == 0


@pytest.mark.slow
def test_sync_100000_both_ways(kamailio: KamailioFactory) -> None:
    k1 = start_ht(kamailio, fr_timer_ms=30000)
    script(k1, "fill", n="100000", p="key-")
    assert ht_count(k1, "t") == 100000
    f = BusThread(uri(udp_port()), kuri(k1), **BUS)
    t = Htable(f, "t")
    with f:
        t.wait_until(lambda h: len(h) == 100000, timeout=90)
        assert t["key-99999"] == "v99999"
    g = BusThread(uri(udp_port()), None, **BUS)
    gt = Htable(g, "t")
    with g:
        gt.update({f"g{i}": i for i in range(100000)})
        k2 = start_ht(kamailio, str(g.local))
        wait_rpc(lambda: ht_count(k2, "t"), lambda n: n == 100000, 90, "100 000 cells on K2")
        assert gt.service.stats.sync_messages_sent >= 40
        assert gt.service.stats.peer_errors == 0
