"""Spec §12 cases 4, 5, 9, 10, 11, 12 and 24 against two real Kamailio 5.6.3 nodes.

The test itself plays the foreign node F with a raw UDP socket on 127.0.0.1 (:class:`Raw`):
the messages are built with our codec (``build_request`` / ``build_response``), node lists
are forged by hand (:func:`node_list`) in the forms the bus never sends (a node that never
answers, a line without ``status``, ``disabled`` for another node, no ``Max-Forwards``). Only
safe forms are sent: every line ends in CRLF, no blank line, known statuses, IP literals
(spec §7). A node that never answers is a bound, silent socket (:class:`BlackHole`), so the
test sees Kamailio's requests to it; Kamailio ignores ICMP anyway (spec §2.5).

K1 (no notification address) and K2 (notification address K1) run with ``ping_interval`` 5
(Kamailio's minimum), tm ``fr_timer`` 2 s and one DMQ worker. A thread serves F's socket:
it answers every KDMQ request ``200`` with F's own line unless the test holds it (then the
test answers it itself, after looking at Kamailio's state). Kamailio's state is read with
``dmq.list_nodes`` (JSON-RPC), polled until a deadline (a readiness probe, not a sleep).
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fix_kamailio import Kamailio, KamailioFactory, base_config

from pymqueue.dmq import DmqConfig, DmqCore, IncomingRequest, PeerReply
from pymqueue.dmq.message import (
    DmqRequest,
    DmqResponse,
    build_request,
    build_response,
    new_branch,
    parse_message,
    parse_uri,
)

pytestmark = pytest.mark.kamailio

IP = "127.0.0.1"
NOTE = "notification_peer"

SCRIPT = """
modparam("tm", "fr_timer", 2000)
modparam("pv", "shvset", "applied=i:0")
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
@NOTIFY@
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)

request_route {
    if ($rm == "KDMQ") {
        if ($rU == "count") {           # a data channel the script applies: one count each
            $shv(applied) = $shv(applied) + 1;
            sl_send_reply("200", "OK");
            exit;
        }
        dmq_handle_message();
    }
    exit;
}
"""


def kam_config(notify: str | None) -> str:
    line = f'modparam("dmq", "notification_address", "{notify}")' if notify else ""
    return base_config(SCRIPT.replace("@NOTIFY@", line), modules=["tm", "dmq"])


def kuri(kam: Kamailio) -> str:
    return f"sip:{IP}:{kam.sip_port}"


def node_list(*lines: str) -> bytes:
    """A node-list body in the only safe form: every line CRLF-terminated, none blank."""
    assert lines
    assert all(ln and "\r" not in ln and "\n" not in ln for ln in lines)
    return "".join(ln + "\r\n" for ln in lines).encode()


def nodes_of(kam: Kamailio) -> dict[str, str]:
    """``{port: status}`` from Kamailio's ``dmq.list_nodes``."""
    return {str(n["port"]): n["status"] for n in kam.jsonrpc("dmq.list_nodes")}


def status_of(kam: Kamailio, port: int) -> str | None:
    return nodes_of(kam).get(str(port))


def wait_status(kam: Kamailio, port: int, *status: str | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = status_of(kam, port)
        if got in status:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"127.0.0.1:{port} is {got} on {kuri(kam)}, not {status}\n{kam.log()[-3000:]}"
            )
        time.sleep(0.1)  # polling interval of an RPC probe with a deadline


def listed_ports(body: bytes) -> set[int]:
    """Ports named in a node-list body (lines ``sip:127.0.0.1:PORT;...``)."""
    out = set()
    for line in body.decode().splitlines():
        hostport = line.split(";", 1)[0]
        out.add(int(hostport.rsplit(":", 1)[1]))
    return out


