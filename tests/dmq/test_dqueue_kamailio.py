"""Kamailio 5.6.3 on pymqueue's distributed queues (issue 13): the documented script snippets.

``docs/kamailio/dqueue-send.cfg`` (a script adds items to a pymqueue queue) and
``docs/kamailio/dqueue-receive.cfg`` (a Kamailio node receives forwarded items and
``mq_add``s them) are included, as they are, by the config below (``include_file``), so the
documented snippets are the tested ones. The wire format is the contract of the channel
``mqueue`` (docs/dmq.md, "Kamailio on the same queues"); until pymqueue's own codec exists, the
pymqueue side of these tests builds and reads the JSON with :mod:`json`.

K is one real Kamailio node; F a pymqueue :class:`BusThread` in this process that joins the
bus through K. A test drives K's script with SIP MESSAGEs (``sip:send@`` runs the send
snippet on the items given in hex headers; ``sip:fetch@`` drains a queue with ``mq_fetch`` and
returns the items in hex, binary safe) and reads K's queues over its RPC (``mqueue.*``).
"""

from __future__ import annotations

import base64
import json
import queue
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dmq_helpers import udp_port, uri
from fix_kamailio import Kamailio, KamailioFactory, SipReply, base_config

from pymqueue.dmq import BusThread, IncomingRequest, NodeStatus, PeerReply

pytestmark = pytest.mark.kamailio

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "kamailio"
SEND_CFG = SNIPPETS / "dqueue-send.cfg"
RECEIVE_CFG = SNIPPETS / "dqueue-receive.cfg"

# what a deployment adds around the snippets (docs/dmq.md shows the same lines), plus a test
# driver: "send" and "fetch" requests
SCRIPT = """
max_while_loops=1000
pv_buffer_size=65536
#!define DQ_MAX_ITEMS 500
modparam("tm", "fr_timer", 2000)
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)
modparam("htable", "htable", "dqseen=>size=14;autoexpire=600")
modparam("mqueue", "mqueue", "name=jobs")
modparam("mqueue", "mqueue", "name=other")
include_file "@RECEIVE@"
include_file "@SEND@"

request_route {
	if (is_method("KDMQ") && $rU == "mqueue") {
		route(DQ_RECEIVE);
		exit;
	}
	if (is_method("KDMQ")) {
		dmq_handle_message();
		exit;
	}
	if (is_method("MESSAGE") && $rU == "send") {
		route(T_SEND);
		exit;
	}
	if (is_method("MESSAGE") && $rU == "fetch") {
		route(T_FETCH);
		exit;
	}
	sl_send_reply("404", "Not here");
	exit;
}

# test driver: X-Node, X-Q (hex), X-K / X-V / X-Id repeated per item (hex, "-" = empty;
# X-Id "none" = no id) -> one message through the send snippet
route[T_SEND] {
	$var(dq_max) = 0;
	if ($hdr(X-Max) != $null) {
		$var(dq_max) = $(hdr(X-Max){s.int});
	}
	$var(dq_queue) = $(hdr(X-Q){s.decode.hexa});
	route(DQ_NEW);
	$var(t_i) = 0;
	$var(t_n) = $hdrc(X-K);
	while ($var(t_i) < $var(t_n)) {
		$var(dq_key) = "";
		$var(dq_value) = "";
		$var(dq_id) = "";
		if ($(hdr(X-K)[$var(t_i)]) != "-") {
			$var(dq_key) = $(hdr(X-K)[$var(t_i)]{s.decode.hexa});
		}
		if ($(hdr(X-V)[$var(t_i)]) != "-") {
			$var(dq_value) = $(hdr(X-V)[$var(t_i)]{s.decode.hexa});
		}
		if ($(hdr(X-Id)[$var(t_i)]) != "none") {
			$var(dq_id) = $(hdr(X-Id)[$var(t_i)]{s.decode.hexa});
		}
		route(DQ_ADD);
		if ($rc < 0) {
			sl_send_reply("500", "DQ_ADD failed $rc");
			exit;
		}
		$var(t_i) = $var(t_i) + 1;
	}
	$var(dq_node) = $hdr(X-Node);
	route(DQ_SEND);
	if ($rc < 0) {
		sl_send_reply("500", "DQ_SEND failed");
		exit;
	}
	append_to_reply("X-Count: $var(dq_count)\\r\\n");
	sl_send_reply("200", "Sent");
	exit;
}

# test driver: mq_fetch X-Q (hex) until empty; one "X-Item: <hex key>:<hex value>" each
route[T_FETCH] {
	$var(t_q) = $(hdr(X-Q){s.decode.hexa});
	while (mq_fetch("$var(t_q)")) {
		$var(t_k) = "";
		$var(t_v) = "";
		if ($mqk($var(t_q)) != $null) {
			$var(t_k) = $(mqk($var(t_q)){s.encode.hexa});
		}
		if ($mqv($var(t_q)) != $null) {
			$var(t_v) = $(mqv($var(t_q)){s.encode.hexa});
		}
		append_to_reply("X-Item: $var(t_k):$var(t_v)\\r\\n");
	}
	sl_send_reply("200", "Fetched");
	exit;
}
"""

