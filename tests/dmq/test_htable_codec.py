"""The htable codec and table model (sans-I/O), the captured 5.6.3 vectors, and hostile bodies:
decoded here (hypothesis), sent to a pymqueue node over UDP, and — for the bodies that do not
crash 5.6.3 — sent to a real Kamailio too, whose answers must be ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dmq_helpers import udp_port, uri
from fix_kamailio import KamailioFactory
from htable_helpers import kuri, start_ht
from hypothesis import given, settings
from hypothesis import strategies as st

from pymqueue.dmq import BusThread, NodeStatus, parse_message
from pymqueue.dmq.htable import (
    MAX_SYNC_BODY,
    Action,
    ActionMessage,
    HtableDecodeError,
    HtableDef,
    HtableModel,
    Match,
    SyncCell,
    SyncCells,
    SyncRequest,
    build_sync_bodies,
    decode,
    encode_action,
    encode_sync_request,
)
from pymqueue.dmq.htable_replica import Htable
from pymqueue.errors import HtableValueError

VECTORS = Path(__file__).resolve().parent.parent / "data" / "dmq"  # spec's dmq-vectors


def body_of(name: str) -> bytes:
    msg = parse_message((VECTORS / name).read_bytes())
    return msg.body


# ---------------------------------------------------------------- captured vectors


def test_encode_matches_kamailio_bytes() -> None:
    assert encode_action(Action.SET, "q", "alpha", "one") == body_of("08-htable-set-string.sip")
    assert encode_action(Action.SET, "q", "beta", 42) == body_of("09-htable-set-int.sip")
    assert encode_action(Action.DELETE, "q", "gamma") == body_of("10-htable-delete.sip")
    assert encode_action(Action.SET_EXPIRE, "q", "alpha", 600) == body_of("11-htable-setex.sip")
    assert encode_sync_request() == body_of("05-htable-sync-request.sip")
    assert list(build_sync_bodies([])) == [body_of("06-htable-sync-cells-empty.sip")]
    cells = decode(body_of("07-htable-sync-cells.sip"))
    assert isinstance(cells, SyncCells)
    assert list(build_sync_bodies(cells.cells)) == [body_of("07-htable-sync-cells.sip")]


def test_decode_vectors() -> None:
    assert decode(body_of("08-htable-set-string.sip")) == ActionMessage(
        Action.SET, "q", "alpha", "one", 1
    )
    assert decode(body_of("09-htable-set-int.sip")) == ActionMessage(Action.SET, "q", "beta", 42, 1)
    assert decode(body_of("05-htable-sync-request.sip")) == SyncRequest(None)
    assert decode(b'{"action":1,"htname":"q"}') == SyncRequest("q")
    got = decode(body_of("07-htable-sync-cells.sip"))
    assert got == SyncCells(
        (
            SyncCell("tq", "texp", "will-expire", 1795361216),
            SyncCell("q", "beta", 42, 0),
            SyncCell("q", "alpha", "one", 0),
        )
    )


def test_removals_carry_cname_and_mode() -> None:
    body = encode_action(Action.RM_PREFIX, "t", "", "pre", Match.VALUE)
    assert json.loads(body) == {
        "action": 6, "htname": "t", "cname": "", "type": 2, "strval": "pre", "mode": 1
    }  # fmt: skip
    # what 5.6.3 itself sends (no cname) is accepted
    assert decode(b'{"action":5,"htname":"t","type":2,"strval":"^p","mode":0}') == ActionMessage(
        Action.RM_REGEX, "t", "", "^p", Match.NAME
    )


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", 400),
        (b"not json", 400),
        (b'{"action":2,"htname":"t"', 400),  # truncated
        (b"{}", 400),  # crashes 5.6.3
        (b"[]", 400),
        (b"[1]", 400),
        (b"1", 400),
        (b'"x"', 400),
        (b"null", 400),
        (b'{"action":2,"htname":"t","cname":"k","type":2,"strval":"v","mode":1,"x":1}', 400),
        (b'{"action":2,"htname":"t","cname":"k","type":2,"strval":"v","last_modified":1}', 400),
        (b'{"action":2,"htname":5,"cname":"k","type":0,"intval":1,"mode":1}', 400),
        (b'{"action":2,"htname":"t","cname":"k","type":0,"intval":4294967296,"mode":1}', 400),
        (b'{"action":2,"htname":"t","cname":"k","type":2,"mode":1}', 400),  # no strval
        (b'{"action":4,"htname":"t","mode":0}', 400),  # no cname
        (b'{"action":7,"htname":"t","cname":"k","mode":0}', 500),
        (b'{"action":0}', 500),
        (b'{"htname":"t","cname":"k"}', 500),
        (b'{"action":2,"cname":"k","type":0,"intval":1,"mode":1}', 500),  # no table
        (b'{"action":6,"htname":"t","type":2,"strval":"","mode":0}', 500),
        (b"\xff\xfe", 400),
        (b'{"action":NaN}', 400),
    ],
)
def test_refused_bodies(body: bytes, code: int) -> None:
    with pytest.raises(HtableDecodeError) as info:
        decode(body)
    assert info.value.code == code


def test_cells_are_lenient_like_5_6_3() -> None:
    assert decode(b'{"cells":1}') == SyncCells(())
    assert decode(b'{"cells":{}}') == SyncCells(())
    got = decode(
        b'{"cells":[{"htname":"t","cname":"a","type":2,"strval":"x","expire":0,"last_modified":9},'
        b'{"htname":"t","cname":"b","type":2,"expire":0},1,'
        b'{"htname":"t","cname":"c","type":0,"intval":"x","expire":0},'
        b'{"htname":"t","cname":"d\\u0000e","type":2,"strval":"v\\u0000w","expire":0}]}'
    )
    assert got == SyncCells((SyncCell("t", "a", "x", 0), SyncCell("t", "d", "v", 0)), 3)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_decode_never_raises_anything_else(body: bytes) -> None:
    try:
        decode(body)
    except HtableDecodeError as exc:
        code = exc.code
    else:
        code = 200
    assert code in (200, 400, 500)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
members = st.sampled_from(
    ["action", "htname", "cname", "type", "strval", "intval", "mode", "cells", "expire", "x"]
)


@given(st.dictionaries(members, json_values | st.integers(0, 8), max_size=7))
@settings(max_examples=400, deadline=None)
def test_decode_json_objects(doc: dict[str, object]) -> None:
    try:
        msg = decode(json.dumps(doc).encode())
    except HtableDecodeError as exc:
        code = exc.code
        msg = None
    else:
        code = 200
    assert code in (200, 400, 500)
    if isinstance(msg, ActionMessage):
        # what we accept we can also send, unchanged
        again = decode(encode_action(msg.action, msg.htname, msg.cname, msg.value, msg.mode))
        assert isinstance(again, ActionMessage)
        assert (again.action, again.htname, again.value) == (msg.action, msg.htname, msg.value)


# ---------------------------------------------------------------- encoding refusals


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("", "v", HtableValueError),
        ("k\x00", "v", HtableValueError),
        ("k", "v\x00", HtableValueError),
        ("k\udcff", "v", HtableValueError),  # not UTF-8 (a lone surrogate)
        ("k", "\udc80", HtableValueError),
        ("k", 2**31, HtableValueError),
        ("k", -(2**31) - 1, HtableValueError),
        ("k", True, TypeError),
        ("k", 1.5, TypeError),
        ("k", b"bytes", TypeError),
        (b"k", "v", TypeError),
    ],
)
def test_what_kamailio_cannot_carry_is_refused(key: object, value: object, error: type) -> None:
    with pytest.raises(error):
        encode_action(Action.SET, "t", key, value)  # type: ignore[arg-type]


def test_sync_chunks_never_exceed_the_limit() -> None:
    cells = [SyncCell("t", f"key{i}", "\u00e9" * (i % 700) + '"\\', i) for i in range(3000)]
    bodies = list(build_sync_bodies(cells))
    assert len(bodies) > 5
    assert all(len(b) <= MAX_SYNC_BODY for b in bodies)
    back = [c for b in bodies for c in decode(b).cells]  # type: ignore[union-attr]
    assert back == cells
    with pytest.raises(HtableValueError):
        list(build_sync_bodies([SyncCell("t", "big", "x" * MAX_SYNC_BODY, 0)]))


# ---------------------------------------------------------------- the model


def test_model_expiry_like_autoexpire() -> None:
    m = HtableModel(HtableDef("tx", autoexpire=10))
    m.set("a", "x", now=100.0)
    assert m.expire_at("a", 100.0) == 110.0
    m.set("a", "y", now=105.0)  # updateexpire: restarts the lifetime
    assert m.expire_at("a", 105.0) == 115.0
    assert m.set_expire("a", 2, now=106.0)
    assert m.get("a", 107.9) == "y"
    assert m.get("a", 108.0) is None
    assert m.purge(200.0) == []
    m.set("b", 1, now=0.0)
    assert m.purge(10.0) == [("b", 1)]
    # sync cells: expire - now as lifetime, 0 or past → the table's default
    m.load(SyncCell("tx", "c", "v", 150), now=120.0)
    assert m.expire_at("c", 120.0) == 150.0
    m.load(SyncCell("tx", "d", "v", 0), now=120.0)
    assert m.expire_at("d", 120.0) == 130.0

    plain = HtableModel(HtableDef("t"))
    plain.set("a", "x", now=0.0)
    assert not plain.set_expire("a", 1, now=0.0)  # 5.6.3: "Ok", and never expires
    assert plain.get("a", 1e12) == "x"


def test_model_removals() -> None:
    m = HtableModel(HtableDef("t"))
    cells: dict[str, str | int] = {"pre1": "a", "Pre2": "b", "x": "prefix", "n": 5, "abc": "ABC"}
    for k, v in cells.items():
        m.set(k, v, 0.0)
    assert [k for k, _ in m.remove_matching(Action.RM_PREFIX, "pre", Match.NAME)] == ["pre1"]
    assert [k for k, _ in m.remove_matching(Action.RM_PREFIX, "pre", Match.VALUE)] == ["x"]
    assert [k for k, _ in m.remove_matching(Action.RM_REGEX, "^PRE", Match.NAME)] == ["Pre2"]
    assert [k for k, _ in m.remove_matching(Action.RM_REGEX, "b", Match.VALUE)] == ["abc"]
    assert m.keys(0.0) == ["n"]
    with pytest.raises(HtableValueError):
        m.remove_matching(Action.RM_REGEX, "(", Match.NAME)


def test_replica_without_a_bus_peer_is_a_mapping() -> None:
    clock = [1000.0]
    with BusThread(uri(udp_port()), None, ping_interval=5, fr_timer=1) as bus:
        ht = Htable(bus, "tx", autoexpire=5, clock=lambda: clock[0])
        ht.update(a="x", n=3)
        assert dict(ht) == {"a": "x", "n": 3}
        assert len(ht) == 2
        assert "a" in ht
        assert ht.expire_at("a") == 1005.0
        del ht["a"]
        with pytest.raises(KeyError):
            del ht["a"]
        with pytest.raises(KeyError):
            ht.expire_at("a")
        clock[0] = 1005.0
        assert "n" not in ht
        assert ht.get("n") is None
        assert ht.service.stats.sent == 0  # nobody to tell


# ---------------------------------------------------------------- on the wire

SAFE_FOR_5_6_3 = [
    b"not json",
    b'{"action":2,"htname":"t"',
    b'{"action":2,"htname":"t","cname":"k","type":2,"strval":"v","mode":1,"last_modified":1}',
    b'{"action":7,"htname":"t","cname":"k","mode":0}',
    b'{"action":2,"htname":"nosuch","cname":"k","type":2,"strval":"v","mode":1}',
    b'{"action":5,"htname":"t","cname":"","type":2,"strval":"[","mode":0}',
    b'{"action":6,"htname":"t","cname":"","type":2,"strval":"","mode":0}',
    b'{"action":3,"htname":"t","cname":"nokey","type":0,"intval":5,"mode":0}',
    b'{"cells":1}',
    b'{"cells":[{"htname":"nosuch","cname":"c","type":2,"strval":"s","expire":0}]}',
    b'{"cells":[{"htname":"t","cname":"c","type":2,"strval":"s","expire":0,"zz":1}]}',
    b' {"action":4,"htname":"t","cname":"c","mode":0}',
]


@pytest.mark.kamailio
def test_answers_match_kamailio(kamailio: KamailioFactory) -> None:
    """Every body 5.6.3 survives gets the same reply code from it and from pymqueue."""
    k = start_ht(kamailio)
    with BusThread(uri(udp_port()), kuri(k), ping_interval=5, fr_timer=2) as f:
        Htable(f, "t")
        Htable(f, "tx", autoexpire=60)
        assert f.wait_status(kuri(k), NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE
        with BusThread(uri(udp_port()), [kuri(k), str(f.local)], ping_interval=5) as g:
            g.wait_status(str(f.local), NodeStatus.ACTIVE, timeout=10)
            for body in SAFE_FOR_5_6_3:
                theirs = g.send("htable", kuri(k), body, "application/json", timeout=10)
                ours = g.send("htable", f.local, body, "application/json", timeout=10)
                assert (ours.code, ours.reason) == (theirs.code, theirs.reason), body
            assert k.running()


@given(
    st.binary(max_size=200)
    | st.dictionaries(members, json_values, max_size=6).map(lambda d: json.dumps(d).encode())
)
@settings(max_examples=60, deadline=None)
def test_hostile_bodies_on_the_wire(body: bytes) -> None:
    """Whatever arrives, a pymqueue node answers 200/400/500 and keeps serving."""
    node, sender = _wire_pair()
    reply = sender.send("htable", node.local, body, "application/json", timeout=10)
    assert reply.code in (200, 400, 500)
    good = encode_action(Action.SET, "t", "alive", "yes")
    assert sender.send("htable", node.local, good, "application/json", timeout=10).code == 200


_pair: list[BusThread] = []


def _wire_pair() -> tuple[BusThread, BusThread]:
    if not _pair:
        node = BusThread(uri(udp_port()), None, ping_interval=5, fr_timer=2).start()
        Htable(node, "t")
        sender = BusThread(uri(udp_port()), str(node.local), ping_interval=5, fr_timer=2).start()
        sender.wait_status(str(node.local), NodeStatus.ACTIVE, timeout=10)
        _pair.extend([node, sender])
    return _pair[0], _pair[1]


@pytest.fixture(scope="module", autouse=True)
def _stop_pair() -> object:
    yield None
    for bus in _pair:
        bus.stop(timeout=1)
    _pair.clear()
