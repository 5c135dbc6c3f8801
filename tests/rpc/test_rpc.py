"""RpcServer: JSON-RPC conformance, robustness, transports, and the mqueue.* methods.

Real sockets and threads throughout; the mqueue tests use real shared-memory queues held by a
minimal instance object (a ``queues`` mapping, Kamailio registry order: newest first).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import random
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from pymqueue import Queue
from pymqueue.errors import ConfigError, RpcError
from pymqueue.kamailio.rpc_methods import InstanceLike, register_mqueue_rpc
from pymqueue.rpc import RpcServer

# ---------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class Conf:
    http: tuple[str, int] | None = ("127.0.0.1", 0)
    unix: str | None = None


@dataclass
class FakeInstance:
    """Not a mock: holds real ``pymqueue.Queue`` objects, like ``Instance.queues``."""

    queues: dict[str, Any] = field(default_factory=dict)


def mq_server(instance: InstanceLike | None, config: Conf | None, **limits: Any) -> RpcServer:
    """A server carrying Kamailio's ``mqueue.*`` for ``instance``, as an ``Instance`` builds it."""
    s = RpcServer(config, **limits)
    register_mqueue_rpc(s, instance)
    return s


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Short path: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="pmqrpc", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _boom(*_: Any) -> Any:
    raise RuntimeError("boom")


def add_test_methods(server: RpcServer) -> None:
    server.register("test.echo", lambda *a: list(a), "Echo the parameters.")
    server.register("test.two", lambda a, b: [a, b], "Exactly two parameters.")
    server.register("test.boom", _boom, "Raises.")
    server.register("test.notjson", lambda: {1, 2}, "Returns a set.")
    server.register("test.rpcerror", lambda: _raise(RpcError(418, "teapot")), "RpcError.")


def _raise(exc: Exception) -> Any:
    raise exc


@pytest.fixture(scope="module")
def server() -> Iterator[RpcServer]:
    """One server for the conformance tests (each test also checks it still answers)."""
    d = tempfile.mkdtemp(prefix="pmqrpc", dir="/tmp")
    s = mq_server(FakeInstance(), Conf(unix=os.path.join(d, "rpc.sock")))
    add_test_methods(s)
    s.start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def post(
    server: RpcServer, body: bytes, path: str = "/RPC", method: str = "POST"
) -> tuple[int, str, dict[str, str], bytes]:
    addr = server.http_address
    assert addr is not None
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.reason, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def rpc_http(server: RpcServer, doc: Any) -> dict[str, Any]:
    status, _, _, body = post(server, json.dumps(doc).encode())
    reply = json.loads(body)
    assert isinstance(reply, dict)
    if "error" in reply:
        code = reply["error"]["code"]
        assert status == (code if 100 <= code <= 599 else status)
    else:
        assert status == 200
    return reply