class Raw:
    """F: a raw UDP socket and a thread answering the KDMQ requests it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((IP, 0))
        self.port: int = self.sock.getsockname()[1]
        self.uri = parse_uri(f"sip:{IP}:{self.port}")
        self.cond = threading.Condition()
        self.requests: list[DmqRequest] = []  # first copy of every request, arrival order
        self.replies: dict[str, DmqResponse] = {}  # final reply by branch
        self.errors: list[str] = []
        self.held: queue.Queue[tuple[DmqRequest, tuple[str, int]]] = queue.Queue()
        self.hold: Callable[[DmqRequest], bool] = lambda _req: False
        self._answered: dict[str, bytes] = {}
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.sock], [], [], 0.1)  # wakes to see _stop
            if not readable:
                continue
            data, addr = self.sock.recvfrom(65535)
            try:
                msg = parse_message(data)
            except Exception as exc:  # reported by the test (fixture teardown), not raised here
                self.errors.append(f"{exc}: {data[:300]!r}")
                continue
            with self.cond:
                if isinstance(msg, DmqResponse):
                    if msg.code >= 200 and msg.branch is not None:
                        self.replies.setdefault(msg.branch, msg)
                else:
                    branch = msg.branch or ""
                    if branch in self._answered:  # a retransmission: the same answer again
                        self.sock.sendto(self._answered[branch], addr)
                    elif branch not in self._seen:  # (a held one is answered by the test)
                        self._seen.add(branch)
                        self.requests.append(msg)
                        if self.hold(msg):
                            self.held.put((msg, addr))
                        else:
                            self._reply(msg, addr, 200, "OK", node_list(self.own_line()))
                self.cond.notify_all()

    def own_line(self, status: str = "active") -> str:
        return f"sip:{IP}:{self.port};status={status}"

    def _reply(
        self, req: DmqRequest, addr: tuple[str, int], code: int, reason: str, body: bytes
    ) -> None:
        data = build_response(
            req, code, reason, body=body, content_type="text/plain" if body else None,
            source=addr,
        )  # fmt: skip
        self._answered[req.branch or ""] = data
        self.sock.sendto(data, addr)

    def answer(
        self, held: tuple[DmqRequest, tuple[str, int]], code: int, reason: str, body: bytes = b""
    ) -> None:
        with self.cond:
            self._reply(*held, code, reason, body)

    def next_held(self, timeout: float = 8.0) -> tuple[DmqRequest, tuple[str, int]]:
        try:
            return self.held.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no held request within {timeout}s") from None

    def send(
        self,
        kam: Kamailio,
        channel: str,
        body: bytes,
        *,
        max_forwards: int | None = 1,
        content_type: str = "text/plain",
    ) -> bytes:
        """Send one KDMQ request to ``kam``; ``max_forwards=None`` leaves the header out."""
        data = build_request(
            channel=channel, target=parse_uri(kuri(kam)), local=self.uri, body=body,
            content_type=content_type, max_forwards=max_forwards or 1, branch=new_branch(),
        )  # fmt: skip
        if max_forwards is None:
            head, sep, rest = data.partition(b"\r\n\r\n")
            lines = [ln for ln in head.split(b"\r\n") if not ln.startswith(b"Max-Forwards:")]
            data = b"\r\n".join(lines) + sep + rest
            assert b"Max-Forwards" not in data
        self.sock.sendto(data, (IP, kam.sip_port))
        return data

    def reply_to(self, data: bytes, timeout: float = 5.0) -> DmqResponse:
        """Wait for the final reply to the request ``data``."""
        branch = parse_message(data).branch or ""
        with self.cond:
            if not self.cond.wait_for(lambda: branch in self.replies, timeout):
                raise AssertionError(f"no reply to {data[:80]!r} within {timeout}s")
            return self.replies.pop(branch)

    def request(self, kam: Kamailio, channel: str, body: bytes, **kw: object) -> DmqResponse:
        return self.reply_to(self.send(kam, channel, body, **kw))  # type: ignore[arg-type]

    def wait_request(
        self, pred: Callable[[DmqRequest], bool], start: int = 0, timeout: float = 8.0
    ) -> int:
        """Index in :attr:`requests` of the first request from ``start`` on matching ``pred``."""

        def found() -> int | None:
            return next((i for i in range(start, len(self.requests))
                         if pred(self.requests[i])), None)  # fmt: skip

        with self.cond:
            if not self.cond.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"no matching request within {timeout}s")
            i = found()
            assert i is not None
            return i


def from_port(req: DmqRequest, port: int) -> bool:
    return req.channel == NOTE and req.from_.uri.port_number == port


class BlackHole:
    """A UDP port that receives and never answers (a node nobody runs, but observable)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((IP, 0))
        self.port: int = self.sock.getsockname()[1]

    def first_request(self, timeout: float = 8.0) -> DmqRequest:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        assert readable, f"nothing reached 127.0.0.1:{self.port} within {timeout}s"
        msg = parse_message(self.sock.recv(65535))
        assert isinstance(msg, DmqRequest)
        return msg


