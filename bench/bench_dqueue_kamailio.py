"""Kamailio 5.6.3 on pymqueue's distributed queues: how many items per message, how fast.

``python -m pytest bench/bench_dqueue_kamailio.py -s -p no:cacheprovider`` prints two
Markdown tables (docs/dmq.md, "Kamailio on the same queues", quotes them):

* ``test_receive_rate``: a pymqueue :class:`BusThread` sends one contract message of N items
  (``{"queue":"jobs","items":[{"id","key","value"}…],"origin","epoch"}``) to a Kamailio node
  running ``docs/kamailio/dqueue-receive.cfg`` and waits for the 200; the time is the round
  trip, Kamailio's script runs in it (parse, check every item, de-duplicate, ``mq_add``).
  Beside it, the obvious script (``jansson_get("items[i].key", $rb)`` per field, which
  re-parses the whole body each time) on the same node, to show why the snippet decodes the
  items once (``jansson_xdecode``).
* ``test_send_rate``: a SIP MESSAGE makes Kamailio's script build N items with
  ``docs/kamailio/dqueue-send.cfg`` and send them; the time runs from the MESSAGE until
  the pymqueue handler has the KDMQ request.

Medians of 5 messages per size, values of 8 and 64 bytes; sizes whose body would exceed
60 000 bytes are skipped. Printed, never asserted (no timed asserts).
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dmq_helpers import udp_port, uri
from fix_kamailio import (  # noqa: F401 - kamailio, kamailio_bin: fixtures
    Kamailio,
    KamailioFactory,
    base_config,
    kamailio,
    kamailio_bin,
)

from pymqueue.dmq import BusThread, IncomingRequest, NodeStatus

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "kamailio"
SIZES = (1, 10, 100, 300, 600, 1000, 1500)
VALUES = (8, 64)
ROUNDS = 5
MAX_BODY = 60000

CONFIG = """
max_while_loops=100000
pv_buffer_size=65536
#!define DQ_MAX_ITEMS 5000
modparam("tm", "fr_timer", 30000)
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)
modparam("htable", "htable", "dqseen=>size=16;autoexpire=600")
modparam("mqueue", "mqueue", "name=jobs")
include_file "@DIR@/dqueue-receive.cfg"
include_file "@DIR@/dqueue-send.cfg"

request_route {
	if (is_method("KDMQ") && $rU == "mqueue") {
		route(DQ_RECEIVE);
		exit;
	}
	if (is_method("KDMQ") && $rU == "naive") {
		route(NAIVE);
		exit;
	}
	if (is_method("KDMQ")) {
		dmq_handle_message();
		exit;
	}
	# X-N items "k<i>" = X-Pad, ids "<i>", to X-Node
	$var(dq_max) = 0;
	$var(dq_queue) = "jobs";
	route(DQ_NEW);
	$var(i) = 0;
	$var(n) = $(hdr(X-N){s.int});
	while ($var(i) < $var(n)) {
		$var(dq_id) = "" + $var(i);
		$var(dq_key) = "k" + $var(i);
		$var(dq_value) = $hdr(X-Pad);
		route(DQ_ADD);
		$var(i) = $var(i) + 1;
	}
	$var(dq_node) = $hdr(X-Node);
	route(DQ_SEND);
	sl_send_reply("200", "OK");
	exit;
}