def req(method: str, params: Any = None, id: Any = 1, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if params is not None:
        doc["params"] = params
    if id is not ...:
        doc["id"] = id
    return doc


def dgram(path: str, data: bytes, client_dir: str, timeout: float = 10) -> bytes:
    me = os.path.join(client_dir, f"c{threading.get_ident()}.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(me)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(me)
        s.settimeout(timeout)
        s.sendto(data, path)
        return s.recv(1 << 20)
    finally:
        s.close()
        os.unlink(me)


def good(server: RpcServer) -> None:
    """The server still answers a good request over HTTP."""
    assert rpc_http(server, req("test.echo", ["ok"], id=99)) == {
        "jsonrpc": "2.0",
        "result": ["ok"],
        "id": 99,
    }


# ---------------------------------------------------------------------------------------------
# JSON-RPC conformance (HTTP)


def test_positional_and_named_params(server: RpcServer) -> None:
    assert rpc_http(server, req("test.echo", [1, "a", None]))["result"] == [1, "a", None]
    # jsonrpcs semantics: an object's values in document order, names ignored (R26)
    assert rpc_http(server, req("test.echo", {"z": 1, "a": 2}))["result"] == [1, 2]
    assert rpc_http(server, req("test.echo"))["result"] == []
    assert rpc_http(server, req("test.echo", None))["result"] == []
    doc = req("test.echo")
    doc["params"] = None
    assert rpc_http(server, doc)["result"] == []


@pytest.mark.parametrize("rid", [1, -3, 12345678901234, 1.5, "abc", "", None])
def test_id_is_echoed(server: RpcServer, rid: Any) -> None:
    reply = rpc_http(server, req("test.echo", [], id=rid))
    assert reply == {"jsonrpc": "2.0", "result": [], "id": rid}


def test_notification_is_executed_and_answered_without_id(server: RpcServer) -> None:
    # Like jsonrpcs (its clients wait for the answer); JSON-RPC 2.0 would not answer.
    reply = rpc_http(server, req("test.echo", [7], id=...))
    assert reply == {"jsonrpc": "2.0", "result": [7]}


def test_reply_shape_and_headers(server: RpcServer) -> None:
    status, reason, headers, body = post(server, json.dumps(req("test.echo", ['é\t"\\'])).encode())
    assert (status, reason) == (200, "OK")
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert list(json.loads(body)) == ["jsonrpc", "result", "id"]
    assert "é".encode() in body  # UTF-8 kept, not \u-escaped (R24)
    assert json.loads(body)["result"] == ['é\t"\\']


def test_any_path_is_served(server: RpcServer) -> None:
    for path in ("/", "/RPC", "/x/y?z=1"):
        status, _, _, body = post(server, json.dumps(req("test.echo", [path])).encode(), path)
        assert status == 200
        assert json.loads(body)["result"] == [path]


def test_unknown_method_like_kamailio(server: RpcServer) -> None:
    status, reason, _, body = post(server, json.dumps(req("nope")).encode())
    assert (status, reason) == (500, "Method Not Found")
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "error": {"code": 500, "message": "Method Not Found"},
        "id": 1,
    }


def test_rpc_error_code_is_http_status(server: RpcServer) -> None:
    status, reason, _, body = post(server, json.dumps(req("test.rpcerror")).encode())
    assert (status, reason) == (418, "teapot")
    assert json.loads(body)["error"] == {"code": 418, "message": "teapot"}


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"",
        b"   ",
        b'{"jsonrpc":"2.0","method":"test.echo","params":[1],"id":1',
        b'{"jsonrpc":"2.0","method":"test.echo","id":NaN}',
        b'{"jsonrpc":"2.0","method":"test.echo","params":[Infinity]}',
        b'{"jsonrpc":"2.0","method":"te\xffst.echo","id":1}',
        b"\xef\xbb\xbf{}",
        b"[" * 200_000,
        b'{"a":' * 100_000,
        b'{"jsonrpc":"2.0","method":"test.echo","params":[' + b"9" * 5000 + b"]}",
        bytes(range(256)),
    ],
)
def test_parse_error(server: RpcServer, body: bytes) -> None:
    status, reason, _, reply = post(server, body)
    assert (status, reason) == (400, "Parse error")
    assert json.loads(reply) == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error"},
        "id": None,
    }
    good(server)


def test_trailing_text_after_the_request_is_ignored(server: RpcServer) -> None:
    # jsonrpcs parses the first JSON value and ignores the rest (a trailing NUL or newline)
    for tail in (b"\n", b"\x00", b" trailing", b"{}"):
        body = json.dumps(req("test.echo", [1])).encode() + tail
        status, _, _, reply = post(server, body)
        assert status == 200
        assert json.loads(reply)["result"] == [1]


@pytest.mark.parametrize(
    ("doc", "echo_id"),
    [
        ("str", False),
        (5, False),
        (None, False),
        ({"method": "test.echo", "id": 1}, True),
        ({"jsonrpc": "1.0", "method": "test.echo", "id": 1}, True),
        ({"jsonrpc": 2.0, "method": "test.echo", "id": 1}, True),
        ({"jsonrpc": "2.0", "id": 1}, True),
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, True),
        ({"jsonrpc": "2.0", "method": None, "id": 1}, True),
        ({"jsonrpc": "2.0", "method": "test.echo", "id": True}, False),
        ({"jsonrpc": "2.0", "method": "test.echo", "id": [1]}, False),
        ({"jsonrpc": "2.0", "method": "test.echo", "id": {"a": 1}}, False),
    ],
)
def test_invalid_request(server: RpcServer, doc: Any, echo_id: bool) -> None:
    status, reason, _, body = post(server, json.dumps(doc).encode())
    reply = json.loads(body)
    assert (status, reason) == (400, "Invalid Request")
    assert reply["error"]["code"] == -32600
    assert reply["error"]["message"] == "Invalid Request"
    assert reply["id"] == (1 if echo_id else None)
    good(server)