MODULES = ["tm", "dmq", "textops", "htable", "jansson", "mqueue"]
BUS = {"ping_interval": 5.0, "fr_timer": 2.0}


def dqueue_config(max_while_loops: int | None = 1000) -> str:
    """The config above; ``max_while_loops=None``: Kamailio's default (100)."""
    text = SCRIPT.replace("@RECEIVE@", str(RECEIVE_CFG)).replace("@SEND@", str(SEND_CFG))
    if max_while_loops is None:
        text = text.replace("max_while_loops=1000\n", "")
    else:
        text = text.replace("max_while_loops=1000\n", f"max_while_loops={max_while_loops}\n")
    return base_config(text, modules=MODULES)


def kuri(kam: Kamailio) -> str:
    return f"sip:127.0.0.1:{kam.sip_port}"


def _hex(b: str | bytes) -> str:
    if isinstance(b, str):
        b = b.encode()
    return b.hex() if b else "-"


Item = tuple[str | bytes, str | bytes, str | None]


def kam_send(
    kam: Kamailio, node: str, q: str | bytes, items: Sequence[Item], max_size: int | None = None
) -> SipReply:
    """Run the send snippet on K: one message with ``items`` (key, value, id or None);
    ``max_size``: ``$var(dq_max)``."""
    hdrs = [("X-Node", node), ("X-Q", _hex(q))]
    if max_size is not None:
        hdrs.append(("X-Max", str(max_size)))
    for k, v, i in items:
        hdrs += [("X-K", _hex(k)), ("X-V", _hex(v)), ("X-Id", "none" if i is None else _hex(i))]
    return kam.sip_request("MESSAGE", hdrs, ruri=f"sip:send@127.0.0.1:{kam.sip_port}")


def kam_fetch_all(kam: Kamailio, q: str | bytes) -> list[tuple[bytes, bytes]]:
    """Drain K's queue ``q`` with ``mq_fetch`` in its SIP worker: [(key, value)] in order."""
    reply = kam.sip_request(
        "MESSAGE", [("X-Q", _hex(q))], ruri=f"sip:fetch@127.0.0.1:{kam.sip_port}"
    )
    assert reply.status == 200, reply
    out = []
    for h in reply.header_all("X-Item"):
        k, _, v = h.partition(":")
        out.append((bytes.fromhex(k), bytes.fromhex(v)))
    return out


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def size(kam: Kamailio, q: str) -> int:
    return int(kam.jsonrpc("mqueue.get_size", q)["size"])


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
        return PeerReply(200, "OK", b'{"applied":1}', "application/json")

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