@pytest.fixture
def raw() -> Iterator[Raw]:
    f = Raw()
    try:
        yield f
    finally:
        f.close()
    assert not f.errors, f.errors


@pytest.fixture
def holes() -> Iterator[Callable[[], BlackHole]]:
    made: list[BlackHole] = []

    def make() -> BlackHole:
        made.append(BlackHole())
        return made[-1]

    try:
        yield make
    finally:
        for h in made:
            h.sock.close()


@pytest.fixture
def bus2(kamailio: KamailioFactory, raw: Raw) -> tuple[Kamailio, Kamailio]:
    """K1, K2 active on each other, and F joined through K1 (join: MF 2, its own line)."""
    k1 = kamailio.start(kam_config(None))
    k2 = kamailio.start(kam_config(kuri(k1)))
    wait_status(k1, k2.sip_port, "active", timeout=15)
    wait_status(k2, k1.sip_port, "active", timeout=15)
    rep = raw.request(k1, NOTE, node_list(raw.own_line()), max_forwards=2)
    assert rep.code == 200
    assert {k1.sip_port, k2.sip_port, raw.port} <= listed_ports(rep.body)
    wait_status(k1, raw.port, "active", timeout=2)
    wait_status(k2, raw.port, "active", timeout=5)
    return k1, k2


def test_ping_answers_other_than_200_change_nothing(
    bus2: tuple[Kamailio, Kamailio], raw: Raw
) -> None:
    """Cases 5 (404/500 to a ping: no change) and 4 (empty-body 200 to a ping counts)."""
    k1, _ = bus2
    raw.hold = lambda req: from_port(req, k1.sip_port)  # K1's pings: the test answers
    p1 = raw.next_held()
    assert p1[0].max_forwards == 1
    raw.answer(p1, 500, "Server Internal Error")
    # next ping, 5 s later (> fr_timer 2 s): a 500 did not act like a timeout (disabled)
    p2 = raw.next_held()
    assert status_of(k1, raw.port) == "active"
    raw.answer(p2, 404, "Not Found")

    # F announces it is leaving: disabled at once; K1 keeps pinging it
    assert raw.request(k1, NOTE, node_list(raw.own_line("disabled"))).code == 200
    assert status_of(k1, raw.port) == "disabled"
    p3 = raw.next_held()  # sent while F is disabled: a 408 would delete F, a 200 revive it
    raw.answer(p3, 404, "Not Found")
    p4 = raw.next_held()
    assert status_of(k1, raw.port) == "disabled"  # case 5: the 404 changed nothing
    # case 4: a 200 without a body is a 200: F active again, and stays so
    raw.answer(p4, 200, "OK")
    wait_status(k1, raw.port, "active", timeout=2)
    p5 = raw.next_held()
    raw.answer(p5, 200, "OK")
    assert status_of(k1, raw.port) == "active"


