"""KDMQ codec: golden vectors captured from Kamailio 5.6.3, strict limits, signing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pymqueue.dmq import message as m
from pymqueue.dmq.message import (
    MAX_DATAGRAM,
    MAX_HEADERS,
    DmqRequest,
    DmqResponse,
    build_request,
    build_response,
    parse_message,
    parse_uri,
)
from pymqueue.errors import DmqProtocolError

DATA = Path(__file__).parent.parent / "data" / "dmq"
VECTORS = sorted(p.name for p in DATA.glob("*.sip"))
KAMAILIO_UA = "kamailio (5.6.3 (x86_64/linux))"
REQUESTS = {"01", "02", "04", "05", "06", "07", "08", "09", "10", "11", "13", "17", "20", "21"}
# Requests sent by Kamailio itself (tm's local UAC), whose exact form we reproduce.
KAMAILIO_REQUESTS = sorted(
    n for n in VECTORS if n[:2] in REQUESTS and n[:2] not in {"17", "20", "21"}
)
# (reply vector, request vector it answers, source address of that request)
REPLY_PAIRS = [
    ("03-notification-200-reply.sip", "01-notification-join-request.sip", ("127.0.0.1", 5092)),
    ("12-htable-200-reply.sip", "05-htable-sync-request.sip", ("127.0.0.1", 5091)),
    ("16-custom-channel-200-script.sip", "13-custom-channel-request.sip", ("127.0.0.1", 5091)),
    ("18-foreign-join-200.sip", "17-foreign-join-request.sip", ("127.0.0.1", 5099)),
]


def vector(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_vectors_present() -> None:
    assert len(VECTORS) == 24
    for name in VECTORS:
        data = vector(name)
        head, _, _ = data.partition(b"\r\n\r\n")
        assert b"\n" not in head.replace(b"\r\n", b""), name


@pytest.mark.parametrize("name", VECTORS)
def test_every_vector_parses(name: str) -> None:
    data = vector(name)
    msg = parse_message(data)
    head, _, body = data.partition(b"\r\n\r\n")
    assert msg.body == body
    assert msg.cseq_method == "KDMQ"
    assert msg.from_.tag
    assert msg.branch is not None
    assert msg.branch.startswith("z9hG4bK")
    if name[:2] in REQUESTS:
        assert isinstance(msg, DmqRequest)
        assert msg.method == "KDMQ"
        assert msg.channel == msg.to.uri.user == msg.from_.uri.user
        assert msg.to.tag is None
        assert msg.max_forwards in (1, 2)
        assert msg.content_type in ("text/plain", "application/json")
    else:
        assert isinstance(msg, DmqResponse)
        assert msg.to.tag
        first = head.split(b"\r\n", 1)[0].decode()
        assert first == f"SIP/2.0 {msg.code} {msg.reason}"


def test_vector_details() -> None:
    join = parse_message(vector("01-notification-join-request.sip"))
    assert isinstance(join, DmqRequest)
    assert join.channel == "notification_peer"
    assert (join.uri.host, join.uri.port) == ("127.0.0.1", "5091")
    assert (join.from_.uri.host, join.from_.uri.port) == ("127.0.0.1", "5092")
    assert join.max_forwards == 2
    assert join.cseq == 10
    assert join.call_id == "71437f65341c68b6-28873@127.0.0.1"
    assert join.via.sent_by() == "127.0.0.1:5092"
    assert not join.via.rport_requested
    foreign = parse_message(vector("17-foreign-join-request.sip"))
    assert foreign.via.rport_requested
    reply = parse_message(vector("18-foreign-join-200.sip"))
    assert isinstance(reply, DmqResponse)
    assert ("rport", "5099") in reply.via.params
    assert ("received", "127.0.0.1") in reply.via.params
    nf = parse_message(vector("14-custom-channel-404.sip"))
    assert isinstance(nf, DmqResponse)
    assert (nf.code, nf.reason) == (404, "User Not Found")
    acc = parse_message(vector("15-custom-channel-202.sip"))
    assert isinstance(acc, DmqResponse)
    assert (acc.code, acc.reason) == (202, "Accepted DMQ")


@pytest.mark.parametrize("name", KAMAILIO_REQUESTS)
def test_golden_request_byte_exact(name: str) -> None:
    """Given Kamailio's random values, we build the very same datagram."""
    data = vector(name)
    req = parse_message(data)
    assert isinstance(req, DmqRequest)
    assert req.channel is not None
    local = req.from_.uri
    built = build_request(
        channel=req.channel,
        target=parse_uri(f"sip:{req.uri.host}:{req.uri.port}"),
        local=parse_uri(f"sip:{local.host}:{local.port}"),
        body=req.body,
        content_type=req.content_type,
        max_forwards=req.max_forwards or 0,
        branch=req.branch,
        from_tag=req.from_.tag,
        call_id=req.call_id,
        user_agent=KAMAILIO_UA,
    )
    assert built == data


