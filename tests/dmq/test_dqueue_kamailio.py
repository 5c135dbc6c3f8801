"""Kamailio 5.6.3 on pymqueue's distributed queues (issue 13): the documented script snippets.

``docs/kamailio/dqueue-send.cfg`` (a script adds items to a pymqueue queue) and
``docs/kamailio/dqueue-receive.cfg`` (a Kamailio node receives forwarded items and
``mq_add``s them) are included, as they are, by the config below (``include_file``), so the
documented snippets are the tested ones. The wire format is the contract of the channel
``mqueue`` (docs/dmq.md, "Kamailio on the same queues"): what pymqueue sends to K is made by
pymqueue's codec (:mod:`pymqueue.dmq.mqueue_codec`), except one hand-written contract vector
(``test_receive_snippet_adds_items``) and the malformed bodies; what K sends is read as JSON.
The end-to-end tests with the real forwarder are in ``test_dqueue_kamailio_e2e.py``.

K is one real Kamailio node; F a pymqueue :class:`BusThread` in this process that joins the
bus through K. A test drives K's script with SIP MESSAGEs (``sip:send@`` runs the send
snippet on the items given in hex headers; ``sip:fetch@`` drains a queue with ``mq_fetch`` and
returns the items in hex, binary safe) and reads K's queues over its RPC (``mqueue.*``).
"""

from __future__ import annotations

import base64
import json
import queue
from collections.abc import Iterator
from typing import Any

import pytest
from dmq_helpers import udp_port, uri
from fix_kamailio import Kamailio, KamailioFactory
from kamailio_dqueue import BUS, Item, b64, dqueue_config, kam_fetch_all, kam_send, kuri, size

from pymqueue.dmq import BusThread, IncomingRequest, NodeStatus, PeerReply
from pymqueue.dmq.mqueue_codec import (
    CONTENT_TYPE,
    BatchBuilder,
    Carries,
    ItemsMessage,
    ItemsReply,
    decode,
    decode_reply,
    encode_carries,
    encode_items,
)

pytestmark = pytest.mark.kamailio


