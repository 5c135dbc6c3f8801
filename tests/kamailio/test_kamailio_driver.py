"""The mqueue driver against the REAL Kamailio 5.6.3 (spec §13 cases it can reach)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fix_kamailio import KamailioFactory, RpcError
from kamailio_mq import KamailioMq, driver_config

pytestmark = pytest.mark.kamailio

Start = Callable[..., KamailioMq]

Q3_QU = [
    'modparam("mqueue", "mqueue", "name=q3;size=3")',
    'modparam("mqueue", "mqueue", "name=qu")',
]
R123 = [f'modparam("mqueue", "mqueue", "name=r{i}")' for i in (1, 2, 3)]


def test_fresh_state_and_unknown_queue(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    st = d.read("q3")  # T01
    assert (st.rc, st.mqk, st.mqv, st.mq_size) == (None, None, None, "0")
    assert d.size("q3") == -1  # T02
    assert d.size("nope") == -2  # T03
    assert d.mq_size_pv("nope") is None
    assert d.read("nope").mq_size == ""
    assert "mqueue not found: nope" in d.instance.log()
    assert d.fetch("q3") == -2  # T04
    assert d.fetch("nope") == -1  # T05
    assert d.add("nope", "a", "b") == -1  # T06
    assert d.pv_free("nope") == 1  # T07
    assert [d.size(n) for n in ("Q3", "q3 ", "q")] == [-2, -2, -2]  # T24


def test_t08_t09_overflow_then_fetch(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    sizes = []
    for i in range(1, 6):
        st = d.op("add", "q3", f"k{i}", f"v{i}")
        assert st.rc == 1
        sizes.append(st.mq_size_int)
    assert sizes == [1, 2, 3, 3, 3]
    assert d.size("q3") == 3
    got = [(s.rc, s.mqk, s.mqv) for s in (d.op("fetch", "q3") for _ in range(4))]
    assert got == [(1, b"k3", b"v3"), (1, b"k4", b"v4"), (1, b"k5", b"v5"), (-2, None, None)]


def test_slot_persists_clears_and_frees(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    assert d.add("q3", "p1", "pv1") == 1
    assert d.fetch("q3") == 1
    assert (d.mqk("q3"), d.mqv("q3")) == (b"p1", b"pv1")  # T10: next message, same worker
    assert d.fetch("q3") == -2  # T11
    assert d.mqk("q3") is None
    d.add("q3", "p2", "pv2")
    d.add("q3", "p3", "pv3")
    assert d.fetch("q3") == 1
    assert d.pv_free("q3") == 1  # T12
    assert d.read("q3").mqk is None
    assert d.mq_size_pv("q3") == 1
    assert d.pv_free("q3") == 1
    assert d.fetch("q3") == 1
    assert d.fetch("nope") == -1  # T13: unknown queue leaves the slot alone
    assert d.mqk("q3") == b"p3"


def test_t14_t15_empty_key_or_value_reads_as_null(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    st = d.op("add", "qu", "", "")
    assert (st.rc, st.mq_size) == (1, "1")
    st = d.op("fetch", "qu")
    assert (st.rc, st.mqk, st.mqv) == (1, None, None)
    d.add("qu", "", "onlyval")
    st = d.op("fetch", "qu")
    assert (st.mqk, st.mqv) == (None, b"onlyval")


def test_t22_binary_round_trip(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    key, val = b"k\0ey\xff", bytes(range(256))
    assert d.add("qu", key, val) == 1
    st = d.op("fetch", "qu")
    assert (st.rc, st.mqk, st.mqv) == (1, key, val)


def test_t23_pv_buffer_limit(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    assert d.add("qu", "big", b"x" * 8191) == 1
    assert d.add("qu", "big", b"x" * 8192) == -1
    assert d.fetch("qu") == 1
    assert d.mqv("qu") == b"x" * 8191
    assert d.size("qu") == -1


def test_t25_while_fetch_drains(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    for i in range(3):
        d.add("qu", f"a{i}", f"{i}")
    assert d.drain("qu") == 3
    assert d.read("qu").mqk is None
    assert d.mq_size_pv("qu") == 0


def test_t26_t28_rpc_sizes(kamailio_mq: Start) -> None:
    d = kamailio_mq(R123)
    for i in range(3):
        d.add("r1", f"key{i}", f"val {i}")
    d.add("r3", "x", "y")
    assert d.rpc("mqueue.get_size", "r1") == {"name": "r1", "size": 3}  # T26
    assert d.rpc("mqueue.get_sizes") == [  # T28: most recently defined first
        {"name": "r3", "size": 1},
        {"name": "r2", "size": 0},
        {"name": "r1", "size": 3},
    ]
    assert d.kamcmd("mqueue.get_size", "r1") == "{\n\tname: r1\n\tsize: 3\n}\n"
    methods = d.rpc("system.listMethods")
    assert sorted(m for m in methods if m.startswith("mqueue.")) == [
        "mqueue.fetch",
        "mqueue.get_size",
        "mqueue.get_sizes",
    ]


def test_t27_t30_rpc_errors(kamailio_mq: Start) -> None:
    d = kamailio_mq(R123)
    cases: list[tuple[str, tuple[str, ...], int, str]] = [
        ("mqueue.get_size", ("nope",), 404, "No such queue"),
        ("mqueue.get_size", (), 400, "No queue name"),
        ("mqueue.get_size", ("",), 400, "Invalid queue name"),
        ("mqueue.fetch", ("r1",), 404, "Empty queue"),
        ("mqueue.fetch", ("nope",), 500, "No such queue"),
        ("mqueue.fetch", (), 500, "No queue name"),
        ("mqueue.fetch", ("",), 500, "Invalid queue name"),
    ]
    for method, params, code, message in cases:
        with pytest.raises(RpcError) as ei:
            d.rpc(method, *params)
        assert (ei.value.code, ei.value.message) == (code, message), (method, params)
    # the same error through the other transports
    with pytest.raises(RpcError, match="404 No such queue"):
        d.instance.jsonrpc_dgram("mqueue.get_size", "nope")
    with pytest.raises(RpcError, match="404 No such queue"):
        d.instance.jsonrpc_fifo("mqueue.get_size", "nope")
    assert d.kamcmd("mqueue.get_size", "nope").strip() == "error: 404 - No such queue"


def test_t29_rpc_fetch_does_not_touch_worker_slot(kamailio_mq: Start) -> None:
    d = kamailio_mq(R123)
    d.add("r1", "held", "by worker")
    assert d.fetch("r1") == 1
    d.add("r1", "key0", "val 0")
    d.add("r1", "key1", "val 1")
    assert d.rpc("mqueue.fetch", "r1") == {"key": "key0", "val": "val 0"}
    assert d.rpc("mqueue.get_size", "r1") == {"name": "r1", "size": 1}
    st = d.read("r1")
    assert (st.mqk, st.mqv) == (b"held", b"by worker")
    assert d.kamcmd("mqueue.fetch", "r1") == "{\n\tkey: key1\n\tval: val 1\n}\n"
    assert d.rpc("system.listMethods")  # the HTTP worker is still alive


def test_stop_reports_clean_exit(kamailio_mq: Start) -> None:
    d = kamailio_mq(Q3_QU)
    d.add("q3", "a", "b")
    res = d.instance.stop()
    assert res.returncode == 0
    assert "mqueue param: [q3|0|0]" in res.log


def test_refused_config_reports_exit_status(kamailio: KamailioFactory) -> None:
    res = kamailio.run(driver_config(['modparam("mqueue", "mqueue", "name=a;foo=1")']))
    assert res.returncode == 255  # T32
    assert "unknown param: foo" in res.log