# the obvious script: one jansson_get per field, each parsing the whole body again
route[NAIVE] {
	jansson_array_size("items", "$rb", "$var(n)");
	jansson_get("queue", "$rb", "$var(q)");
	$var(i) = 0;
	while ($var(i) < $var(n)) {
		jansson_get("items[$var(i)].key", "$rb", "$var(k)");
		jansson_get("items[$var(i)].value", "$rb", "$var(v)");
		jansson_get("items[$var(i)].id", "$rb", "$var(id)");
		mq_add("$var(q)", "$var(k)", "$var(v)");
		$var(i) = $var(i) + 1;
	}
	sl_send_reply("200", "OK");
	exit;
}
"""


@pytest.fixture
def setup(kamailio: KamailioFactory) -> Iterator[tuple[Kamailio, BusThread]]:  # noqa: F811
    cfg = base_config(
        CONFIG.replace("@DIR@", str(SNIPPETS)),
        modules=["tm", "dmq", "textops", "htable", "jansson", "mqueue"],
    )
    kam = kamailio.start(cfg, extra_args=["-m", "256"])
    ku = f"sip:127.0.0.1:{kam.sip_port}"
    with BusThread(uri(udp_port()), ku, ping_interval=5, fr_timer=60) as f:
        assert f.wait_status(ku, NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE
        yield kam, f


def _header() -> None:
    print(f"\nload average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")


def test_receive_rate(setup: tuple[Kamailio, BusThread]) -> None:
    kam, f = setup
    ku = f"sip:127.0.0.1:{kam.sip_port}"
    _header()
    print(
        "| value | items/message | body bytes | snippet ms (items/s) "
        "| per-field jansson_get ms (items/s) |"
    )
    print("|---|---|---|---|---|")
    ids = iter(range(1, 10**9))
    for vlen in VALUES:
        for n in SIZES:
            row: list[str] = []
            body = ""
            for channel in ("mqueue", "naive"):
                times: list[float] = []
                for _ in range(ROUNDS):
                    items = []
                    for _ in range(n):
                        i = next(ids)
                        items.append({"id": str(i), "key": f"k{i}", "value": "x" * vlen})
                    doc: dict[str, Any] = {
                        "queue": "jobs", "items": items, "origin": "sip:127.0.0.1:1",
                        "epoch": "9f3a01",
                    }  # fmt: skip
                    body = json.dumps(doc, separators=(",", ":"))
                    if len(body) > MAX_BODY:
                        break
                    t0 = time.perf_counter()
                    r = f.send(channel, ku, body, "application/json", timeout=120)
                    times.append(time.perf_counter() - t0)
                    assert r.code == 200, r
                if not times:
                    break
                med = statistics.median(times)
                row.append(f"{med * 1000:.2f} ({n / med:,.0f})")
                if med > 2.0:  # the per-field script is quadratic: stop before minutes
                    break
            if not row:
                continue
            while len(row) < 2:
                row.append("not run (previous size took > 2 s)")
            print(f"| {vlen} B | {n} | {len(body)} | {row[0]} | {row[1]} |", flush=True)
            kam.jsonrpc("mqueue.get_size", "jobs")


def test_send_rate(setup: tuple[Kamailio, BusThread]) -> None:
    kam, f = setup
    got: queue.Queue[tuple[float, IncomingRequest]] = queue.Queue()
    f.register("mqueue", lambda req: got.put((time.perf_counter(), req)))
    _header()
    print("| value | items/message | body bytes | MESSAGE -> pymqueue handler ms (items/s) |")
    print("|---|---|---|---|")
    for vlen in VALUES:
        for n in SIZES:
            if n * (40 + vlen) > MAX_BODY:  # {"id":"…","key":"k…","value":"…"},
                break
            times: list[float] = []
            body = b""
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                reply = kam.sip_request(
                    "MESSAGE",
                    [("X-N", str(n)), ("X-Pad", "x" * vlen), ("X-Node", str(f.local))],
                    timeout=60,
                )
                t1, req = got.get(timeout=60)
                assert reply.status == 200, reply
                body = req.body
                assert len(json.loads(body)["items"]) == n
                times.append(t1 - t0)
            med = statistics.median(times)
            print(f"| {vlen} B | {n} | {len(body)} | {med * 1000:.2f} ({n / med:,.0f}) |",
                  flush=True)  # fmt: skip


FORWARD_ITEMS = 20_000
FORWARD_ROUNDS = 3
BATCHES = (None, 1000, 300, 100, 30)


@pytest.mark.parametrize("batch_items", BATCHES, ids=[f"batch_items={b}" for b in BATCHES])
def test_forward_rate(
    kamailio: KamailioFactory,  # noqa: F811
    tmp_path: Path,
    batch_items: int | None,
) -> None:
    """The real forwarder: a ``pymqueue serve`` node P whose queue ``jobs`` has ``dmq =
    "owner"``, ``owner`` a Kamailio node K running the receive snippet (DQ_MAX_ITEMS 2000,
    max_while_loops 2000), ``batch_items`` as given. 20 000 items (key ``k``, 1-byte value)
    added to P's outbox in one call; the time until K's ``mqueue.get_size`` shows all of them
    (polled every 20 ms). K's queue is emptied between rounds (not timed)."""
    from dqueue_helpers import nodes, wait_for  # noqa: PLC0415
    from kamailio_dqueue import dqueue_config, kam_fetch_all, kuri, size  # noqa: PLC0415

    kam = kamailio.start(dqueue_config(max_while_loops=2000, max_items=2000))
    items = [(b"k", b"x")] * FORWARD_ITEMS
    rates: list[float] = []
    load0 = os.getloadavg()[0]
    with nodes(tmp_path, os.environ["PYMQUEUE_NAMESPACE"]) as group:
        p = group.add("p", notify=kuri(kam), owner=kuri(kam), fr=5, batch_items=batch_items)
        p.start()
        wait_for(p.stats, lambda s: s["owner"] == kuri(kam), 30, "K is P's owner")
        for _ in range(FORWARD_ROUNDS):
            t0 = time.perf_counter()
            p.queue.add_many(items)
            wait_for(lambda: size(kam, "jobs"), lambda k: k >= FORWARD_ITEMS, 120, "all on K")
            rates.append(FORWARD_ITEMS / (time.perf_counter() - t0))
            while kam_fetch_all(kam, "jobs", limit=1000):
                pass
        s = p.stats()
    per_msg = s["forwarded"] / max(1, s["batches"])
    print(
        f"\n| {batch_items} | {per_msg:,.0f} | {statistics.median(rates):,.0f} "
        f"({min(rates):,.0f}-{max(rates):,.0f}) | {s['resent']} | "
        f"{load0:.2f}-{os.getloadavg()[0]:.2f} |",
        flush=True,
    )