def test_forged_node_lists(
    bus2: tuple[Kamailio, Kamailio], raw: Raw, holes: Callable[[], BlackHole]
) -> None:
    """Cases 9 (a node nobody answers), 10 (no status), 11 (disabled for another node),
    12 (no Max-Forwards: no re-broadcast)."""
    k1, k2 = bus2
    a, p97, p96 = holes(), holes(), holes()
    # start right after one of K1's pings: the next is 5 s away, so every notification
    # F gets from K1 in the next moments is a re-broadcast
    start = len(raw.requests)
    start = raw.wait_request(lambda r: from_port(r, k1.sip_port), start) + 1

    # case 12: no Max-Forwards, a new node → 200, added, no re-broadcast
    rep = raw.request(k1, NOTE, node_list(f"sip:{IP}:{a.port};status=active"), max_forwards=None)
    assert rep.code == 200
    assert a.port in listed_ports(rep.body)
    assert status_of(k1, a.port) == "active"
    # case 9: a node nobody runs, announced with MF 2 (this one is re-broadcast: the control
    # for case 12, since K1's single DMQ worker handles the two notifications in order)
    rep = raw.request(k1, NOTE, node_list(f"sip:{IP}:{p97.port};status=active"), max_forwards=2)
    assert rep.code == 200
    assert status_of(k1, p97.port) == "active"
    rb = raw.wait_request(
        lambda r: from_port(r, k1.sip_port) and p97.port in listed_ports(r.body), start,
        timeout=2,
    )  # fmt: skip
    assert raw.requests[rb].max_forwards == 1
    early = [r for r in raw.requests[start:rb] if from_port(r, k1.sip_port)]
    assert not [r for r in early if a.port in listed_ports(r.body)], "case 12 re-broadcast"

    # case 10: a line without status → pending, not advertised
    rep = raw.request(k1, NOTE, node_list(f"sip:{IP}:{p96.port}"))
    assert rep.code == 200
    assert p96.port not in listed_ports(rep.body)
    assert status_of(k1, p96.port) == "pending"

    # case 11: F says K2 is disabled → disabled on K1 until K1's next ping gets K2's 200
    assert raw.request(k1, NOTE, node_list(f"sip:{IP}:{k2.sip_port};status=disabled")).code == 200
    assert status_of(k1, k2.sip_port) == "disabled"

    # K1 contacts the silent nodes: p97 (and a) first with the re-broadcast, which goes to
    # every active node, p96 with K1's next ping, whose body does not advertise p96
    assert p97.first_request(timeout=1).channel == NOTE
    ping96 = p96.first_request()
    assert (ping96.channel, ping96.max_forwards) == (NOTE, 1)
    assert p96.port not in listed_ports(ping96.body)
    wait_status(k1, k2.sip_port, "active", timeout=3)  # case 11: K2 answered that ping
    # case 9: the re-broadcast to p97 times out (fr_timer 2 s): disabled; the 408 of the
    # first ping sent while it is disabled deletes it
    wait_status(k1, p97.port, "disabled", timeout=1)
    wait_status(k1, p97.port, None, timeout=9)


def test_retransmitted_data_request_is_applied_twice(kamailio: KamailioFactory, raw: Raw) -> None:
    """Case 24: the same request (same branch) again after Kamailio answered it."""
    k1 = kamailio.start(kam_config(None))
    data = raw.send(k1, "count", b"one", content_type="text/plain")
    first = raw.reply_to(data)
    raw.sock.sendto(data, (IP, k1.sip_port))  # the retransmission: same bytes, same branch
    second = raw.reply_to(data)
    assert (first.code, second.code) == (200, 200)
    assert first.branch == second.branch
    shv = k1.jsonrpc("pv.shvGet", "applied")
    # Kamailio has no server transaction in front of the script: applied twice
    assert (shv["type"], shv["value"]) == ("int", 2), shv

    # pymqueue answers the same datagram from its reply cache and applies it once
    # (tests/test_dmq_transaction.py::test_reply_cache_answers_retransmission_once)
    core = DmqCore(DmqConfig(f"sip:{IP}:{k1.sip_port}"))
    calls: list[IncomingRequest] = []
    core.register_peer("count", lambda r: calls.append(r) or PeerReply())  # type: ignore[func-returns-value]
    core.start(0.0)
    core.receive_datagram(data, (IP, raw.port), 1.0)
    core.receive_datagram(data, (IP, raw.port), 1.2)
    out = core.datagrams_to_send(1.2)
    assert len(out) == 2
    assert out[0][0] == out[1][0]
    assert len(calls) == 1
