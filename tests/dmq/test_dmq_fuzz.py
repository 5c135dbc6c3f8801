"""Hypothesis fuzzing of the KDMQ codec, the node-list parser and the core's receive path:
no exception other than DmqProtocolError may escape the parsers, none at all the core."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymqueue.dmq import DmqConfig, DmqCore, DmqRequest, PeerReply, parse_message
from pymqueue.dmq.message import build_request, parse_uri, sign, verify
from pymqueue.dmq.nodes import parse_node_list
from pymqueue.errors import DmqProtocolError

DATA = Path(__file__).parent.parent / "data" / "dmq"
VECTORS = [p.read_bytes() for p in sorted(DATA.glob("*.sip"))]
FUZZ = settings(
    max_examples=400,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SIP_ALPHABET = (
    b'KDMQ SIP/2.0 sip:@;=<>:,.\r\n\t "-_zZ9hG4bK0123456789abcdefviatofromcseqcall-idlength'
    b"\x00\xff\xc3"
)


@st.composite
def mutated_vector(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VECTORS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup", "swap"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.sampled_from(list(SIP_ALPHABET)))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=20))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            end = pos + draw(st.integers(1, 80))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 80))
        elif op == "swap":
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


structured = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"KDMQ sip:mqueue@127.0.0.1:5091 SIP/2.0",
                b"SIP/2.0 200 OK",
                b"Via: SIP/2.0/UDP 127.0.0.1:5092;branch=z9hG4bKx;rport",
                b"To: <sip:mqueue@127.0.0.1:5091>",
                b"From: <sip:mqueue@127.0.0.1:5092>;tag=1",
                b"CSeq: 10 KDMQ",
                b"Call-ID: a@b",
                b"Content-Length: 5",
                b"Max-Forwards: 2",
                b"Content-Type: text/plain",
                b"",
                b"hello",
            ]
        ),
        st.binary(max_size=40),
    ),
    max_size=14,
).map(b"\r\n".join)


def check_parse(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except DmqProtocolError:
        return
    # what parses must be self-consistent
    assert len(msg.body) == int(msg.header("content-length") or -1)
    assert msg.vias


@FUZZ
@given(st.binary(max_size=3000))
def test_parse_random_bytes(data: bytes) -> None:
    check_parse(data)


@FUZZ
@given(mutated_vector())
def test_parse_mutated_vectors(data: bytes) -> None:
    check_parse(data)
    check_parse(data.replace(b"\r\n", b"\n"))


@FUZZ
@given(structured)
def test_parse_structured(data: bytes) -> None:
    check_parse(data)


node_text = st.text(alphabet="sip:0123456789.;=[]statuacivepndlbrxyz\r\n\x00 -", max_size=300)


@FUZZ
@given(st.one_of(st.binary(max_size=500), node_text.map(str.encode)))
def test_node_list_parser(body: bytes) -> None:
    try:
        lines = parse_node_list(body)
    except DmqProtocolError:
        return
    for line in lines:
        assert line.node.host


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["127.0.0.1", "10.0.0.7", "[::1]", "host.example"]),
            st.sampled_from(["", ":5060", ":1", ":65535"]),
            st.sampled_from(
                [
                    "",
                    ";status=active",
                    ";status=pending",
                    ";status=disabled",
                    ";status=timeout",
                    ";transport=tcp;status=active",
                    ";x=y",
                ]
            ),
            st.sampled_from(["\r\n", "\n"]),
        ),
        max_size=20,
    )
)
def test_node_list_valid_lines_parse(parts: list[tuple[str, str, str, str]]) -> None:
    body = "".join(f"sip:{h}{p}{q}{e}" for h, p, q, e in parts).encode()
    assert len(parse_node_list(body)) == len(parts)


channels = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.!~*'()&=+$,/%", min_size=1, max_size=30
)


@FUZZ
@given(
    channels,
    st.binary(max_size=2000),
    st.sampled_from([None, "text/plain", "application/json"]),
    st.integers(0, 255),
)
def test_build_parse_roundtrip(
    channel: str, body: bytes, content_type: str | None, mf: int
) -> None:
    data = build_request(
        channel=channel,
        target=parse_uri("sip:10.1.2.3:5060"),
        local=parse_uri("sip:[2001:db8::1]:5070"),
        body=body,
        content_type=content_type,
        max_forwards=mf,
    )
    msg = parse_message(data)
    assert isinstance(msg, DmqRequest)
    assert (msg.channel, msg.body, msg.content_type, msg.max_forwards) == (
        channel,
        body,
        content_type,
        mf,
    )
    secret = b"fuzz"
    assert verify(sign(data, secret), secret)


@FUZZ
@given(st.text(max_size=60), st.binary(max_size=100))
def test_build_never_raises_other_errors(channel: str, body: bytes) -> None:
    with contextlib.suppress(DmqProtocolError):
        build_request(
            channel=channel,
            target=parse_uri("sip:10.1.2.3:5060"),
            local=parse_uri("sip:10.1.2.4:5060"),
            body=body,
            content_type=channel or None,
        )


@FUZZ
@given(st.text(max_size=80))
def test_parse_uri_total(text: str) -> None:
    with contextlib.suppress(DmqProtocolError):
        parse_uri(text)


@FUZZ
@given(st.lists(st.one_of(mutated_vector(), st.binary(max_size=200)), max_size=8), st.booleans())
def test_core_survives_anything(datagrams: list[bytes], signed: bool) -> None:
    secret = b"s" if signed else None
    core = DmqCore(
        DmqConfig(
            "sip:127.0.0.1:5091", secret=secret, notification_addresses=("sip:127.0.0.1:5092",)
        )
    )
    core.register_peer("mqueue", lambda r: PeerReply())
    core.register_peer("htable", lambda r: None)
    core.start(0.0)
    now = 0.0
    for data in datagrams:
        now += 0.3
        core.receive_datagram(
            sign(data, b"s") if signed and b"\r\n\r\n" in data else data, ("127.0.0.1", 5092), now
        )
        core.handle_timer(now)
        for out, _ in core.datagrams_to_send(now):
            parse_message(out)  # everything we send is well-formed
        while core.next_event() is not None:
            pass
    core.handle_timer(now + 100.0)
