"""``GET /metrics`` scraped from a real ``pymqueue serve`` (queues, DMQ, RPC), parsed with
prometheus_client's own parser, the values checked against ``Queue.stats()``."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmq_helpers import udp_port, uri
from fix_postgres import free_port
from prometheus_client.parser import text_string_to_metric_families

from pymqueue.dmq import BusThread, NodeStatus
from pymqueue.queue.sync import Queue


@contextlib.contextmanager
def _serve(tmp_path: Path, namespace: str, dmq: str) -> Iterator[tuple[int, str, str]]:
    """A ``pymqueue serve`` with queues m1 (size 5) and m2, RPC on HTTP and a DMQ bus (extra
    ``[dmq]`` lines ``dmq``) whose notification peer is a bus of this test; yields (rpc port,
    instance URI, peer URI)."""
    rpc_port, i_uri, peer_uri = free_port(), uri(udp_port()), uri(udp_port())
    cfg = tmp_path / "pmq.toml"
    cfg.write_text(
        'modparam = [["mqueue", "name=m1;size=5"], ["mqueue_name", "m2"]]\n'
        f"[rpc]\nport = {rpc_port}\n\n"
        f'[dmq]\nserver_address = "{i_uri}"\nnotification_address = "{peer_uri}"\n'
        f"ping_interval = 5\n{dmq}"
    )
    with BusThread(peer_uri, None, ping_interval=5.0, fr_timer=1.0) as peer:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pymqueue", "serve", "-c", str(cfg), "--namespace", namespace],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            assert line.startswith("pymqueue: ready"), (line, proc.stderr)
            assert peer.wait_status(i_uri, NodeStatus.ACTIVE, timeout=10) is NodeStatus.ACTIVE
            yield rpc_port, i_uri, peer_uri
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


@pytest.fixture
def served(tmp_path: Path, namespace: str) -> Iterator[tuple[int, str, str]]:
    with _serve(tmp_path, namespace, "fr_timer = 1.0\n") as s:
        yield s


def _http(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def _rpc(port: int, method: str, params: list[object]) -> int:
    req = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    return _http(port, "POST", "/RPC", json.dumps(req).encode())[0]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, ctype, body = _http(port, "GET", "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=")  # the Prometheus text format
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_match_stats_dmq_and_rpc(served: tuple[int, str, str], namespace: str) -> None:
    port, i_uri, peer_uri = served
    m1 = Queue("m1", create=False, namespace=namespace)
    m2 = Queue("m2", create=False, namespace=namespace)
    try:
        for i in range(9):
            m1.add(f"k{i}", "x" * i)  # size 5: four dropped
        assert m1.fetch() is not None
        m2.add_many([("a", "1"), ("b", "22")])
        assert _rpc(port, "mqueue.get_size", ["m1"]) == 200
        assert _rpc(port, "mqueue.get_size", ["m1"]) == 200
        assert _rpc(port, "mqueue.get_size", ["nope"]) == 404
        assert _rpc(port, "no.such.method", []) == 500
        stats = {"m1": m1.stats(), "m2": m2.stats()}
        got = _scrape(port)
    finally:
        m1.close()
        m2.close()

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    for qname, s in stats.items():
        assert value("pymqueue_queue_items", queue=qname) == s.items
        assert value("pymqueue_queue_bytes", queue=qname) == s.bytes
        assert value("pymqueue_queue_capacity_bytes", queue=qname) == s.capacity
        assert value("pymqueue_queue_max_items", queue=qname) == s.max_items
        assert value("pymqueue_queue_high_water_items", queue=qname) == s.high_water
        for field in ("added", "fetched", "dropped", "rejected", "replaced", "recoveries"):
            assert value(f"pymqueue_queue_{field}_total", queue=qname) == getattr(s, field)
        assert value("pymqueue_queue_waiters", queue=qname, side="get") == s.getters_waiting
        assert value("pymqueue_queue_waiters", queue=qname, side="put") == s.putters_waiting
    assert stats["m1"].dropped == 4
    assert stats["m1"].items == 4
    assert stats["m2"].bytes == 5

    node = i_uri.removeprefix("sip:")
    local = [k for k in got if k[0] == "pymqueue_dmq_node_status" and ("local", "true") in k[1]]
    assert local, "the instance's own node is not exported"
    assert value("pymqueue_dmq_nodes", status="active") >= 1
    peer_active = [
        k for k in got
        if k[0] == "pymqueue_dmq_node_status" and ("status", "active") in k[1]
        and ("local", "false") in k[1] and got[k] == 1
    ]  # fmt: skip
    assert peer_active, f"the peer {peer_uri} is not exported as active (local {node})"
    assert value("pymqueue_dmq_messages_received_total") >= 1
    assert value("pymqueue_dmq_messages_sent_total") >= 1

    assert value("pymqueue_rpc_requests_total", method="mqueue.get_size", outcome="ok") == 2
    assert value("pymqueue_rpc_requests_total", method="mqueue.get_size", outcome="error") == 1
    assert value("pymqueue_rpc_requests_total", method="unknown", outcome="error") == 1


def test_other_gets_are_still_refused(served: tuple[int, str, str]) -> None:
    status, _, body = _http(served[0], "GET", "/RPC")
    assert status == 405
    assert b"use HTTP POST" in body


def test_bus_load_metrics_and_limits_from_the_config(tmp_path: Path, namespace: str) -> None:
    """``max_deferred``/``reply_cache_size`` of the ``[dmq]`` table reach the bus, and its
    load figures (reply cache, evictions, pending, deferred) are exported."""
    # fr_timer 30: cached replies live 34 s, so none expires between the sends and the scrape
    dmq = "fr_timer = 30.0\nmax_deferred = 7\nreply_cache_size = 33\n"
    with (
        _serve(tmp_path, namespace, dmq) as (port, i_uri, _),
        BusThread(uri(udp_port()), i_uri, ping_interval=5.0, fr_timer=5.0) as sender,
    ):
        sender.wait_status(i_uri, NodeStatus.ACTIVE, timeout=10)
        for i in range(40):  # no such channel: each answered 404, and the reply cached
            assert sender.send("nobody", i_uri, f"r{i}").code == 404
        got = _scrape(port)

    def value(name: str) -> float:
        return got[(name, ())]

    assert value("pymqueue_dmq_max_deferred") == 7
    assert value("pymqueue_dmq_reply_cache_max_entries") == 33
    assert value("pymqueue_dmq_reply_cache_entries") == 33  # full: 40 requests + notifications
    assert value("pymqueue_dmq_reply_cache_evicted_total") >= 40 - 33
    assert value("pymqueue_dmq_deferred_requests") == 0
    assert value("pymqueue_dmq_deferred_dropped_total") == 0
    assert value("pymqueue_dmq_overloaded_total") == 0
    assert value("pymqueue_dmq_pending_transactions") >= 0
    assert value("pymqueue_dmq_read_batches_total") >= 1
    assert value("pymqueue_dmq_max_batch") >= 1
    assert value("pymqueue_dmq_receive_buffer_bytes") > 0
    assert value("pymqueue_dmq_messages_received_total") >= 40