def test_receive_snippet_base64_and_binary(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    items = [
        {"id": "1", "key_b64": b64(b"\xff\x00k"), "value_b64": b64(b"v\x00\xfe")},
        {"id": "2", "key": "text", "value_b64": b64(b"\x80")},
        {"id": "3", "key": "", "value": ""},
        {"id": "4", "key_b64": "", "value_b64": b64(b"\x00")},
        {"id": "5", "key": "num", "value": 42, "extra": [1, 2]},
    ]
    r = send_json(f, kam, {"queue_b64": b64(b"other"), "items": items})
    assert r.code == 200, r
    assert json.loads(r.body) == {"applied": 5, "duplicates": 0}
    assert kam_fetch_all(kam, "other") == [
        (b"\xff\x00k", b"v\x00\xfe"),
        (b"text", b"\x80"),
        (b"", b""),
        (b"", b"\x00"),
        (b"num", b"42"),
    ]


def test_receive_snippet_duplicates(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    base = {"queue": "jobs", "origin": "sip:127.0.0.1:5999", "epoch": "aa"}
    first = [{"id": str(i), "key": f"k{i}", "value": f"v{i}"} for i in range(1, 4)]
    r = send_json(f, kam, {**base, "items": first})
    assert json.loads(r.body) == {"applied": 3, "duplicates": 0}
    # a re-send after a timeout: the same ids plus new ones -> only the new ones added
    again = [*first, {"id": "4", "key": "k4", "value": "v4"}, {"key": "noid", "value": "n"}]
    r = send_json(f, kam, {**base, "items": again})
    assert json.loads(r.body) == {"applied": 2, "duplicates": 3}
    # another epoch (the queue was recreated) or another origin: new items
    r = send_json(f, kam, {**base, "epoch": "bb", "items": first[:1]})
    assert json.loads(r.body) == {"applied": 1, "duplicates": 0}
    r = send_json(f, kam, {**base, "origin": "sip:127.0.0.1:5998", "items": first[:1]})
    assert json.loads(r.body) == {"applied": 1, "duplicates": 0}
    # without origin: the sending node (From) is the origin, ids de-duplicated per node
    r = send_json(f, kam, {"queue": "jobs", "items": first[:2]})
    assert json.loads(r.body) == {"applied": 2, "duplicates": 0}
    r = send_json(f, kam, {"queue": "jobs", "items": first[:2]})
    assert json.loads(r.body) == {"applied": 0, "duplicates": 2}
    got = kam_fetch_all(kam, "jobs")
    assert [k for k, _ in got] == [
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
    r = send_json(f, kam, {"carries": ["jobs", "other"]})
    assert (r.code, r.content_type, json.loads(r.body)) == (
        200,
        "application/json",
        {"carries": []},
    )
    r = send_json(f, kam, {"carries": "jobs"})  # not an array
    assert (r.code, r.reason) == (400, "Malformed body: not JSON or no items array")
    assert size(kam, "jobs") == 0


def test_receive_snippet_unknown_queue_and_empty(node: tuple[Kamailio, BusThread]) -> None:
    kam, f = node
    r = send_json(f, kam, {"queue": "nope", "items": [{"key": "k", "value": "v"}]})
    assert (r.code, r.reason) == (404, "No such queue")
    r = send_json(f, kam, {"queue": "jobs", "items": []})
    assert (r.code, json.loads(r.body)) == (200, {"applied": 0, "duplicates": 0})
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

    # 500 items (DQ_MAX_ITEMS here) in one ~50 kB message: all added, in order
    items = [{"id": str(i), "key": f"k{i}", "value": f"v{i:05d}" + "x" * 40} for i in range(500)]
    doc = {"queue": "other", "items": items, "origin": str(f.local), "epoch": "01"}
    body = json.dumps(doc)
    assert 40000 < len(body) <= 60000
    r = send_json(f, kam, body)
    assert (r.code, json.loads(r.body)) == (200, {"applied": 500, "duplicates": 0})
    assert kam_fetch_all(kam, "other") == [
        (it["key"].encode(), it["value"].encode()) for it in items
    ]  # fmt: skip

    # one more than DQ_MAX_ITEMS: refused, nothing added
    items.append({"key": "one", "value": "more"})
    r = send_json(f, kam, {"queue": "other", "items": items})
    assert (r.code, r.reason) == (400, "Malformed body: too many items")
    assert size(kam, "other") == 0


def test_receive_snippet_loop_limit(kamailio: KamailioFactory) -> None:
    """5.6.3 cuts a while loop at max_while_loops (default 100) and runs on after it; the
    snippet notices and answers 500 with nothing added instead of a 200 for part of it."""
    kam = kamailio.start(dqueue_config(max_while_loops=None))
    with BusThread(uri(udp_port()), kuri(kam), **BUS) as f:
        assert f.wait_status(kuri(kam), NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE
        items = [{"id": str(i), "key": f"k{i}", "value": "v"} for i in range(101)]
        r = send_json(f, kam, {"queue": "jobs", "items": items})
        assert (r.code, r.reason) == (500, "max_while_loops below the number of items")
        assert size(kam, "jobs") == 0
        r = send_json(f, kam, {"queue": "jobs", "items": items[:100]})
        assert (r.code, json.loads(r.body)) == (200, {"applied": 100, "duplicates": 0})
        assert size(kam, "jobs") == 100
    assert "runaway while" in kam.log()