@pytest.mark.parametrize("name", KAMAILIO_REQUESTS)
def test_golden_request_form_with_our_values(name: str) -> None:
    """With our own random values: same headers in the same order, same body, sane forms."""
    req = parse_message(vector(name))
    assert isinstance(req, DmqRequest)
    assert req.channel is not None
    built = parse_message(
        build_request(
            channel=req.channel,
            target=req.to.uri.__class__(host=req.uri.host, port=req.uri.port),
            local=req.from_.uri.__class__(host=req.from_.uri.host, port=req.from_.uri.port),
            body=req.body,
            content_type=req.content_type,
            max_forwards=req.max_forwards or 0,
        )
    )
    assert isinstance(built, DmqRequest)
    assert built.header_names() == req.header_names()
    assert built.body == req.body
    assert str(built.uri) == str(req.uri)
    assert str(built.to) == str(req.to)
    assert str(built.from_.uri) == str(req.from_.uri)
    assert (built.cseq, built.cseq_method, built.max_forwards, built.content_type) == (
        req.cseq,
        req.cseq_method,
        req.max_forwards,
        req.content_type,
    )
    assert built.via.sent_by() == req.via.sent_by()
    assert re.fullmatch(r"z9hG4bK[0-9a-f]{16}", built.branch or "")
    assert re.fullmatch(r"[0-9a-f]{12}", built.from_.tag or "")
    assert re.fullmatch(r"[0-9a-f]{16}@127\.0\.0\.1", built.call_id)
    assert built.header("user-agent") == "pymqueue"


@pytest.mark.parametrize(("reply_name", "request_name", "source"), REPLY_PAIRS)
def test_golden_reply_byte_exact(
    reply_name: str, request_name: str, source: tuple[str, int]
) -> None:
    expected = vector(reply_name)
    reply = parse_message(expected)
    req = parse_message(vector(request_name))
    assert isinstance(req, DmqRequest)
    assert isinstance(reply, DmqResponse)
    built = build_response(
        req,
        reply.code,
        reply.reason,
        body=reply.body,
        content_type=reply.content_type,
        to_tag=reply.to.tag,
        source=source,
        server=KAMAILIO_UA,
    )
    assert built == expected


@pytest.mark.parametrize(
    ("reply_name", "code", "reason"),
    [
        ("14-custom-channel-404.sip", 404, "User Not Found"),
        ("15-custom-channel-202.sip", 202, "Accepted DMQ"),
        ("22-htable-400-bad-json.sip", 400, "Bad Request"),
        ("23-htable-500-unknown-table.sip", 500, "Server Internal Error"),
        ("24-unknown-channel-404.sip", 404, "User Not Found"),
    ],
)
def test_golden_reply_form(reply_name: str, code: int, reason: str) -> None:
    """Replies whose request was not captured: same header list for the same situation."""
    expected = parse_message(vector(reply_name))
    assert isinstance(expected, DmqResponse)
    req = parse_message(vector("13-custom-channel-request.sip"))
    assert isinstance(req, DmqRequest)
    built = parse_message(build_response(req, code, reason, source=("127.0.0.1", 5091)))
    assert isinstance(built, DmqResponse)
    assert built.header_names() == expected.header_names()
    assert (built.code, built.reason, built.body) == (expected.code, expected.reason, b"")
    assert built.to.tag
    assert re.fullmatch(r"[0-9a-f]{12}", built.to.tag)
    assert built.header("server") == "pymqueue"


def test_reply_copies_request_identity() -> None:
    req = parse_message(vector("04-notification-ping.sip"))
    assert isinstance(req, DmqRequest)
    body = b"sip:127.0.0.1:5093;status=active\r\n"
    reply = parse_message(
        build_response(req, 200, "OK", body=body, content_type="text/plain", source=("1.2.3.4", 9))
    )
    assert isinstance(reply, DmqResponse)
    assert reply.branch == req.branch
    assert reply.call_id == req.call_id
    assert reply.from_ == req.from_
    assert reply.to.uri == req.to.uri
    assert (reply.cseq, reply.cseq_method) == (10, "KDMQ")
    # source differs from the Via host and no rport: RFC 3261 adds received
    assert ("received", "1.2.3.4") in reply.via.params
    assert reply.body == body


