"""Kamailio 5.6.3 running the documented ``mqueue`` channel snippets, for the tests of
pymqueue's distributed queues with Kamailio (``tests/dmq/test_dqueue_kamailio*.py``).

:func:`dqueue_config` is a complete Kamailio config around ``include_file`` of
``docs/kamailio/dqueue-send.cfg`` and ``dqueue-receive.cfg`` (the files as documented) plus a
test driver: a SIP MESSAGE to ``sip:send@`` runs the send snippet on the items given in hex
headers (:func:`kam_send`); one to ``sip:fetch@`` drains a queue with ``mq_fetch`` and returns
the items in hex, binary safe (:func:`kam_fetch_all`). Queues ``jobs`` and ``other``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from fix_kamailio import Kamailio, SipReply, base_config

SNIPPETS = Path(__file__).resolve().parents[1] / "docs" / "kamailio"
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

# test driver: mq_fetch X-Q (hex) until empty, or X-Limit items; one
# "X-Item: <hex key>:<hex value>" each
route[T_FETCH] {
	$var(t_q) = $(hdr(X-Q){s.decode.hexa});
	$var(t_max) = -1;
	if ($hdr(X-Limit) != $null) {
		$var(t_max) = $(hdr(X-Limit){s.int});
	}
	$var(t_c) = 0;
	while ($var(t_c) != $var(t_max) && mq_fetch("$var(t_q)")) {
		$var(t_c) = $var(t_c) + 1;
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


def dqueue_config(max_while_loops: int | None = 1000, max_items: int = 500) -> str:
    """The config above; ``max_while_loops=None``: Kamailio's default (100); ``max_items``:
    the receive snippet's ``DQ_MAX_ITEMS``."""
    text = SCRIPT.replace("@RECEIVE@", str(RECEIVE_CFG)).replace("@SEND@", str(SEND_CFG))
    text = text.replace("#!define DQ_MAX_ITEMS 500\n", f"#!define DQ_MAX_ITEMS {max_items}\n")
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


def kam_fetch_all(kam: Kamailio, q: str | bytes, limit: int | None = None
                  ) -> list[tuple[bytes, bytes]]:  # fmt: skip
    """Drain K's queue ``q`` with ``mq_fetch`` in its SIP worker (at most ``limit`` items):
    [(key, value)] in order."""
    hdrs = [("X-Q", _hex(q))]
    if limit is not None:
        hdrs.append(("X-Limit", str(limit)))
    reply = kam.sip_request("MESSAGE", hdrs, ruri=f"sip:fetch@127.0.0.1:{kam.sip_port}")
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