def test_batch_is_refused_with_one_reply_and_not_executed(server: RpcServer) -> None:
    calls: list[int] = []
    server.register("test.count", lambda: calls.append(1), "counts")
    batch = [req("test.count", id=1), req("test.count", id=2)]
    status, _, _, body = post(server, json.dumps(batch).encode())
    reply = json.loads(body)
    assert status == 400
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None
    assert calls == []
    status, _, _, body = post(server, b"[]")
    assert json.loads(body)["error"]["code"] == -32600


@pytest.mark.parametrize("params", ["r1", 5, True, 1.5])
def test_params_of_wrong_type(server: RpcServer, params: Any) -> None:
    reply = rpc_http(server, req("test.echo", params))
    assert reply == {
        "jsonrpc": "2.0",
        "error": {"code": -32602, "message": "Invalid params"},
        "id": 1,
    }


def test_params_that_do_not_fit_the_signature(server: RpcServer) -> None:
    assert rpc_http(server, req("test.two", [1, 2]))["result"] == [1, 2]
    for params in ([1], [1, 2, 3], []):
        reply = rpc_http(server, req("test.two", params))
        assert reply["error"] == {"code": -32602, "message": "Invalid params"}


def test_method_exceptions_do_not_kill_the_server(server: RpcServer) -> None:
    for method in ("test.boom", "test.notjson"):
        status, _, _, body = post(server, json.dumps(req(method)).encode())
        reply = json.loads(body)
        assert status == 500
        assert reply["error"]["code"] == -32603
        assert reply["error"]["message"] == "Internal error"
        assert reply["id"] == 1
    good(server)


# ---------------------------------------------------------------------------------------------
# HTTP transport


def test_other_http_methods(server: RpcServer) -> None:
    for method in ("GET", "PUT", "DELETE", "OPTIONS"):
        status, _, headers, body = post(server, b"", method=method)
        assert status == 405
        assert headers["Allow"] == "POST"
        assert json.loads(body)["error"]["code"] == -32600
    status, _, _, body = post(server, b"", method="HEAD")
    assert (status, body) == (405, b"")
    good(server)