def test_compact_headers_and_folding() -> None:
    data = (
        b"KDMQ sip:mqueue@127.0.0.1:5091 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKabc\r\n"
        b"t: <sip:mqueue@127.0.0.1:5091>\r\n"
        b"f: <sip:mqueue@127.0.0.1:5099>\r\n"
        b" ;tag=abc\r\n"
        b"i: x@y\r\n"
        b"CSeq: 1 KDMQ\r\n"
        b"c: text/plain\r\n"
        b"l: 2\r\n\r\nhi"
    )
    msg = parse_message(data)
    assert isinstance(msg, DmqRequest)
    assert msg.from_.tag == "abc"
    assert msg.content_type == "text/plain"
    assert msg.max_forwards is None
    assert msg.body == b"hi"


# ------------------------------------------------------------------ malformed input

GOOD = vector("13-custom-channel-request.sip")


def _replace(old: bytes, new: bytes) -> bytes:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


MALFORMED = {
    "empty": b"",
    "not sip": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "binary": bytes(range(256)),
    "no end of headers": GOOD.split(b"\r\n\r\n")[0],
    "lf only": GOOD.replace(b"\r\n", b"\n"),
    "bad version": _replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n"),
    "too big": GOOD + b"x" * MAX_DATAGRAM,
    "too many headers": _replace(b"CSeq:", b"X-A: 1\r\n" * (MAX_HEADERS + 1) + b"CSeq:"),
    "long header": _replace(b"CSeq:", b"X-A: " + b"a" * 5000 + b"\r\nCSeq:"),
    "length too big": _replace(b"Content-Length: 11", b"Content-Length: 12"),
    "length too small": _replace(b"Content-Length: 11", b"Content-Length: 10"),
    "length negative": _replace(b"Content-Length: 11", b"Content-Length: -11"),
    "length not a number": _replace(b"Content-Length: 11", b"Content-Length: eleven"),
    "length huge": _replace(b"Content-Length: 11", b"Content-Length: 99999999999999999999"),
    "length missing": _replace(b"Content-Length: 11\r\n", b""),
    "two lengths": _replace(b"Content-Length: 11", b"Content-Length: 11\r\nl: 11"),
    "via missing": re.sub(rb"Via: [^\r]*\r\n", b"", GOOD),
    "from missing": re.sub(rb"From: [^\r]*\r\n", b"", GOOD),
    "to missing": re.sub(rb"To: [^\r]*\r\n", b"", GOOD),
    "call-id missing": re.sub(rb"Call-ID: [^\r]*\r\n", b"", GOOD),
    "cseq missing": re.sub(rb"CSeq: [^\r]*\r\n", b"", GOOD),
    "cseq method differs": _replace(b"CSeq: 10 KDMQ", b"CSeq: 10 OPTIONS"),
    "cseq not a number": _replace(b"CSeq: 10 KDMQ", b"CSeq: ten KDMQ"),
    "cseq huge": _replace(b"CSeq: 10 KDMQ", b"CSeq: 99999999999 KDMQ"),
    "max-forwards bad": _replace(b"Max-Forwards: 1", b"Max-Forwards: x"),
    "max-forwards huge": _replace(b"Max-Forwards: 1", b"Max-Forwards: 256"),
    "not utf-8": _replace(b"User-Agent: kamailio", b"User-Agent: \xff\xfe"),
    "nul in header": _replace(b"User-Agent: kamailio", b"User-Agent: kam\x00ilio"),
    "header without colon": _replace(b"User-Agent:", b"User-Agent"),
    "bad header name": _replace(b"User-Agent:", b"User Agent:"),
    "bad via": _replace(b"SIP/2.0/UDP 127.0.0.1:5091", b"SIP/2.0/UDP"),
    "bad via port": _replace(b"SIP/2.0/UDP 127.0.0.1:5091", b"SIP/2.0/UDP 127.0.0.1:99999"),
    "bad uri port": _replace(b"KDMQ sip:mqueue@127.0.0.1:5093", b"KDMQ sip:mqueue@127.0.0.1:0"),
    "bad uri scheme": _replace(b"KDMQ sip:", b"KDMQ http:"),
    "unterminated from": _replace(b"From: <sip:mqueue@127.0.0.1:5091>", b"From: <sip:m@h"),
    "bad content-type": _replace(b"Content-Type: text/plain", b"Content-Type: text"),
    "continuation first": _replace(b"Via:", b" Via:"),
    "bad status": b"SIP/2.0 99 Weird\r\n\r\n",
    "status 700": vector("12-htable-200-reply.sip").replace(b"200 OK", b"700 OK"),
    "start line only": b"KDMQ sip:a@1.2.3.4 SIP/2.0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_raises_protocol_error(name: str) -> None:
    with pytest.raises(DmqProtocolError):
        parse_message(MALFORMED[name])


def test_non_bytes_raise_protocol_error() -> None:
    with pytest.raises(DmqProtocolError):
        parse_message("KDMQ sip:a@b SIP/2.0\r\n\r\n")  # type: ignore[arg-type]


def test_lenient_length_only_for_addressing_replies() -> None:
    data = MALFORMED["length missing"]
    msg = parse_message(data, strict_length=False)
    assert isinstance(msg, DmqRequest)
    assert msg.body == b"hello-bus-1"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channel": "a\r\nX-Evil: 1"},
        {"channel": ""},
        {"channel": "a b"},
        {"content_type": "text/plain\r\nX: y"},
        {"content_type": "plain"},
        {"max_forwards": 256},
        {"max_forwards": -1},
        {"branch": "z9hG4bK\r\n"},
        {"call_id": "a b"},
        {"body": "str body"},
        {"body": b"x" * MAX_DATAGRAM},
        {"user_agent": "ua\r\nX: y"},
    ],
)
def test_build_request_rejects_unsafe_input(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "channel": "mqueue",
        "target": parse_uri("sip:127.0.0.1:5091"),
        "local": parse_uri("sip:127.0.0.1:5092"),
        "body": b"x",
        "content_type": "text/plain",
    }
    args.update(kwargs)
    with pytest.raises(DmqProtocolError):
        build_request(**args)  # type: ignore[arg-type]