@pytest.fixture
def node(kamailio: KamailioFactory) -> Iterator[tuple[Kamailio, BusThread]]:
    """K (the config above) and F (a pymqueue bus joined through K, both see each other)."""
    kam = kamailio.start(dqueue_config())
    f = BusThread(uri(udp_port()), kuri(kam), **BUS)
    with f:
        assert f.wait_status(kuri(kam), NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE
        yield kam, f


def send_json(f: BusThread, kam: Kamailio, doc: Any) -> PeerReply:
    body = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    return f.send("mqueue", kuri(kam), body, "application/json", timeout=10)


# -- (a) Kamailio script -> pymqueue -------------------------------------------------------


def test_send_snippet_reaches_pymqueue(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    got: queue.Queue[IncomingRequest] = queue.Queue()

    def handler(req: IncomingRequest) -> PeerReply:
        got.put(req)
        # no body: 5.6.3 reads the body of a 200 to a script's dmq_send_message as a node
        # list, and one that is not hangs it at its next DMQ message (docs/kamailio.md)
        return PeerReply(200, "OK")

    f.register("mqueue", handler)
    items: list[Item] = [
        ("plain", "value", "1"),
        ('q"uo"te', 'say "hi"', "2"),
        ("back\\slash", "C:\\dir\\", None),
        ("h\u00e9 \u2603", "\U0001f600 \u00fc\u00df \u4e2d\u6587", "3"),
        ("ctl\t", "line1\nline2\r\n\x01\x1f", "4"),
        ("", "", "5"),  # empty key and value
        ("</>", '{"not": ["json"]}', "6"),
    ]
    reply = kam_send(kam, str(f.local), "jobs", items)
    assert reply.status == 200, reply
    assert reply.header("X-Count") == str(len(items))
    req = got.get(timeout=10)
    assert req.channel == "mqueue"
    assert req.content_type == "application/json"
    assert str(req.node) == kuri(kam)
    doc = json.loads(req.body)
    assert doc["queue"] == "jobs"
    expected = []
    for k, v, i in items:
        item = {"key": k, "value": v}
        if i is not None:
            item["id"] = i
        expected.append(item)
    assert doc["items"] == expected
    assert set(doc) == {"queue", "items"}


def test_send_snippet_base64_fallback(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    got: queue.Queue[IncomingRequest] = queue.Queue()
    f.register("mqueue", got.put)
    items: list[Item] = [
        (b"\xff\xfe", b"ok", "1"),  # key not UTF-8
        (b"text", b"nul\x00inside", "2"),  # jansson would cut at the NUL
        (b"\xc3", b"\x80\x81", None),  # both not UTF-8 (truncated sequences)
        ("fine", "\u00e9", "3"),
    ]
    reply = kam_send(kam, str(f.local), b"q\xe9\xff", items)
    assert reply.status == 200, reply
    doc = json.loads(got.get(timeout=10).body)
    assert "queue" not in doc
    assert base64.b64decode(doc["queue_b64"]) == b"q\xe9\xff"
    it = doc["items"]
    assert it[0] == {"id": "1", "key_b64": base64.b64encode(b"\xff\xfe").decode(), "value": "ok"}
    assert it[1] == {
        "id": "2", "key": "text", "value_b64": base64.b64encode(b"nul\x00inside").decode()
    }  # fmt: skip
    assert it[2] == {"key_b64": "ww==", "value_b64": base64.b64encode(b"\x80\x81").decode()}
    assert it[3] == {"id": "3", "key": "fine", "value": "\u00e9"}


def test_send_snippet_size_cap(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    got: queue.Queue[IncomingRequest] = queue.Queue()
    f.register("mqueue", got.put)
    # {"items":[],"queue":"jobs"} is 27 bytes, each item {"id":"1","key":"k","value":"v"}
    # 32 + a comma
    one: list[Item] = [("k", "v", "1")]
    assert kam_send(kam, str(f.local), "jobs", one * 2, max_size=27 + 33 * 2).status == 200
    body = got.get(timeout=10).body
    assert len(body) == 27 + 33 * 2 - 1  # no comma after the last item
    reply = kam_send(kam, str(f.local), "jobs", one * 3, max_size=27 + 33 * 2)
    assert (reply.status, reply.reason) == (500, "DQ_ADD failed -2")
    assert got.empty()


def test_send_snippet_unknown_node(node: tuple[Kamailio, BusThread]) -> None:
    kam, _ = node
    reply = kam_send(kam, f"sip:127.0.0.1:{udp_port()}", "jobs", [("k", "v", None)])
    assert (reply.status, reply.reason) == (500, "DQ_SEND failed")


# -- (b) pymqueue -> Kamailio ---------------------------------------------------------------


def test_receive_snippet_adds_items(node: tuple[Kamailio, BusThread]) -> None:
    """The contract vector: JSON written by hand from docs/dmq.md (not by pymqueue's codec),
    which the snippet must read; the codec reads it too."""
    kam, f = node
    items = [
        {"id": "1", "key": "plain", "value": "value"},
        {"id": "2", "key": 'q"uo"te', "value": 'say "hi" \\ back'},
        {"id": "3", "key": "h\u00e9", "value": "\U0001f600 \u4e2d\u6587\nline2\t"},
        {"key": "no-id", "value": "x"},
    ]
    doc = {"queue": "jobs", "items": items, "origin": str(f.local), "epoch": "9f3a01"}
    r = send_json(f, kam, doc)
    assert (r.code, json.loads(r.body)) == (200, {"applied": 4, "duplicates": 0})
    assert r.content_type == "application/json"
    assert size(kam, "jobs") == 4
    # RPC fetch (another Kamailio process) sees them in order
    assert kam.jsonrpc("mqueue.fetch", "jobs") == {"key": "plain", "val": "value"}
    assert kam.jsonrpc("mqueue.fetch", "jobs") == {"key": 'q"uo"te', "val": 'say "hi" \\ back'}
    assert kam_fetch_all(kam, "jobs") == [
        ("h\u00e9".encode(), "\U0001f600 \u4e2d\u6587\nline2\t".encode()),
        (b"no-id", b"x"),
    ]
    assert size(kam, "other") == 0
    # the same vector without the id-less item is a valid pymqueue message, read the same way
    msg = decode(json.dumps({**doc, "items": items[:3]}).encode())
    assert isinstance(msg, ItemsMessage)
    assert [(it.id, it.key, it.value) for it in msg.items] == [
        (it["id"], it["key"].encode(), it["value"].encode()) for it in items[:3]
    ]  # fmt: skip


def send_items(f: BusThread, kam: Kamailio, body: bytes) -> tuple[PeerReply, ItemsReply | None]:
    """``body`` (made by pymqueue's codec) to K; the reply and its decoded body."""
    r = f.send("mqueue", kuri(kam), body, CONTENT_TYPE, timeout=10)
    got = decode_reply(r.body)
    assert got is None or isinstance(got, ItemsReply)
    return r, got


# what the codec must carry to Kamailio intact: every kind of text, and bytes in base64
AWKWARD: list[tuple[bytes, bytes]] = [
    (b"\xff\x00k", b"v\x00\xfe"),  # NUL and non-UTF-8 in both
    (b"text", b"\x80"),
    (b"", b""),
    (b"", b"\x00"),
    (b"nul", b"a\x00b"),  # valid UTF-8 with a NUL: base64 (5.6.3's jansson refuses \u0000)
    (b'q"uo"te \\', "\u00e9 \U0001f600 \u4e2d\u6587".encode()),
    (b"ctl\t", b"line1\nline2\r\n\x01\x1f\x7f"),
    (b"</>", b'{"not": ["json"]}'),
]


def test_receive_snippet_base64_and_binary(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    body = encode_items(b"other", [(i, k, v) for i, (k, v) in enumerate(AWKWARD, 1)],
                        str(f.local), 0x5EED)  # fmt: skip
    doc = json.loads(body)
    assert [sorted(it) for it in doc["items"][:5]] == [
        ["id", "key_b64", "value_b64"],
        ["id", "key", "value_b64"],
        ["id", "key", "value"],
        ["id", "key", "value_b64"],
        ["id", "key", "value_b64"],
    ]
    r, got = send_items(f, kam, body)
    assert (r.code, got) == (200, ItemsReply(len(AWKWARD), 0)), r
    assert kam_fetch_all(kam, "other") == AWKWARD
    # a queue name sent as queue_b64 (not by the codec: any UTF-8 name goes as text), and a
    # JSON number as value (a Kamailio script may send one): added as its text
    r = send_json(f, kam, {"queue_b64": b64(b"other"), "items": [
        {"id": "5", "key": "num", "value": 42, "extra": [1, 2]}]})  # fmt: skip
    assert (r.code, decode_reply(r.body)) == (200, ItemsReply(1, 0))
    assert kam_fetch_all(kam, "other") == [(b"num", b"42")]


def test_receive_snippet_duplicates(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    origin, epoch = "sip:127.0.0.1:5999", 0xAA
    first = [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(1, 4)]
    r, got = send_items(f, kam, encode_items(b"jobs", first, origin, epoch))
    assert (r.code, got) == (200, ItemsReply(3, 0))
    # a re-send after a timeout: the same ids plus new ones -> only the new ones added
    again = [*first, (4, b"k4", b"v4"), (None, b"noid", b"n")]
    r, got = send_items(f, kam, encode_items(b"jobs", again, origin, epoch))
    assert (r.code, got) == (200, ItemsReply(2, 3))
    # another epoch (the queue was recreated) or another origin: new items
    r, got = send_items(f, kam, encode_items(b"jobs", first[:1], origin, 0xBB))
    assert (r.code, got) == (200, ItemsReply(1, 0))
    r, got = send_items(f, kam, encode_items(b"jobs", first[:1], "sip:127.0.0.1:5998", epoch))
    assert (r.code, got) == (200, ItemsReply(1, 0))
    # without origin: the sending node (From) is the origin, ids de-duplicated per node
    r, got = send_items(f, kam, encode_items(b"jobs", first[:2]))
    assert (r.code, got) == (200, ItemsReply(2, 0))
    r, got = send_items(f, kam, encode_items(b"jobs", first[:2]))
    assert (r.code, got) == (200, ItemsReply(0, 2))
    got_items = kam_fetch_all(kam, "jobs")
    assert [k for k, _ in got_items] == [
        b"k1", b"k2", b"k3", b"k4", b"noid", b"k1", b"k1", b"k1", b"k2"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "Malformed body: not JSON or no items array"),
        (b'{"queue": "jobs"}', "Malformed body: not JSON or no items array"),
        (b'{"queue": "jobs", "items": {}}', "Malformed body: not JSON or no items array"),
        (b'{"items": [{"key": "k", "value": "v"}]}', "Malformed body: no queue"),
        (b'{"queue": "", "items": []}', "Malformed body: no queue"),
        (b'{"queue": "jobs", "items": [1]}', "Malformed body: item 0 has no key"),
        (
            b'{"queue": "jobs", "items": [{"key": "a", "value": "b"}, {"key": "k"}]}',
            "Malformed body: item 1 has no value",
        ),
        (
            b'{"queue": "jobs", "items": [{"key": "a", "value": "b"}, {"value": "v"}]}',
            "Malformed body: item 1 has no key",
        ),
        (
            b'{"queue": "jobs", "items": [{"key": "a", "value": "b"}, {"key": "k",'
            b' "value": null}]}',
            "Malformed body: item 1 has no value",
        ),
        (
            b'{"queue": "jobs", "items": [{"key": "a", "value_b64": "%%%"}]}',
            "Malformed body: item 0 has no value",
        ),
        (b'{"queue": "jobs", "items": [{"key": "a\\u0000b", "value": "v"}]}',
         "Malformed body: not JSON or no items array"),
        (b'{"queue": "jobs", "queue": "other", "items": []}',
         "Malformed body: not JSON or no items array"),
    ],
)  # fmt: skip
def test_receive_snippet_malformed(node: tuple[Kamailio, BusThread], body: bytes,
                                   reason: str) -> None:  # fmt: skip
    kam, f = node
    r = send_json(f, kam, body)
    assert (r.code, r.reason) == (400, reason)
    assert size(kam, "jobs") == 0
    assert size(kam, "other") == 0


def test_receive_snippet_membership(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    r = f.send("mqueue", kuri(kam), encode_carries([b"jobs", b"other"]), CONTENT_TYPE,
               timeout=10)  # fmt: skip
    assert (r.code, r.content_type) == (200, "application/json")
    assert decode_reply(r.body) == Carries(frozenset())
    r = send_json(f, kam, {"carries": "jobs"})  # not an array
    assert (r.code, r.reason) == (400, "Malformed body: not JSON or no items array")
    assert size(kam, "jobs") == 0


def test_receive_snippet_unknown_queue_and_empty(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    r, _ = send_items(f, kam, encode_items(b"nope", [(None, b"k", b"v")]))
    assert (r.code, r.reason) == (404, "No such queue")
    r, got = send_items(f, kam, encode_items(b"jobs", []))
    assert (r.code, got) == (200, ItemsReply(0, 0))
    assert size(kam, "jobs") == 0


def test_big_messages_both_ways(node: tuple[Kamailio, BusThread]) -> None:
    """Bodies well over 5.6.3's default pv_buffer_size (8192), which the snippets raise."""
    kam, f = node
    got: queue.Queue[IncomingRequest] = queue.Queue()
    f.register("mqueue", got.put)
    big: list[Item] = [(f"k{i}", f"{i:04d}" + "\u00e9" * 248, str(i)) for i in range(40)]
    reply = kam_send(kam, str(f.local), "jobs", big)
    assert reply.status == 200, reply
    req = got.get(timeout=10)
    assert len(req.body) > 20000
    assert json.loads(req.body)["items"] == [{"id": i, "key": k, "value": v} for k, v, i in big]

    # 500 items (DQ_MAX_ITEMS here) in one ~50 kB message, packed by the forwarder's
    # BatchBuilder: all added, in order
    records = [(i, f"k{i}".encode(), f"v{i:05d}".encode() + b"x" * 40) for i in range(1, 502)]
    body, n = BatchBuilder(b"other", str(f.local), 1).build(records[:500])
    assert n == 500
    assert 40000 < len(body) <= 60000
    r, got = send_items(f, kam, body)
    assert (r.code, got) == (200, ItemsReply(500, 0))
    assert kam_fetch_all(kam, "other") == [(k, v) for _, k, v in records[:500]]

    # one more than DQ_MAX_ITEMS: refused, nothing added
    r, _ = send_items(f, kam, encode_items(b"other", records, str(f.local), 2))
    assert (r.code, r.reason) == (400, "Malformed body: too many items")
    assert size(kam, "other") == 0


def test_receive_snippet_loop_limit(kamailio: KamailioFactory) -> None:
    """5.6.3 cuts a while loop at max_while_loops (default 100) and runs on after it; the
    snippet notices and answers 400 with nothing added instead of a 200 for part of it (a
    forwarder halves its batch on a 400: test_dqueue_kamailio_e2e.py)."""
    kam = kamailio.start(dqueue_config(max_while_loops=None))
    with BusThread(uri(udp_port()), kuri(kam), **BUS) as f:
        assert f.wait_status(kuri(kam), NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE
        items = [(i, f"k{i}".encode(), b"v") for i in range(1, 102)]
        r, _ = send_items(f, kam, encode_items(b"jobs", items, str(f.local), 7))
        assert (r.code, r.reason) == (400, "Malformed body: more items than max_while_loops")
        assert size(kam, "jobs") == 0
        r, got = send_items(f, kam, encode_items(b"jobs", items[:100], str(f.local), 7))
        assert (r.code, got) == (200, ItemsReply(100, 0))
        assert size(kam, "jobs") == 100
    assert "runaway while" in kam.log()
