"""Queues across hosts, sans-I/O: the ``mqueue`` channel's codec (items, carries, replies),
the batch builder's limit, rendezvous ownership, de-duplication; hostile bodies (hypothesis)
never crash the decoder, and a pymqueue node answers them 400 over real UDP."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from dmq_helpers import udp_port, uri
from hypothesis import given, settings
from hypothesis import strategies as st

from pymqueue import Queue
from pymqueue.dmq import BusThread
from pymqueue.dmq.mqueue_codec import (
    MAX_BODY,
    BatchBuilder,
    Carries,
    Dedup,
    ItemsMessage,
    ItemsReply,
    WireItem,
    decode,
    decode_reply,
    encode_carries,
    encode_items,
    encode_reply,
    rendezvous_owner,
)
from pymqueue.dmq.mqueue_service import MqueueService
from pymqueue.dmq.nodes import NodeId
from pymqueue.errors import DmqProtocolError, MqueueDecodeError

ORIGIN = "sip:127.0.0.1:5091"


def doc(body: bytes) -> Any:
    return json.loads(body)


# ---------------------------------------------------------------- items


def test_items_round_trip_text_and_base64() -> None:
    records = [(1, b"k", b"v"), (7, b"\xff\x00", b"caf\xc3\xa9"), (9, b"", b"\x80")]
    body = encode_items(b"jobs", records, ORIGIN, 0x9F3A)
    assert doc(body) == {
        "queue": "jobs",
        "items": [
            {"id": "1", "key": "k", "value": "v"},
            {"id": "7", "key_b64": base64.b64encode(b"\xff\x00").decode(), "value": "caf\u00e9"},
            {"id": "9", "key": "", "value_b64": "gA=="},
        ],
        "origin": ORIGIN,
        "epoch": "9f3a",
    }
    msg = decode(body)
    assert msg == ItemsMessage(
        b"jobs",
        (
            WireItem(b"k", b"v", "1", 1),
            WireItem(b"\xff\x00", b"caf\xc3\xa9", "7", 7),
            WireItem(b"", b"\x80", "9", 9),
        ),
        ORIGIN,
        0x9F3A,
    )


def test_kamailio_form_without_origin() -> None:
    body = b'{"queue":"jobs","items":[{"id":"a-1","key":"k","value":"v"},{"key":"","value":""}]}'
    msg = decode(body)
    assert msg == ItemsMessage(b"jobs", (WireItem(b"k", b"v", "a-1"), WireItem(b"", b"")))
    # unknown members are ignored; a non-UTF-8 queue name goes in queue_b64
    assert decode(b'{"queue_b64":"av8=","items":[],"x":1}') == ItemsMessage(b"j\xff", ())
    assert decode(encode_items(b"j\xff", [])) == ItemsMessage(b"j\xff", ())


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not JSON"),
        (b"[1]", "JSON object"),
        (b"\xff", "not UTF-8"),
        (b"{}", "neither items"),
        (b'{"queue":"q"}', "items must be an array"),
        (b'{"queue":"","items":[]}', "empty"),
        (b'{"queue":"q","queue_b64":"cQ==","items":[]}', "not both"),
        (b'{"queue":"q","items":[],"carries":[]}', "either items or carries"),
        (b'{"queue":"q","items":[1]}', "must be an object"),
        (b'{"queue":"q","items":[{"value":"v"}]}', "key (or key_b64) is required"),
        (b'{"queue":"q","items":[{"key":"k"}]}', "value (or value_b64) is required"),
        (b'{"queue":"q","items":[{"key":"k","key_b64":"aw==","value":""}]}', "not both"),
        (b'{"queue":"q","items":[{"key_b64":"!!","value":""}]}', "base64"),
        (b'{"queue":"q","items":[{"key":1,"value":""}]}', "must be a string"),
        (b'{"queue":"q","items":[{"key":"\\ud800","value":""}]}', "surrogate"),
        (b'{"queue":"q","items":[{"key":"k","value":"v","id":5}]}', "id must be a string"),
        (b'{"queue":"q","items":[],"origin":"' + ORIGIN.encode() + b'"}', "come together"),
        (b'{"queue":"q","items":[],"origin":"o","epoch":"0"}', "non-zero"),
        (b'{"queue":"q","items":[],"origin":"o","epoch":"xyz"}', "hex"),
        (b'{"queue":"q","items":[],"origin":"o","epoch":"12345678901234567"}', "hex"),
        (b'{"queue":"q","items":[],"origin":"","epoch":"1"}', "origin must be"),
        (b'{"queue":"q","items":[{"key":"k","value":"v"}],"origin":"o","epoch":"1"}', "decimal"),
        (
            b'{"queue":"q","items":[{"id":"0","key":"k","value":"v"}],"origin":"o","epoch":"1"}',
            "outside",
        ),
        (
            b'{"queue":"q","items":[{"id":"18446744073709551616","key":"k","value":"v"}],'
            b'"origin":"o","epoch":"1"}',
            "outside",
        ),
        (
            b'{"queue":"q","items":[{"id":"2","key":"k","value":"v"},{"id":"2","key":"k",'
            b'"value":"v"}],"origin":"o","epoch":"1"}',
            "not above",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b'{"carries":"jobs"}', "must be an array"),
        (b'{"carries":[""]}', "empty"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, why: str) -> None:
    with pytest.raises(MqueueDecodeError, match=re.escape(why)) as info:
        decode(body)
    assert info.value.code == 400
    assert isinstance(info.value, DmqProtocolError)
    assert isinstance(info.value, ValueError)


def test_carries_and_replies() -> None:
    body = encode_carries([b"jobs", b"a\xff", b"jobs"])
    assert doc(body) == {"carries": ["jobs"], "carries_b64": ["Yf8="]}
    assert decode(body) == Carries(frozenset({b"jobs", b"a\xff"}))
    assert decode_reply(body) == Carries(frozenset({b"jobs", b"a\xff"}))
    assert decode_reply(encode_reply(5, 2)) == ItemsReply(5, 2)
    assert decode_reply(encode_reply(3)) == ItemsReply(3, 0)
    for junk in (b"", b"nope", b"[]", b'{"applied":-1}', b'{"applied":true}'):
        assert decode_reply(junk) is None


# ---------------------------------------------------------------- the batch builder


def test_batch_builder_packs_what_fits() -> None:
    builder = BatchBuilder(b"jobs", ORIGIN, 1)
    records = [(i, b"", b"x" * 64) for i in range(1, 5001)]
    body, n = builder.build(records)
    assert 0 < n < len(records)
    assert len(body) <= MAX_BODY
    # one more item would not have fitted
    _more, m = BatchBuilder(b"jobs", ORIGIN, 1, max_body=len(body) + 10).build(records)
    assert m == n
    msg = decode(body)
    assert isinstance(msg, ItemsMessage)
    assert [it.seq for it in msg.items] == list(range(1, n + 1))
    # an item that cannot fit alone: nothing packed
    assert builder.build([(1, b"", b"y" * MAX_BODY)]) == (b"", 0)
    # base64 and escapes are counted as sent
    body, n = builder.build([(i, b"\xff" * 100, b'"\\' * 100) for i in range(1, 1000)])
    assert len(body) <= MAX_BODY
    assert len(decode(body).items) == n  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=3000)), max_size=200),
    st.integers(200, 70_000),
)
def test_batch_builder_never_exceeds(items: list[tuple[bytes, bytes]], limit: int) -> None:
    records = [(i + 1, k, v) for i, (k, v) in enumerate(items)]
    body, n = BatchBuilder(b"q\xfe", ORIGIN, 2**64 - 1, max_body=limit).build(records)
    if n:
        assert len(body) <= limit
        msg = decode(body)
        assert isinstance(msg, ItemsMessage)
        assert [(it.seq, it.key, it.value) for it in msg.items] == records[:n]
    else:
        assert body == b""


# ---------------------------------------------------------------- hostile bodies


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "queue",
                        "queue_b64",
                        "items",
                        "origin",
                        "epoch",
                        "id",
                        "key",
                        "value",
                        "key_b64",
                        "value_b64",
                        "carries",
                        "carries_b64",
                        "x",
                    ]
                ),
                inner,
                max_size=6,
            )
        ),
        max_leaves=30,
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400) | _json_values().map(lambda v: json.dumps(v).encode()))
def test_hostile_bodies_never_crash(body: bytes) -> None:
    try:
        msg: object = decode(body)
    except MqueueDecodeError as exc:
        msg = exc.code
    assert msg == 400 or isinstance(msg, ItemsMessage | Carries)
    decode_reply(body)


# ---------------------------------------------------------------- ownership


N = [NodeId("127.0.0.1", str(p)) for p in (5091, 5092, 5093)]


def test_rendezvous_owner() -> None:
    carriers = {n: {b"jobs"} for n in N}
    views = {rendezvous_owner(b"jobs", me, [n for n in N if n != me], carriers) for me in N}
    assert len(views) == 1  # every node agrees
    winner = views.pop()
    rest = [n for n in N if n != winner]
    # the winner gone: the others agree on the next one
    assert len({rendezvous_owner(b"jobs", me, [n for n in rest if n != me], carriers)
                for me in rest}) == 1  # fmt: skip
    # a node that does not carry the queue never wins
    assert rendezvous_owner(b"jobs", N[0], N[1:], {}) == N[0]
    # the configured owner while active (or ourselves), else the hash
    assert rendezvous_owner(b"jobs", N[0], N[1:], carriers, N[2]) == N[2]
    assert rendezvous_owner(b"jobs", N[0], [N[1]], carriers, N[2]) in (N[0], N[1])
    assert rendezvous_owner(b"jobs", N[0], [], carriers, N[0]) == N[0]
    # the names spread over the nodes
    names = [b"q%d" % i for i in range(60)]
    everyone = {n: set(names) for n in N}
    owners = {rendezvous_owner(name, N[0], N[1:], everyone) for name in names}
    assert owners == set(N)


def test_dedup_by_origin_high_water_mark() -> None:
    d = Dedup(max_origins=2)
    m1 = decode(encode_items(b"q", [(1, b"", b"a"), (2, b"", b"b")], ORIGIN, 7))
    assert isinstance(m1, ItemsMessage)
    fresh = d.fresh(m1, "s")
    assert len(fresh) == 2
    d.applied(m1, "s", fresh[:1])  # only the first applied (queue full)
    assert [it.seq for it in d.fresh(m1, "s")] == [2]
    d.applied(m1, "s", d.fresh(m1, "s"))
    assert d.fresh(m1, "s") == []
    assert d.high(ORIGIN, b"q", 7) == 2
    # another epoch of the same queue is another stream
    m2 = decode(encode_items(b"q", [(1, b"", b"a")], ORIGIN, 8))
    assert isinstance(m2, ItemsMessage)
    assert len(d.fresh(m2, "s")) == 1
    d.applied(m2, "s", d.fresh(m2, "s"))
    m3 = decode(encode_items(b"q", [(1, b"", b"a")], "sip:127.0.0.1:9", 8))
    assert isinstance(m3, ItemsMessage)
    d.applied(m3, "s", d.fresh(m3, "s"))
    # bounded: the least recently used origin (epoch 7) was forgotten
    assert d.high(ORIGIN, b"q", 7) == 0
    assert len(d) == 2


def test_dedup_kamailio_ids_window() -> None:
    d = Dedup(window=3, max_senders=1)
    m = decode(b'{"queue":"q","items":[{"id":"a","key":"","value":"1"},{"id":"a","key":"",'
               b'"value":"1"},{"key":"","value":"x"},{"key":"","value":"x"}]}')  # fmt: skip
    assert isinstance(m, ItemsMessage)
    fresh = d.fresh(m, "sip:127.0.0.1:1")
    assert [it.value for it in fresh] == [b"1", b"x", b"x"]  # no id: applied each time
    d.applied(m, "sip:127.0.0.1:1", fresh)
    assert [it.value for it in d.fresh(m, "sip:127.0.0.1:1")] == [b"x", b"x"]
    # another sender's window is its own
    assert len(d.fresh(m, "sip:127.0.0.1:2")) == 3
    for i in "bcd":  # the window holds 3 ids: "a" falls out
        mi = decode(b'{"queue":"q","items":[{"id":"%s","key":"","value":""}]}' % i.encode())
        assert isinstance(mi, ItemsMessage)
        d.applied(mi, "sip:127.0.0.1:1", mi.items)
    assert len(d.fresh(m, "sip:127.0.0.1:1")) == 3


# ---------------------------------------------------------------- over UDP


def test_node_answers_hostile_bodies(namespace: str) -> None:
    """A pymqueue node's ``mqueue`` channel: 400 for malformed bodies, 404 for an unknown
    queue, 200 with applied/duplicates for items (a resend applied once), no body for items
    without origin."""
    a, b = uri(udp_port()), uri(udp_port())
    q = Queue("dq-codec", create=True, namespace=namespace)
    try:
        with BusThread(a, ping_interval=5, fr_timer=2) as ba, \
                BusThread(b, a, ping_interval=5, fr_timer=2) as bb:  # fmt: skip
            service = MqueueService(ba, [(q, None)])
            bb.wait_joined(10)
            for body in (b"{", b"[]", b'{"queue":"dq-codec","items":[{"key":1,"value":""}]}'):
                reply = bb.send("mqueue", a, body, "application/json", timeout=10)
                assert reply.code == 400, reply
            reply = bb.send("mqueue", a, encode_items(b"nope", []), "application/json")
            assert reply.code == 404
            body = encode_items(b"dq-codec", [(1, b"k", b"v"), (2, b"k", b"w")], b, 5)
            reply = bb.send("mqueue", a, body, "application/json", timeout=10)
            assert (reply.code, doc(reply.body)) == (200, {"applied": 2, "duplicates": 0})
            reply = bb.send("mqueue", a, body, "application/json", timeout=10)
            assert (reply.code, doc(reply.body)) == (200, {"applied": 0, "duplicates": 2})
            assert q.fetch_many(10) == [(b"k", b"v"), (b"k", b"w")]
            # without origin (a Kamailio script's items): a 200 without body, which Kamailio
            # 5.6.3 would read as a node list (test_dqueue_kamailio_e2e.py)
            reply = bb.send("mqueue", a, encode_items(b"dq-codec", [("x", b"k", b"s")]))
            assert (reply.code, reply.body) == (200, b"")
            assert q.fetch_many(10) == [(b"k", b"s")]
            carries = bb.send("mqueue", a, encode_carries([b"x"]), "application/json")
            assert decode_reply(carries.body) == Carries(frozenset({b"dq-codec"}))
            s = service.stats()["dq-codec"]
            assert (s.received, s.applied, s.duplicates) == (5, 3, 2)
            assert service.refused == 4
            service.close()
    finally:
        q.unlink()
        q.close()