def test_build_response_rejects_unsafe_input() -> None:
    req = parse_message(GOOD)
    assert isinstance(req, DmqRequest)
    for code, reason, kw in [
        (99, "x", {}),
        (700, "x", {}),
        (200, "OK\r\nX: y", {}),
        (200, "OK", {"body": b"x"}),  # body without content type
        (200, "OK", {"body": b"x", "content_type": "bad"}),
    ]:
        with pytest.raises(DmqProtocolError):
            build_response(req, code, reason, **kw)  # type: ignore[arg-type]


def test_transport_in_request_uri() -> None:
    data = build_request(
        channel="mqueue",
        target=parse_uri("sip:10.0.0.1:5060;transport=tcp"),
        local=parse_uri("sip:10.0.0.2:5060"),
        body=b"",
        content_type=None,
    )
    msg = parse_message(data)
    assert isinstance(msg, DmqRequest)
    assert msg.uri.transport == "tcp"
    assert msg.header("content-type") is None
    assert msg.header("content-length") == "0"


def test_ipv6_hosts() -> None:
    data = build_request(
        channel="mqueue",
        target=parse_uri("sip:[::1]:5091"),
        local=parse_uri("sip:[::1]:5092"),
        body=b"x",
        content_type="text/plain",
    )
    msg = parse_message(data)
    assert isinstance(msg, DmqRequest)
    assert msg.uri.address == ("::1", 5091)
    assert msg.via.sent_by() == "[::1]:5092"


# ------------------------------------------------------------------ signing


def test_sign_and_verify() -> None:
    secret = b"s3cret"
    signed = m.sign(GOOD, secret)
    assert m.verify(signed, secret)
    assert not m.verify(signed, b"other")
    assert not m.verify(GOOD, secret)
    assert not m.verify(signed.replace(b"hello-bus-1", b"hello-bus-2"), secret)
    assert not m.verify(signed.replace(b"z9hG4bK1489", b"z9hG4bK1490"), secret)
    assert not m.verify(m.sign(signed, secret), secret)  # two signatures
    assert not m.verify(b"garbage", secret)
    msg = parse_message(signed)
    assert msg.body == b"hello-bus-1"
    assert msg.header(m.SIGNATURE_HEADER) is not None
