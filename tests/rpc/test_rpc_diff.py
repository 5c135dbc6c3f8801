"""Differential tests: pymqueue's RPC server against the REAL Kamailio 5.6.3 ``jsonrpcs``.

Both sides get the same queue definitions and the same raw JSON-RPC request (over HTTP and
over the Unix datagram socket); replies are compared field by field (``jsonrpc``, ``result`` /
``error``, ``id``) together with the HTTP status line. The documented divergences
(``docs/kamailio.md``, "RPC (rpc.py, kamailio/rpc_methods.py)") are asserted explicitly, on
both sides.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fix_kamailio import Kamailio
from kamailio_mq import KamailioMq

from pymqueue.config import InstanceConfig, RpcConfig
from pymqueue.instance import Instance
from pymqueue.kamailio.modparam import parse_mqueue
from pymqueue.rpc import RpcServer

pytestmark = pytest.mark.kamailio

Start = Callable[..., KamailioMq]

DEFS = ["name=r1", "name=r2", "name=r3"]


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status, None over the datagram socket
    reason: str | None
    doc: Any  # parsed reply, or None when there was no (parseable) reply
    raw: bytes


def http_post(port: int, body: bytes, timeout: float = 10.0) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/RPC", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except (http.client.RemoteDisconnected, ConnectionError, TimeoutError):
        # closed without an answer, or no answer before the deadline
        return Answer(None, None, None, b"")
    finally:
        conn.close()
    doc = None
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
    return Answer(resp.status, resp.reason, doc, raw)


def dgram_post(path: str, body: bytes, client_dir: str, timeout: float = 3.0) -> Answer:
    me = os.path.join(client_dir, f"d{secrets.token_hex(4)}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(me)
        try:
            s.settimeout(timeout)
            s.sendto(body, path)
            try:
                raw = s.recv(1 << 20)
            except TimeoutError:
                return Answer(None, None, None, b"")  # no reply (the wait is the deadline)
        finally:
            os.unlink(me)
    doc = None
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
    return Answer(None, None, doc, raw)


class Pair:
    """The same definitions in a real Kamailio and in a pymqueue Instance."""

    def __init__(self, kam: KamailioMq, inst: Instance) -> None:
        self.kam = kam
        self.inst = inst

    @property
    def k(self) -> Kamailio:
        return self.kam.instance

    @property
    def server(self) -> RpcServer:
        assert self.inst.rpc is not None
        return self.inst.rpc

    def add(self, q: str, key: str | bytes, val: str | bytes) -> None:
        assert self.kam.add(q, key, val) == 1
        self.inst.queue(q).add(key, val)

    def both(self, body: bytes | dict[str, Any], timeout: float = 10.0) -> tuple[Answer, Answer]:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        addr = self.server.http_address
        assert addr is not None
        return http_post(self.k.tcp_port, raw, timeout), http_post(addr[1], raw, timeout)

    def both_dgram(self, body: bytes | dict[str, Any]) -> tuple[Answer, Answer]:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        path = self.server.unix_path
        assert path is not None
        return (
            dgram_post(str(self.k.dgram_path), raw, str(self.k.workdir)),
            dgram_post(path, raw, str(self.k.workdir)),
        )

    def same(self, method: str, params: Any = None, id: Any = 1, *, dgram: bool = True) -> Any:
        """Same call on both sides over both transports; the replies must be identical."""
        doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            doc["params"] = params
        if id is not ...:
            doc["id"] = id
        kam, ours = self.both(doc)
        assert kam.doc is not None, kam
        assert ours.doc == kam.doc
        assert (ours.status, ours.reason) == (kam.status, kam.reason)
        if dgram:
            kd, od = self.both_dgram(doc)
            assert kd.doc == kam.doc
            assert od.doc == kam.doc
        return kam.doc


@pytest.fixture
def pair_factory(kamailio_mq: Start, namespace: str) -> Iterator[Callable[[list[str]], Pair]]:
    instances: list[Instance] = []

    def make(defs: list[str]) -> Pair:
        kam = kamailio_mq([f'modparam("mqueue", "mqueue", "{d}")' for d in defs])
        unix = os.path.join(str(kam.instance.workdir), "pmq-rpc.sock")
        config = InstanceConfig(
            queues=tuple(parse_mqueue(d) for d in defs),
            rpc=RpcConfig(http=("127.0.0.1", 0), unix=unix),
        )
        inst = Instance(config, namespace=namespace)
        instances.append(inst)
        inst.start()
        return Pair(kam, inst)

    yield make
    for inst in instances:
        inst.stop()


@pytest.fixture
def pair(pair_factory: Callable[[list[str]], Pair]) -> Pair:
    return pair_factory(DEFS)


# ---------------------------------------------------------------------------------------------
# identical behaviour


def test_t26_t27_get_size(pair: Pair) -> None:
    assert pair.same("mqueue.get_size", ["r1"])["result"] == {"name": "r1", "size": 0}
    for i in range(3):
        pair.add("r1", f"key{i}", f"val {i}")
    assert pair.same("mqueue.get_size", ["r1"])["result"] == {"name": "r1", "size": 3}
    pair.same("mqueue.get_size", {"name": "r1"})  # R26
    pair.same("mqueue.get_size", {"zz": "r2", "name": "r1"})  # names ignored, order counts
    pair.same("mqueue.get_size", ["r1", "extra", 5])  # R05d
    assert pair.same("mqueue.get_size", ["nope"])["error"] == {
        "code": 404,
        "message": "No such queue",
    }
    bad_params: list[Any] = [[], {}, [5], [None], [["r1"]], [""], ["R1"], ["r1 "]]
    for params in bad_params:
        pair.same("mqueue.get_size", params)
    pair.same("mqueue.get_size")


def test_t28_get_sizes(pair: Pair) -> None:
    pair.add("r3", "k", "v")
    pair.add("r1", "a", "1")
    pair.add("r1", "b", "2")
    result = pair.same("mqueue.get_sizes")["result"]
    assert [q["name"] for q in result] == ["r3", "r2", "r1"]
    pair.same("mqueue.get_sizes", ["x", 1])


def test_t28_get_sizes_without_queues(pair_factory: Callable[[list[str]], Pair]) -> None:
    p = pair_factory([])
    assert p.same("mqueue.get_sizes")["result"] == []


def test_t29_t30_fetch(pair: Pair) -> None:
    for i in range(3):
        pair.add("r1", f"key{i}", f"val {i}")
    for i in range(3):
        assert pair.same("mqueue.fetch", ["r1"], dgram=False)["result"] == {
            "key": f"key{i}",
            "val": f"val {i}",
        }
    assert pair.same("mqueue.get_size", ["r1"])["result"]["size"] == 0
    assert pair.same("mqueue.fetch", ["r1"])["error"] == {"code": 404, "message": "Empty queue"}
    for params in (["nope"], [], [7], [""], {"a": "nope"}):
        assert pair.same("mqueue.fetch", params)["error"]["code"] == 500
    pair.same("mqueue.fetch")


def test_fetch_text_escaping_and_size(pair: Pair) -> None:
    items = [
        ('q"uo\\te', "tab\there"),
        ("utf8 é€😀", "ctrl \x01\x1f end"),
        ("big", "x" * 8000),  # R27
    ]
    for k, v in items:
        pair.add("r2", k, v)
    for k, v in items:
        assert pair.same("mqueue.fetch", ["r2"], dgram=False)["result"] == {"key": k, "val": v}


def test_fetch_over_the_datagram_socket(pair: Pair) -> None:
    pair.add("r1", "k", "v")
    kd, od = pair.both_dgram(
        {"jsonrpc": "2.0", "method": "mqueue.fetch", "params": ["r1"], "id": 4}
    )
    assert kd.doc == od.doc == {"jsonrpc": "2.0", "result": {"key": "k", "val": "v"}, "id": 4}


def test_system_methods(pair: Pair) -> None:
    # the mqueue help texts are Kamailio's (spec section 6); system.* ones are our own words
    for name in ("mqueue.fetch", "mqueue.get_size", "mqueue.get_sizes"):
        pair.same("system.methodHelp", [name])
    for params in (["nope"], [], [5]):
        pair.same("system.methodHelp", params)
    pair.same("system.methodSignature", ["mqueue.fetch"])
    kam, ours = pair.both({"jsonrpc": "2.0", "method": "system.listMethods", "id": 1})
    assert kam.doc is not None
    assert ours.doc is not None
    kam_mq = {m for m in kam.doc["result"] if m.startswith("mqueue.")}
    our_mq = {m for m in ours.doc["result"] if m.startswith("mqueue.")}
    assert our_mq == kam_mq | {"mqueue.stats"}  # stats: a pymqueue extension
    assert ours.doc["result"] == sorted(ours.doc["result"])
    assert kam.doc["result"] == sorted(kam.doc["result"])


def test_protocol_details(pair: Pair) -> None:
    pair.same("nope")  # 500 Method Not Found, HTTP status 500 too
    pair.same("mqueue.get_size", ["r1"], id=...)  # notification: answered, without id
    for rid in ("abc", "", -3, 12345678901234):
        pair.same("mqueue.get_size", ["r1"], id=rid)
    # text after the JSON value is ignored by both
    body = json.dumps({"jsonrpc": "2.0", "method": "mqueue.get_sizes", "id": 2}).encode()
    for tail in (b"\n", b"\x00", b" trailing"):
        kam, ours = pair.both(body + tail)
        assert kam.doc is not None
        assert ours.doc == kam.doc


# ---------------------------------------------------------------------------------------------
# documented divergences, checked on both sides


def test_divergence_empty_key_or_value(pair: Pair) -> None:
    """T31: Kamailio answers 500 and loses the item; pymqueue returns it."""
    for k, v in (("", "v0"), ("k1", ""), ("k2", "v2")):
        pair.add("r1", k, v)
    for expected in ({"key": "", "val": "v0"}, {"key": "k1", "val": ""}):
        kam, ours = pair.both(
            {"jsonrpc": "2.0", "method": "mqueue.fetch", "params": ["r1"], "id": 1}
        )
        assert kam.doc is not None
        assert kam.doc["error"] == {"code": 500, "message": "Unexpected error (result)"}
        assert ours.doc is not None
        assert ours.doc["result"] == expected
    assert pair.same("mqueue.fetch", ["r1"], dgram=False)["result"] == {"key": "k2", "val": "v2"}


def test_divergence_non_utf8_bytes(pair: Pair) -> None:
    """Kamailio prints raw bytes (not JSON); pymqueue adds ``*_b64`` with the exact bytes."""
    pair.add("r1", "k", b"bin\xff")
    kam, ours = pair.both({"jsonrpc": "2.0", "method": "mqueue.fetch", "params": ["r1"], "id": 1})
    assert b'"bin\xff"' in kam.raw
    assert kam.doc is None  # not valid UTF-8, so not JSON
    assert ours.doc is not None
    assert ours.doc["result"] == {"key": "k", "val": "bin\ufffd", "val_b64": "Ymlu/w=="}


def test_divergence_parse_error(pair: Pair) -> None:
    """Kamailio closes the HTTP connection / sends no datagram; pymqueue answers -32700."""
    for body in (b"garbage", b'{"jsonrpc":"2.0","method":"mqueue.get_sizes","id":1', b""):
        kam, ours = pair.both(body, timeout=3.0)
        assert kam.status is None
        assert ours.status == 400
        assert ours.doc is not None
        assert ours.doc["error"]["code"] == -32700
        kd, od = pair.both_dgram(body)
        assert kd.doc is None
        assert od.doc is not None
        assert od.doc["error"]["code"] == -32700
    pair.same("mqueue.get_sizes")  # both still up


def test_divergence_invalid_request(pair: Pair) -> None:
    """Kamailio answers ``"result": {}`` (200) without running anything; we answer -32600."""
    bad: list[Any] = [
        {"method": "mqueue.get_sizes", "id": 1},
        {"jsonrpc": "1.0", "method": "mqueue.get_sizes", "id": 1},
        {"jsonrpc": "2.0", "id": 1},
        [{"jsonrpc": "2.0", "method": "mqueue.get_sizes", "id": 1}],  # a batch
        "str",
    ]
    for doc in bad:
        kam, ours = pair.both(json.dumps(doc).encode())
        assert kam.status == 200
        assert kam.doc is not None
        assert kam.doc["result"] == {}
        assert ours.status == 400
        assert ours.doc is not None
        assert ours.doc["error"]["code"] == -32600
        assert isinstance(ours.doc, dict)
    for params in ("r1", 5):  # params neither list nor object: Kamailio {}, we -32602
        doc = {"jsonrpc": "2.0", "method": "mqueue.get_size", "params": params, "id": 1}
        kam, ours = pair.both(doc)
        assert kam.doc is not None
        assert kam.doc["result"] == {}
        assert ours.doc is not None
        assert ours.doc["error"]["code"] == -32602


def test_divergence_id_types(pair: Pair) -> None:
    """Kamailio turns a null/array/object id into 0 and true into 1; we echo null, refuse
    the others (JSON-RPC 2.0 allows only string, number, null)."""
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": "mqueue.get_size", "params": ["r1"]}
    doc["id"] = None
    kam, ours = pair.both(doc)
    assert kam.doc is not None
    assert ours.doc is not None
    assert kam.doc["id"] == 0
    assert ours.doc["id"] is None
    assert ours.doc["result"] == kam.doc["result"]
    doc["id"] = [1]
    kam, ours = pair.both(doc)
    assert kam.doc is not None
    assert kam.doc["id"] == 0
    assert ours.doc is not None
    assert ours.doc["error"]["code"] == -32600


def test_divergence_null_params(pair: Pair) -> None:
    """``"params": null``: Kamailio answers an empty result without running the method;
    we treat it as absent."""
    doc = {"jsonrpc": "2.0", "method": "mqueue.get_sizes", "params": None, "id": 1}
    kam, ours = pair.both(doc)
    assert kam.doc is not None
    assert kam.doc["result"] == []  # nothing listed although r1..r3 exist
    assert ours.doc is not None
    assert [q["name"] for q in ours.doc["result"]] == ["r3", "r2", "r1"]