def raw_http(server: RpcServer, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes (or sends a complete short reply)."""
    addr = server.http_address
    assert addr is not None
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_missing_or_bad_content_length(server: RpcServer) -> None:
    reply = raw_http(server, b"POST /RPC HTTP/1.1\r\nHost: x\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 411 ")
    reply = raw_http(
        server,
        b"POST /RPC HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411 ")
    for bad in (b"-1", b"abc", b"1e3"):
        reply = raw_http(server, b"POST / HTTP/1.1\r\nContent-Length: " + bad + b"\r\n\r\n{}")
        assert reply.startswith(b"HTTP/1.1 400 ")
    good(server)


def test_huge_body_is_refused_unread(sockdir: str) -> None:
    with mq_server(None, Conf(), max_request_size=1000) as s:
        add_test_methods(s)
        # announced but never sent: the server answers at once without waiting for it
        reply = raw_http(s, b"POST / HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413 ")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"Connection: close" in head
        assert json.loads(body)["error"] == {"code": -32600, "message": "Request too large"}
        # just over the limit, body sent
        doc = req("test.echo", ["x" * 1000])
        status, _, _, body = post(s, json.dumps(doc).encode())
        assert status == 413
        # at the limit it works
        doc = req("test.echo", ["x"])
        pad = 1000 - len(json.dumps(doc).encode())
        doc = req("test.echo", ["x" * (1 + pad)])
        assert len(json.dumps(doc).encode()) == 1000
        status, _, _, body = post(s, json.dumps(doc).encode())
        assert status == 200
        good(s)


def test_keep_alive_serves_several_requests_per_connection(server: RpcServer) -> None:
    addr = server.http_address
    assert addr is not None
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        for i in range(5):
            conn.request("POST", "/RPC", body=json.dumps(req("test.echo", [i], id=i)))
            resp = conn.getresponse()
            assert json.loads(resp.read()) == {"jsonrpc": "2.0", "result": [i], "id": i}
        # a parse error does not close the connection either
        conn.request("POST", "/RPC", body=b"{")
        assert conn.getresponse().read()
        conn.request("POST", "/RPC", body=json.dumps(req("test.echo", [9])))
        assert json.loads(conn.getresponse().read())["result"] == [9]
    finally:
        conn.close()


def test_slow_client_is_cut_off_and_others_are_served(sockdir: str) -> None:
    with mq_server(None, Conf(), request_timeout=0.5) as s:
        add_test_methods(s)
        addr = s.http_address
        assert addr is not None
        slow = []
        for partial in (
            b"",  # connects and says nothing
            b"POST /RPC HTTP/1.1\r\nHost: x\r\n",  # headers never finished
            b"POST /RPC HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",  # body never finished
        ):
            c = socket.create_connection(addr, timeout=30)
            c.sendall(partial)
            slow.append(c)
        good(s)  # served while the slow ones hang
        for c in slow:
            # the server closes them: recv returns EOF (b"") well before our own 30 s timeout
            with c:
                data = c.recv(65536)
                while data and not data.endswith(b"}"):
                    data = c.recv(65536)
                assert c.recv(65536) == b""
        good(s)


def test_dribbling_client_hits_the_whole_request_deadline(sockdir: str) -> None:
    with mq_server(None, Conf(), request_timeout=0.5) as s:
        addr = s.http_address
        assert addr is not None
        with socket.create_connection(addr, timeout=30) as c:
            c.sendall(b"POST /RPC HTTP/1.1\r\n")
            # keep sending a byte whenever the server has not closed yet
            closed = threading.Event()

            def reader() -> None:
                with contextlib.suppress(OSError):
                    while c.recv(1024):
                        pass
                closed.set()

            t = threading.Thread(target=reader)
            t.start()
            try:
                while not closed.wait(0.05):
                    c.sendall(b"X")
            except OSError:
                pass  # broken pipe: the server closed the connection
            assert closed.wait(30)
            t.join()


def test_connection_limit(sockdir: str) -> None:
    with mq_server(None, Conf(), max_connections=2, request_timeout=30) as s:
        add_test_methods(s)
        addr = s.http_address
        assert addr is not None
        held = [socket.create_connection(addr, timeout=30) for _ in range(2)]
        try:
            # make sure both are being served (a thread each) before the third one
            for c in held:
                c.sendall(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
                assert c.recv(65536).startswith(b"HTTP/1.1 400 ")
            reply = raw_http(s, b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            assert reply.startswith(b"HTTP/1.1 503 ")
            # end them: the slot is released before the server closes the socket
            for c in held:
                c.sendall(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                while c.recv(65536):
                    pass
        finally:
            for c in held:
                c.close()
        good(s)


def test_garbage_streams_do_not_kill_the_server(server: RpcServer) -> None:
    rng = random.Random(1234)
    prefixes = [b"", b"POST / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"]
    for i in range(300):
        junk = rng.randbytes(rng.randrange(0, 3000))
        if i % 3 == 1:
            junk = junk.replace(b"\n", b"")
        raw_http(server, prefixes[i % 3] + junk)
    raw_http(server, b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n")  # too many headers
    raw_http(server, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")  # request line too long
    good(server)


def test_many_clients(server: RpcServer) -> None:
    unix = server.unix_path
    assert unix is not None
    cdir = tempfile.mkdtemp(prefix="pmqc", dir="/tmp")

    def one(i: int) -> bool:
        doc = req("test.echo", [i], id=i)
        if i % 4 == 3:
            got = json.loads(dgram(unix, json.dumps(doc).encode(), cdir))
        else:
            got = rpc_http(server, doc)
        return bool(got == {"jsonrpc": "2.0", "result": [i], "id": i})

    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(one, range(1000)))
    finally:
        shutil.rmtree(cdir, ignore_errors=True)
    assert all(results)
    good(server)


# ---------------------------------------------------------------------------------------------
# Unix datagram transport


def test_dgram_request_reply(server: RpcServer, sockdir: str) -> None:
    path = server.unix_path
    assert path is not None
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)
    doc = req("test.echo", {"a": 1}, id="x")
    assert json.loads(dgram(path, json.dumps(doc).encode(), sockdir)) == {
        "jsonrpc": "2.0",
        "result": [1],
        "id": "x",
    }
    reply = json.loads(dgram(path, json.dumps(req("nope")).encode(), sockdir))
    assert reply["error"] == {"code": 500, "message": "Method Not Found"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"garbage", -32700),
        (b"", -32700),
        (b'{"jsonrpc":"2.0","method":5,"id":1}', -32600),  # crashes Kamailio's dgram process
        (b"[1,2]", -32600),
        (b'{"jsonrpc":"2.0","method":"test.echo","params":"x","id":1}', -32602),
    ],
)
def test_dgram_bad_input(server: RpcServer, sockdir: str, data: bytes, code: int) -> None:
    path = server.unix_path
    assert path is not None
    assert json.loads(dgram(path, data, sockdir))["error"]["code"] == code
    assert json.loads(dgram(path, json.dumps(req("test.echo")).encode(), sockdir))["id"] == 1


def test_dgram_too_large(sockdir: str) -> None:
    path = os.path.join(sockdir, "s.sock")
    with mq_server(None, Conf(http=None, unix=path), max_request_size=100) as s:
        add_test_methods(s)
        reply = json.loads(dgram(path, b" " * 5000, sockdir))
        assert reply["error"] == {"code": -32600, "message": "Request too large"}
        doc = json.dumps(req("test.echo", [1])).encode()
        assert json.loads(dgram(path, doc, sockdir))["result"] == [1]


def test_dgram_unbound_sender_is_ignored(server: RpcServer, sockdir: str) -> None:
    path = server.unix_path
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(json.dumps(req("test.echo")).encode(), path)
    doc = json.dumps(req("test.echo", [2])).encode()
    assert json.loads(dgram(path, doc, sockdir))["result"] == [2]


# ---------------------------------------------------------------------------------------------
# lifecycle


_baseline: set[threading.Thread] = set()


@pytest.fixture
def fresh_threads() -> None:
    """Remember the threads alive now (the module's shared server has some)."""
    _baseline.clear()
    _baseline.update(threading.enumerate())


def rpc_threads() -> list[str]:
    """Server threads started since ``fresh_threads``."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("pymqueue-rpc") and t not in _baseline
    ]


@pytest.mark.usefixtures("fresh_threads")
def test_start_stop_idempotent_and_clean(sockdir: str) -> None:
    path = os.path.join(sockdir, "x.sock")
    s = mq_server(None, Conf(unix=path))
    assert not s.running
    s.stop()
    s.start()
    addr = s.http_address
    s.start()
    assert s.http_address == addr
    assert os.path.exists(path)
    assert rpc_threads()
    s.stop()
    s.stop()
    assert not os.path.exists(path)
    assert rpc_threads() == []
    assert s.http_address is None
    assert s.unix_path is None
    # the port is free again and the server restarts
    s.start()
    assert rpc_threads()
    s.stop()
    assert rpc_threads() == []


@pytest.mark.usefixtures("fresh_threads")
def test_stop_with_open_connections(sockdir: str) -> None:
    s = mq_server(None, Conf(), request_timeout=60)
    s.start()
    addr = s.http_address
    assert addr is not None
    c = socket.create_connection(addr, timeout=30)
    c.sendall(b"POST / HTTP/1.1\r\n")
    try:
        s.stop()  # does not wait for the 60 s deadline
        assert rpc_threads() == []
        # closed: EOF, or a reset since our request bytes were left unread
        with contextlib.suppress(ConnectionResetError):
            assert c.recv(100) == b""
    finally:
        c.close()


def test_unix_socket_path_checks(sockdir: str) -> None:
    path = os.path.join(sockdir, "y.sock")
    # a stale socket file (nobody bound) is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()
    with mq_server(None, Conf(http=None, unix=path)) as s:
        # a live one is refused, and left alone
        with pytest.raises(ConfigError, match="in use"):
            mq_server(None, Conf(http=None, unix=path)).start()
        assert s.unix_path == path
        assert os.path.exists(path)
    # not a socket: refused, not deleted
    with open(path, "w") as f:
        f.write("keep")
    with pytest.raises(ConfigError, match="not a socket"):
        mq_server(None, Conf(http=None, unix=path)).start()
    with open(path) as f:
        assert f.read() == "keep"


@pytest.mark.usefixtures("fresh_threads")
def test_failed_start_leaves_nothing_running(sockdir: str) -> None:
    path = os.path.join(sockdir, "notasock")
    open(path, "w").close()
    s = mq_server(None, Conf(unix=path))
    with pytest.raises(ConfigError):
        s.start()
    assert not s.running
    assert rpc_threads() == []


def test_http_port_in_use(sockdir: str) -> None:
    with mq_server(None, Conf()) as first:
        addr = first.http_address
        assert addr is not None
        with pytest.raises(OSError, match="in use"):
            mq_server(None, Conf(http=addr)).start()


# ---------------------------------------------------------------------------------------------
# registry and in-process calls


def test_register_and_call() -> None:
    s = mq_server(None, None)
    add_test_methods(s)
    assert s.call("test.echo", [1, 2]) == [1, 2]
    assert s.call("test.echo", {"b": 1, "a": 2}) == [1, 2]
    assert s.call("test.echo") == []
    with pytest.raises(ConfigError):
        s.register("test.echo", print, "again")
    with pytest.raises(ConfigError):
        s.register("", print, "empty")
    with pytest.raises(RpcError) as err:
        s.call("nope")
    assert (err.value.code, err.value.message) == (500, "Method Not Found")
    with pytest.raises(RpcError) as err:
        s.call("test.two", [1])
    assert err.value.code == -32602
    with pytest.raises(RpcError) as err:
        s.call("test.echo", "x")  # type: ignore[arg-type]
    assert err.value.code == -32602
    with pytest.raises(RuntimeError):
        s.call("test.boom")  # in-process, the method's own exception propagates


def test_a_bare_server_carries_only_system_methods() -> None:
    assert RpcServer(None).methods() == [
        "system.listMethods",
        "system.methodHelp",
        "system.methodSignature",
    ]


def test_system_methods() -> None:
    s = mq_server(None, None)
    s.register("dmq.list_nodes", list, "List the DMQ nodes.")
    names = s.call("system.listMethods")
    assert names == sorted(names)
    assert {"mqueue.fetch", "mqueue.get_size", "mqueue.get_sizes", "mqueue.stats"} <= set(names)
    assert {"system.listMethods", "system.methodHelp", "dmq.list_nodes"} <= set(names)
    assert s.call("system.methodHelp", ["mqueue.fetch"]) == "Fetch an element from the queue."
    assert s.call("system.methodHelp", ["mqueue.get_size"]) == "Get size of mqueue."
    assert s.call("system.methodHelp", ["mqueue.get_sizes"]) == "Get sizes of all mqueues."
    assert s.call("system.methodHelp", {"m": "dmq.list_nodes"}) == "List the DMQ nodes."
    for params, msg in (
        (["nope"], "command not found"),
        ([], "Method Name Expected"),
        ([5], "Method Name Expected"),
    ):
        with pytest.raises(RpcError) as err:
            s.call("system.methodHelp", params)
        assert (err.value.code, err.value.message) == (400, msg)
    with pytest.raises(RpcError) as err:
        s.call("system.methodSignature", ["mqueue.fetch"])
    assert (err.value.code, err.value.message) == (500, "Not Implemented Yet")


# ---------------------------------------------------------------------------------------------
# mqueue.* methods on real queues (spec section 6, T26-T31)


@pytest.fixture
def queues(namespace: str) -> Iterator[FakeInstance]:
    inst = FakeInstance()
    made = []
    try:
        for name in ("r1", "r2", "r3"):  # defined in this order ...
            q = Queue(name, create=True, namespace=namespace)
            made.append(q)
        for q in reversed(made):  # ... so the registry lists r3, r2, r1
            inst.queues[q.name] = q
        yield inst
    finally:
        for q in made:
            q.unlink()
            q.close()


@pytest.fixture
def mq(queues: FakeInstance, sockdir: str) -> Iterator[RpcServer]:
    with mq_server(queues, Conf(unix=os.path.join(sockdir, "mq.sock"))) as s:
        yield s


def err(server: RpcServer, method: str, params: Any) -> tuple[int, str]:
    with pytest.raises(RpcError) as exc:
        server.call(method, params)
    return exc.value.code, exc.value.message


def test_t26_get_size(mq: RpcServer, queues: FakeInstance) -> None:
    r1 = queues.queues["r1"]
    assert mq.call("mqueue.get_size", ["r1"]) == {"name": "r1", "size": 0}
    for i in range(3):
        r1.add(f"key{i}", f"val {i}")
    assert mq.call("mqueue.get_size", ["r1"]) == {"name": "r1", "size": 3}
    assert mq.call("mqueue.get_size", {"name": "r1"}) == {"name": "r1", "size": 3}  # R26
    assert mq.call("mqueue.get_size", ["r1", "extra", 5]) == {"name": "r1", "size": 3}  # R05d
    assert rpc_http(mq, req("mqueue.get_size", ["r1"])) == {
        "jsonrpc": "2.0",
        "result": {"name": "r1", "size": 3},
        "id": 1,
    }


def test_t27_get_size_errors(mq: RpcServer) -> None:
    assert err(mq, "mqueue.get_size", ["nope"]) == (404, "No such queue")
    assert err(mq, "mqueue.get_size", []) == (400, "No queue name")
    assert err(mq, "mqueue.get_size", None) == (400, "No queue name")
    assert err(mq, "mqueue.get_size", [5]) == (400, "No queue name")
    assert err(mq, "mqueue.get_size", {}) == (400, "No queue name")
    assert err(mq, "mqueue.get_size", [""]) == (400, "Invalid queue name")
    assert err(mq, "mqueue.get_size", ["R1"]) == (404, "No such queue")  # case-sensitive
    assert err(mq, "mqueue.get_size", ["r1 "]) == (404, "No such queue")
    status, reason, _, body = post(mq, json.dumps(req("mqueue.get_size", ["nope"])).encode())
    assert (status, reason) == (404, "No such queue")
    assert json.loads(body)["error"] == {"code": 404, "message": "No such queue"}


def test_t28_get_sizes_in_registry_order(mq: RpcServer, queues: FakeInstance) -> None:
    queues.queues["r3"].add("k", "v")
    queues.queues["r1"].add_many([("a", "1"), ("b", "2")])
    expected = [{"name": "r3", "size": 1}, {"name": "r2", "size": 0}, {"name": "r1", "size": 2}]
    assert mq.call("mqueue.get_sizes") == expected
    assert mq.call("mqueue.get_sizes", ["ignored", 1]) == expected
    assert rpc_http(mq, req("mqueue.get_sizes"))["result"] == expected
    assert mq_server(FakeInstance(), None).call("mqueue.get_sizes") == []
    assert mq_server(None, None).call("mqueue.get_sizes") == []


def test_t29_fetch(mq: RpcServer, queues: FakeInstance) -> None:
    r1 = queues.queues["r1"]
    for i in range(3):
        r1.add(f"key{i}", f"val {i}")
    assert mq.call("mqueue.fetch", ["r1"]) == {"key": "key0", "val": "val 0"}
    assert r1.size() == 2
    assert rpc_http(mq, req("mqueue.fetch", {"name": "r1"})) == {
        "jsonrpc": "2.0",
        "result": {"key": "key1", "val": "val 1"},
        "id": 1,
    }
    unix = mq.unix_path
    assert unix is not None
    cdir = tempfile.mkdtemp(prefix="pmqc", dir="/tmp")
    try:
        got = json.loads(dgram(unix, json.dumps(req("mqueue.fetch", ["r1"])).encode(), cdir))
    finally:
        shutil.rmtree(cdir, ignore_errors=True)
    assert got["result"] == {"key": "key2", "val": "val 2"}
    assert r1.size() == 0


def test_t30_fetch_errors(mq: RpcServer) -> None:
    assert err(mq, "mqueue.fetch", ["r1"]) == (404, "Empty queue")
    assert err(mq, "mqueue.fetch", ["nope"]) == (500, "No such queue")
    assert err(mq, "mqueue.fetch", []) == (500, "No queue name")
    assert err(mq, "mqueue.fetch", [7]) == (500, "No queue name")
    assert err(mq, "mqueue.fetch", [""]) == (500, "Invalid queue name")
    status, reason, _, _ = post(mq, json.dumps(req("mqueue.fetch", ["r1"])).encode())
    assert (status, reason) == (404, "Empty queue")


def test_t31_empty_key_or_value_is_returned(mq: RpcServer, queues: FakeInstance) -> None:
    # Divergence: Kamailio answers 500 "Unexpected error (result)" and loses these items.
    r1 = queues.queues["r1"]
    r1.add_many([("", "v0"), ("k1", ""), ("k2", "v2")])
    assert mq.call("mqueue.fetch", ["r1"]) == {"key": "", "val": "v0"}
    assert mq.call("mqueue.fetch", ["r1"]) == {"key": "k1", "val": ""}
    assert mq.call("mqueue.fetch", ["r1"]) == {"key": "k2", "val": "v2"}


def test_fetch_escaping_and_bytes(mq: RpcServer, queues: FakeInstance) -> None:
    r1 = queues.queues["r1"]
    r1.add('q"\\\t', "é€😀\x00\x01 end")
    r1.add(b"k\xff", b"nul\x00inside\xff")
    r1.add("ok", b"\xed\xa0\x80")  # an encoded surrogate is not valid UTF-8
    status, _, _, body = post(mq, json.dumps(req("mqueue.fetch", ["r1"])).encode())
    assert status == 200
    assert json.loads(body)["result"] == {"key": 'q"\\\t', "val": "é€😀\x00\x01 end"}
    got = mq.call("mqueue.fetch", ["r1"])
    assert got == {
        "key": "k\ufffd",
        "key_b64": base64.b64encode(b"k\xff").decode(),
        "val": "nul\x00inside\ufffd",
        "val_b64": base64.b64encode(b"nul\x00inside\xff").decode(),
    }
    got = mq.call("mqueue.fetch", ["r1"])
    assert set(got) == {"key", "val", "val_b64"}
    assert base64.b64decode(got["val_b64"]) == b"\xed\xa0\x80"


def test_large_value_is_returned_whole(mq: RpcServer, queues: FakeInstance) -> None:
    value = "x" * 8000 + "end"  # R27
    queues.queues["r2"].add("big", value)
    reply = rpc_http(mq, req("mqueue.fetch", ["r2"]))
    assert reply["result"] == {"key": "big", "val": value}


def test_non_utf8_queue_name(namespace: str) -> None:
    q = Queue(b"q\xff", create=True, namespace=namespace)
    try:
        q.add("k", "v")
        s = mq_server(FakeInstance({q.name: q}), None)
        sizes = s.call("mqueue.get_sizes")
        assert sizes == [{"name": "q\ufffd", "name_b64": "cf8=", "size": 1}]
        # addressable with the surrogateescape spelling
        assert s.call("mqueue.get_size", ["q\udcff"])["size"] == 1
        assert err(s, "mqueue.get_size", ["q\ufffd"]) == (404, "No such queue")
        assert err(s, "mqueue.get_size", ["\ud800"]) == (404, "No such queue")
    finally:
        q.unlink()
        q.close()


def test_stats(mq: RpcServer, queues: FakeInstance) -> None:
    r1 = queues.queues["r1"]
    r1.add_many([("a", "1"), ("b", "2")])
    r1.fetch()
    one = mq.call("mqueue.stats", ["r1"])
    assert one["name"] == "r1"
    assert one["items"] == 1
    assert one["added"] == 2
    assert one["fetched"] == 1
    every = mq.call("mqueue.stats")
    assert [s["name"] for s in every] == ["r3", "r2", "r1"]
    assert every[2] == one
    json.dumps(every, allow_nan=False)  # JSON-serialisable as is
    assert err(mq, "mqueue.stats", ["nope"]) == (404, "No such queue")
    assert err(mq, "mqueue.stats", [""]) == (400, "Invalid queue name")
    assert rpc_http(mq, req("mqueue.stats", ["r1"]))["result"] == mq.call("mqueue.stats", ["r1"])
