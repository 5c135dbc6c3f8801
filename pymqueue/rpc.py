"""The RPC endpoint: a generic JSON-RPC 2.0 server shaped like Kamailio's ``jsonrpcs``.

:class:`RpcServer` holds a registry of methods (``system.*`` built in; Kamailio's
``mqueue.*`` from :mod:`pymqueue.kamailio.rpc_methods`, ``dmq.*`` from
:mod:`pymqueue.dmq.rpc`), answers them in-process (:meth:`RpcServer.call`)
and, when started, over two transports shaped like Kamailio 5.6.3's ``jsonrpcs`` module, so a
client written for Kamailio works unchanged:

* **HTTP**: ``POST`` of one JSON-RPC request on any path (like ``xhttp`` + ``jsonrpc_dispatch()``
  on ``/RPC``). A reply to an error carries the error's code as the HTTP status and its message
  as the reason phrase, as ``jsonrpcs`` does (``404 No such queue``); a success is ``200 OK``.
* **Unix datagram socket** (``jsonrpcs`` ``dgram`` transport): one request per datagram; the
  reply is sent as one datagram to the sender's bound address (an unbound sender gets nothing,
  as with Kamailio). The socket file is created mode 0660 and unlinked by :meth:`stop`.

What the wire accepts (measured against the real 5.6.3 ``jsonrpcs``; ``docs/kamailio.md``,
section "RPC (rpc.py, kamailio/rpc_methods.py)", lists every divergence):

* ``params`` may be a list (positional) or an object. Like ``jsonrpcs``, an object's member
  *values* are taken in document order and the names are ignored (``{"name": "r1"}`` works, R26).
  ``null`` or a missing ``params`` means no parameters. Extra parameters are ignored by the
  ``mqueue.*`` methods, as in Kamailio (R05d).
* Text after the first JSON value (a trailing newline or NUL byte, …) is ignored, as
  ``jsonrpcs`` does.
* A request without ``id`` (a notification) is executed **and answered** (the reply has no
  ``id`` member). JSON-RPC 2.0 says not to answer, but ``jsonrpcs`` does and its clients wait
  for the answer.
* An unknown method is answered ``500 Method Not Found`` (Kamailio's code and text, which
  clients see), not JSON-RPC's ``-32601``.
* Where Kamailio has no sane answer we use the JSON-RPC 2.0 codes: malformed JSON (``jsonrpcs``
  closes the HTTP connection / sends no datagram) is ``-32700 Parse error``; a request that is
  not an object, lacks ``"jsonrpc": "2.0"`` or a string ``method``, or has an ``id`` that is not
  a string, number or null (``jsonrpcs`` answers ``"result": {}`` without running anything, or
  crashes on some datagrams) is ``-32600 Invalid Request``; ``params`` that are neither a list,
  an object nor null is ``-32602 Invalid params``. A batch (a JSON array) is not supported by
  ``jsonrpcs``; it gets one ``-32600`` reply object (not an array), nothing is executed.
* A body larger than ``max_request_size`` is refused unread (HTTP ``413``; an oversized
  datagram gets the same error reply): ``-32600 Request too large``. A method that raises
  something else than :class:`~pymqueue.errors.RpcError` yields ``-32603 Internal error``
  (logged) and the server carries on.

Concurrency model (why threads and not asyncio): the methods call the shared-memory engine,
whose calls may block briefly on a lock held by another process; in threads they run without
stalling other clients, and ``http.server`` gives a well-tested HTTP/1.1 parser (line and
header limits, ``Expect: 100-continue``, keep-alive) instead of a hand-written one. The cost
of a thread per connection is bounded: at most ``max_connections`` connections are served at
once (more are answered ``503`` and closed), every read has a socket timeout and every request
a whole-request deadline (``request_timeout``) enforced by the serving thread, which shuts down
connections that overrun it (slow or idle clients). Datagrams are handled in their own thread,
one at a time, like Kamailio's single ``jsonrpcs`` dgram process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.server
import inspect
import json
import logging
import os
import selectors
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pymqueue.errors import ConfigError, RpcError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "RpcServer",
]

log = logging.getLogger("pymqueue.rpc")

# JSON-RPC 2.0 codes we use where Kamailio's answer is unusable (see the module docstring).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# jsonrpcs' answer to an unknown method (measured): code 500, this text.
METHOD_NOT_FOUND = (500, "Method Not Found")

DEFAULT_MAX_REQUEST_SIZE = 1 << 20
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 256
_DGRAM_SNDBUF = 4 << 20


class _RpcConfigLike(Protocol):
    """:class:`pymqueue.config.RpcConfig`: where to listen."""

    @property
    def http(self) -> tuple[str, int] | None: ...

    @property
    def unix(self) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class _Method:
    func: Callable[..., Any]
    help: str
    signature: inspect.Signature | None


@dataclasses.dataclass(frozen=True)
class Reply:
    """One encoded JSON-RPC reply and the HTTP status line that goes with it."""

    body: bytes
    status: int
    reason: str


# ---------------------------------------------------------------------------------------------
# The server


class RpcServer:
    """A registry of RPC methods, callable in-process and served over HTTP and a Unix socket.

    Only ``system.*`` is built in; the owner registers the rest (an :class:`Instance` adds
    ``mqueue.*`` with :func:`pymqueue.kamailio.rpc_methods.register_mqueue_rpc` and ``dmq.*``
    with :func:`pymqueue.dmq.rpc.register_dmq_rpc`). ``config`` says where to listen
    (``http=(host, port)``, port 0 picks a free one; ``unix=path``); either may be ``None``.
    The keyword arguments bound what one client can cost: ``max_request_size`` bytes per
    request, ``request_timeout`` seconds to send a whole request (also the keep-alive idle
    limit), ``max_connections`` served at once.
    ``pretty`` indents replies with tabs like ``jsonrpcs`` (whitespace is not significant).

    :meth:`start` and :meth:`stop` are idempotent; ``with RpcServer(...) as s:`` starts and stops.
    """

    def __init__(
        self,
        config: _RpcConfigLike | None = None,
        *,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pretty: bool = True,
    ) -> None:
        if max_request_size <= 0 or request_timeout <= 0 or max_connections <= 0:
            raise ConfigError("RPC limits must be positive")
        self.config = config
        self.max_request_size = max_request_size
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.pretty = pretty
        self._methods: dict[str, _Method] = {}
        self._lock = threading.Lock()
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._dgram: _DgramServer | None = None
        self._observers: list[Callable[[str, str], None]] = []
        self._get_routes: dict[str, Callable[[], tuple[str, bytes]]] = {}
        self._register_builtins()

    # -- registry ------------------------------------------------------------------------------

    def register(self, name: str, func: Callable[..., Any], help: str) -> None:
        """Register ``func`` as RPC method ``name`` (refused if the name is taken).

        The request's parameters are passed positionally: a list as is, an object's member
        values in document order (``jsonrpcs`` semantics). Parameters that do not fit the
        function's signature are answered ``-32602 Invalid params`` without calling it. The
        function returns a JSON-serialisable value or raises :class:`RpcError` (code, message),
        which is sent as is.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"RPC method name must be a non-empty str, not {name!r}")
        if not callable(func):
            raise ConfigError(f"RPC method {name!r}: {func!r} is not callable")
        try:
            signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None
        with self._lock:
            if name in self._methods:
                raise ConfigError(f"RPC method {name!r} is already registered")
            self._methods[name] = _Method(func, str(help), signature)

    def add_observer(self, observer: Callable[[str, str], None]) -> None:
        """Call ``observer(method, outcome)`` after each request (metrics). ``method`` is the
        registered name, ``"unknown"`` for one that is not registered, ``"none"`` when the
        request had no valid method; ``outcome`` is ``"ok"``, or ``"error"`` when the request
        was answered with an error (by the method or before it ran)."""
        with self._lock:
            self._observers.append(observer)

    def add_get_route(self, path: str, route: Callable[[], tuple[str, bytes]]) -> None:
        """Answer HTTP ``GET path`` with ``route()`` = (content type, body) (e.g. /metrics);
        any other GET is refused as before (405, use POST)."""
        with self._lock:
            self._get_routes[path] = route

    def get_route(self, path: str) -> Callable[[], tuple[str, bytes]] | None:
        with self._lock:
            return self._get_routes.get(path)

    def methods(self) -> list[str]:
        """The registered method names, sorted (what ``system.listMethods`` answers)."""
        with self._lock:
            return sorted(self._methods)

    # -- in-process calls ----------------------------------------------------------------------

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        """Run ``method`` in this process and return its result.

        Raises :class:`~pymqueue.errors.RpcError` with exactly the code and message a client
        of the wire protocol would get (``RpcError(404, "No such queue")``).
        """
        if params is None:
            args: list[Any] = []
        elif isinstance(params, list | tuple):
            args = list(params)
        elif isinstance(params, dict):
            args = list(params.values())
        else:
            raise RpcError(INVALID_PARAMS, "Invalid params")
        with self._lock:
            entry = self._methods.get(method) if isinstance(method, str) else None
        if entry is None:
            raise RpcError(*METHOD_NOT_FOUND)
        if entry.signature is not None:
            try:
                entry.signature.bind(*args)
            except TypeError:
                raise RpcError(INVALID_PARAMS, "Invalid params") from None
        return entry.func(*args)

    # -- the protocol (sans I/O) ---------------------------------------------------------------

    def handle(self, data: bytes) -> Reply:
        """Answer one raw request body; never raises (bad input gets an error reply)."""
        seen: list[str] = []
        reply = self._handle(data, seen)
        if self._observers:
            method = seen[0] if seen else "none"
            with self._lock:
                if method != "none" and method not in self._methods:
                    method = "unknown"  # a client's typo must not become a time series
                observers = list(self._observers)
            outcome = "ok" if reply.status == 200 else "error"
            for observer in observers:
                try:
                    observer(method, outcome)
                except Exception:
                    log.exception("RPC observer %r failed", observer)
        return reply

    def _handle(self, data: bytes, seen: list[str]) -> Reply:
        if len(data) > self.max_request_size:
            return self._error(INVALID_REQUEST, "Request too large", None, True, status=413)
        try:
            text = data.decode("utf-8")
            request = _decoder.raw_decode(text, len(text) - len(text.lstrip()))[0]
        except (ValueError, RecursionError):
            return self._error(PARSE_ERROR, "Parse error", None, True)
        if isinstance(request, list):
            return self._error(
                INVALID_REQUEST,
                "Invalid Request",
                None,
                True,
                data="batch requests are not supported",
            )
        if not isinstance(request, dict):
            return self._error(INVALID_REQUEST, "Invalid Request", None, True)
        has_id = "id" in request
        req_id = request.get("id")
        if isinstance(req_id, bool) or not isinstance(req_id, str | int | float | None):
            return self._error(INVALID_REQUEST, "Invalid Request", None, True, data="invalid id")
        if request.get("jsonrpc") != "2.0":
            return self._error(
                INVALID_REQUEST, "Invalid Request", req_id, has_id, data='"jsonrpc" must be "2.0"'
            )
        method = request.get("method")
        if not isinstance(method, str):
            return self._error(
                INVALID_REQUEST, "Invalid Request", req_id, has_id, data='"method" must be a string'
            )
        seen.append(method)
        params = request.get("params")
        if params is not None and not isinstance(params, list | dict):
            return self._error(INVALID_PARAMS, "Invalid params", req_id, has_id)
        try:
            result = self.call(method, params)
        except RpcError as exc:
            return self._error(exc.code, exc.message, req_id, has_id)
        except Exception as exc:
            log.exception("RPC method %r failed", method)
            return self._error(
                INTERNAL_ERROR,
                "Internal error",
                req_id,
                has_id,
                data=f"{type(exc).__name__}: {exc}",
            )
        reply: dict[str, Any] = {"jsonrpc": "2.0", "result": result}
        if has_id:
            reply["id"] = req_id
        try:
            body = self._encode(reply)
        except (TypeError, ValueError) as exc:
            log.error("RPC method %r returned a result that is not JSON: %s", method, exc)
            return self._error(INTERNAL_ERROR, "Internal error", req_id, has_id)
        return Reply(body, 200, "OK")

    def _error(
        self,
        code: int,
        message: str,
        req_id: Any,
        has_id: bool,
        *,
        data: str | None = None,
        status: int | None = None,
    ) -> Reply:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        reply: dict[str, Any] = {"jsonrpc": "2.0", "error": error}
        if has_id:
            reply["id"] = req_id
        if status is None:
            if 100 <= code <= 599:
                status = code
            elif code in (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS):
                status = 400
            else:
                status = 500
        reason = "".join(c if " " <= c <= "~" else "?" for c in message) or "Error"
        return Reply(self._encode(reply), status, reason)

    def _encode(self, reply: dict[str, Any]) -> bytes:
        indent = "\t" if self.pretty else None
        try:
            return json.dumps(reply, ensure_ascii=False, indent=indent, allow_nan=False).encode()
        except UnicodeEncodeError:  # lone surrogates in a result: escape them instead
            return json.dumps(reply, ensure_ascii=True, indent=indent, allow_nan=False).encode()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def http_address(self) -> tuple[str, int] | None:
        """The bound ``(host, port)`` of the HTTP listener while it runs."""
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return (str(host), int(port))

    @property
    def unix_path(self) -> str | None:
        """The path of the Unix datagram socket while it runs."""
        return None if self._dgram is None else self._dgram.path

    @property
    def running(self) -> bool:
        return self._http is not None or self._dgram is not None

    def start(self) -> None:
        """Bind the configured sockets and serve them in background threads (idempotent).

        Bind errors (port in use, a live socket at the Unix path) are raised here.
        """
        with self._lock:
            if self.running or self.config is None:
                return
        http_conf, unix_conf = self.config.http, self.config.unix
        try:
            if http_conf is not None:
                server = _HttpServer(http_conf, self)
                self._http = server
                self._http_thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.2},
                    name="pymqueue-rpc-http",
                    daemon=True,
                )
                self._http_thread.start()
            if unix_conf is not None:
                self._dgram = _DgramServer(unix_conf, self)
                self._dgram.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving: join the threads, close the sockets, unlink the Unix socket file."""
        http_server, thread, self._http, self._http_thread = (
            self._http,
            self._http_thread,
            None,
            None,
        )
        if http_server is not None:
            if thread is not None:
                http_server.shutdown()
                thread.join()
            http_server.abort_connections()
            http_server.server_close()  # joins the connection threads
        dgram, self._dgram = self._dgram, None
        if dgram is not None:
            dgram.stop()

    def __enter__(self) -> RpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = [f"http={self.http_address}"] if self._http else []
        where += [f"unix={self.unix_path!r}"] if self._dgram else []
        return f"<pymqueue.RpcServer {' '.join(where) or 'stopped'} at {id(self):#x}>"

    # -- built-in methods ----------------------------------------------------------------------

    def _register_builtins(self) -> None:
        self.register(
            "system.listMethods", self._list_methods, "List the names of the RPC methods."
        )
        self.register("system.methodHelp", self._method_help, "Return the help text of a method.")
        self.register(
            "system.methodSignature",
            self._method_signature,
            "Return the signature of a method (not implemented, like Kamailio).",
        )

    def _list_methods(self, *_: Any) -> list[str]:
        return self.methods()

    def _method_help(self, *args: Any) -> str:
        if not args or not isinstance(args[0], str):
            raise RpcError(400, "Method Name Expected")
        with self._lock:
            entry = self._methods.get(args[0])
        if entry is None:
            raise RpcError(400, "command not found")
        return entry.help

    def _method_signature(self, *_: Any) -> Any:
        raise RpcError(500, "Not Implemented Yet")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)


# ---------------------------------------------------------------------------------------------
# HTTP transport


class _HttpServer(http.server.ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a connection limit and per-request deadlines."""

    daemon_threads = True
    block_on_close = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], rpc: RpcServer) -> None:
        self.rpc = rpc
        self._slots = threading.BoundedSemaphore(rpc.max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _HttpHandler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn(): it can hang on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn's, but the slot is free before the client sees the socket close.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.set_deadline(request, None)
            self._slots.release()
            self.shutdown_request(request)

    def set_deadline(self, sock: socket.socket, deadline: float | None) -> None:
        with self._deadlines_lock:
            if deadline is None:
                self._deadlines.pop(sock, None)
            else:
                self._deadlines[sock] = deadline

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls: cut connections past their deadline."""
        now = time.monotonic()
        with self._deadlines_lock:
            late = [s for s, d in self._deadlines.items() if d <= now]
            for sock in late:
                del self._deadlines[sock]
        for sock in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def abort_connections(self) -> None:
        with self._deadlines_lock:
            socks = list(self._deadlines)
            self._deadlines.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("RPC HTTP connection from %s failed", client_address, exc_info=True)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pymqueue"
    sys_version = ""
    server: _HttpServer

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.server.rpc.request_timeout)
        super().setup()  # timeout is None here, so the one set above stays
        self._arm()

    def _arm(self) -> None:
        self.server.set_deadline(
            self.connection, time.monotonic() + self.server.rpc.request_timeout
        )

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self._arm()  # keep-alive: the next request (or idle time) gets a fresh deadline

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("RPC HTTP %s: " + format, self.address_string(), *args)

    def _send(self, reply: Reply, *, body: bool = True, close: bool = False) -> None:
        self.send_response(reply.status, reply.reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(reply.body)

    def do_POST(self) -> None:
        rpc = self.server.rpc
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send(
                rpc._error(INVALID_REQUEST, "Length Required", None, True, status=411), close=True
            )
            return
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            self._send(
                rpc._error(INVALID_REQUEST, "Length Required", None, True, status=411), close=True
            )
            return
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError(raw_length)
        except ValueError:
            self._send(
                rpc._error(INVALID_REQUEST, "Invalid Request", None, True, status=400), close=True
            )
            return
        if length > rpc.max_request_size:
            # Refused unread; closing the connection discards the body.
            self._send(
                rpc._error(INVALID_REQUEST, "Request too large", None, True, status=413),
                close=True,
            )
            return
        data = self.rfile.read(length)
        if len(data) < length:  # the client went away or timed out mid-body
            self.close_connection = True
            return
        self._send(rpc.handle(data))

    def _not_allowed(self, body: bool = True) -> None:
        reply = self.server.rpc._error(
            INVALID_REQUEST, "Invalid Request", None, True, data="use HTTP POST", status=405
        )
        self.send_response(405, "Method Not Allowed")
        self.send_header("Allow", "POST")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if body:
            self.wfile.write(reply.body)

    def do_GET(self) -> None:
        route = self.server.rpc.get_route(self.path.split("?", 1)[0])
        if route is None:
            self._not_allowed()
            return
        content_type, body = route()
        self.send_response(200, "OK")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._not_allowed(body=False)

    def _other(self) -> None:
        self._not_allowed()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other


# ---------------------------------------------------------------------------------------------
# Unix datagram transport


class _DgramServer:
    """One thread answering datagrams on a Unix socket, reply to the sender's address."""

    def __init__(self, path: str, rpc: RpcServer) -> None:
        self.path = os.path.abspath(path)
        self.rpc = rpc
        _clear_stale_socket(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(self.path)
            self._ino = os.stat(self.path).st_ino
            os.chmod(self.path, 0o660)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _DGRAM_SNDBUF)
            self.sock.settimeout(rpc.request_timeout)  # bounds a send to a stuck client
        except BaseException:
            self.sock.close()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="pymqueue-rpc-unix", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._ino:  # only the file we created
                os.unlink(self.path)

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select()}
                if self._wake_r in ready:
                    return
                try:
                    self._serve_one()
                except Exception:  # never let one datagram kill the transport
                    log.exception("RPC datagram handling failed")

    def _serve_one(self) -> None:
        limit = self.rpc.max_request_size
        try:
            data, _, flags, address = self.sock.recvmsg(limit + 1, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if not address:
            log.debug("RPC datagram from an unbound socket: no reply possible, dropped")
            return
        if flags & socket.MSG_TRUNC or len(data) > limit:
            reply = self.rpc._error(INVALID_REQUEST, "Request too large", None, True)
        else:
            reply = self.rpc.handle(data)
        try:
            self.sock.sendto(reply.body, address)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                log.debug("RPC datagram reply to %r failed: %s", address, exc)
                return
            log.error("RPC datagram reply of %d bytes too large for %r", len(reply.body), address)
            small = self.rpc._error(INTERNAL_ERROR, "Reply too large", None, True)
            with contextlib.suppress(OSError):
                self.sock.sendto(small.body, address)


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"RPC socket path {path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise ConfigError(f"RPC socket {path!r} is in use by another process")
