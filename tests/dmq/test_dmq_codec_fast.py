"""The codec's fast paths against its general ones (issue 13, per-message cost).

``parse_message`` first tries ``_parse_fast`` (one regex over the header lines, cached URIs
and sent-by parts); whatever it returns must be exactly what the general path ``_parse``
returns for the same bytes, and it must never accept what the general path rejects.
``build_request`` fills a per-destination template; its bytes must equal those of the
line-by-line builder it replaced (kept below as the reference).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dmq_fuzz import mutated_vector

from pymqueue.dmq import message as m
from pymqueue.dmq.message import (
    SIP_VERSION,
    DmqRequest,
    NameAddr,
    Params,
    SipUri,
    Via,
    build_request,
    build_response,
    parse_message,
    parse_uri,
)
from pymqueue.errors import DmqProtocolError

DATA = Path(__file__).parent.parent / "data" / "dmq"
VECTORS = {p.name: p.read_bytes() for p in sorted(DATA.glob("*.sip"))}
FUZZ = settings(
    max_examples=1500,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def general(data: bytes) -> m.DmqRequest | m.DmqResponse | str:
    try:
        return m._parse(data, True)
    except DmqProtocolError:
        return "rejected"


def fast(data: bytes) -> m.DmqRequest | m.DmqResponse | None:
    try:
        return m._parse_fast(data)
    except Exception:
        return None  # parse_message then asks the general path


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vectors_take_the_fast_path_with_the_same_result(name: str) -> None:
    data = VECTORS[name]
    got = fast(data)
    assert got is not None, name  # every captured Kamailio message is the common case
    assert got == general(data)
    assert parse_message(data) == got


def test_own_messages_take_the_fast_path() -> None:
    a, b = parse_uri("sip:127.0.0.1:5099"), parse_uri("sip:[::1]:5100;transport=udp")
    for rport in (False, True):
        req = build_request(
            channel="echo",
            target=b,
            local=a,
            body=b"x" * 64,
            content_type="text/plain",
            rport=rport,
        )
        parsed = fast(req)
        assert isinstance(parsed, DmqRequest)
        assert parsed == general(req)
        for source in (None, ("127.0.0.1", 5099), ("10.0.0.1", 7)):
            reply = build_response(parsed, 200, "OK", body=b"y", content_type="a/b", source=source)
            got = fast(reply)
            assert got is not None
            assert got == general(reply)


# variants the fast path must hand to the general path (or decide the same way)
ODD = {
    "folded": lambda d: d.replace(b"\r\nCall-ID:", b"\r\n Call-ID:", 1),
    "folded value": lambda d: d.replace(b"\r\nCSeq: ", b"\r\nCSeq:\r\n\t", 1),
    "trailing blank": lambda d: d.replace(b"\r\nCSeq: 10 KDMQ", b"\r\nCSeq: 10 KDMQ  ", 1),
    "tab before colon": lambda d: d.replace(b"\r\nCSeq:", b"\r\nCSeq\t:", 1),
    "two vias": lambda d: d.replace(
        b"\r\nTo:", b"\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nTo:", 1
    ),
    "two call-ids": lambda d: d.replace(b"\r\nTo:", b"\r\nCall-ID: again\r\nTo:", 1),
    "compact names": lambda d: d.replace(b"\r\nVia:", b"\r\nv:", 1).replace(
        b"\r\nFrom:", b"\r\nf:", 1
    ),
    "lower-case names": lambda d: d.replace(b"\r\nCSeq:", b"\r\ncseq:", 1),
    "blank param": lambda d: d.replace(b";tag=", b"; tag=", 1),
    "quoted param": lambda d: d.replace(b";tag=", b';x="a;b";tag=', 1),
    "upper param": lambda d: d.replace(b";tag=", b";TAG=", 1),
    "display name": lambda d: d.replace(b"\r\nFrom: <", b'\r\nFrom: "node" <', 1),
    "bare uri": lambda d: d.replace(b"\r\nTo: <", b"\r\nTo: ", 1).replace(
        b">\r\nFrom", b"\r\nFrom", 1
    ),
    "digit method": lambda d: d.replace(b"KDMQ", b"KD1Q"),
    "long method": lambda d: d.replace(b"KDMQ", b"K" * 33),
    "lone cr": lambda d: d.replace(b"\r\nCSeq: 10", b"\r\nCSeq: 1\r0", 1),
    "nul": lambda d: d.replace(b"\r\nCSeq: 10", b"\r\nCSeq: 1\x000", 1),
    "bad utf-8": lambda d: d.replace(b"\r\nCSeq: 10 KDMQ", b"\r\nCSeq: 10 KDMQ\r\nX: \xff", 1),
    "long header": lambda d: d.replace(b"\r\nCSeq:", b"\r\nX: " + b"a" * 5000 + b"\r\nCSeq:", 1),
    "many headers": lambda d: d.replace(b"\r\nCSeq:", b"\r\nX: 1" * 70 + b"\r\nCSeq:", 1),
    "length off": lambda d: d + b"!",
    "33 params": lambda d: d.replace(b";tag=", b";a" * 32 + b";tag=", 1),
    "via blank before params": lambda d: d.replace(b":5091;branch", b":5091 ;branch", 1),
    "via without params": lambda d: d.replace(
        b";branch=z9hG4bK7d5b.43d53566000000000000000000000000.0", b"", 1
    ),
    "big cseq": lambda d: d.replace(b"CSeq: 10 ", b"CSeq: 2147483648 ", 1),
    "max-forwards 256": lambda d: d.replace(b"Max-Forwards: 2", b"Max-Forwards: 256", 1),
}


@pytest.mark.parametrize("name", sorted(ODD))
@pytest.mark.parametrize(
    "vector", ["01-notification-join-request.sip", "03-notification-200-reply.sip"]
)
def test_odd_forms_decide_as_the_general_path(name: str, vector: str) -> None:
    data = ODD[name](VECTORS[vector])
    got = fast(data)
    want = general(data)
    if got is not None:
        assert got == want, name
    result: object
    try:
        result = parse_message(data)
    except DmqProtocolError:
        result = "rejected"
    assert result == want


def test_fast_path_really_steps_aside() -> None:
    """The cases above do reach the general path (else the test proves nothing)."""
    join = VECTORS["01-notification-join-request.sip"]
    for name in (
        "folded value",
        "trailing blank",
        "two vias",
        "bad utf-8",
        "long header",
        "length off",
        "digit method",
    ):
        assert fast(ODD[name](join)) is None, name
    for name in ("folded value", "trailing blank", "two vias", "blank param"):
        assert general(ODD[name](join)) != "rejected", name  # accepted, by the general path
    assert general(ODD["two vias"](join)) != "rejected"


@FUZZ
@given(mutated_vector())
def test_fast_path_never_disagrees_on_mutated_vectors(data: bytes) -> None:
    got = fast(data)
    if got is not None:
        assert got == general(data)


@FUZZ
@given(st.sampled_from(sorted(ODD)), st.sampled_from(sorted(ODD)), st.sampled_from(sorted(VECTORS)))
def test_fast_path_never_disagrees_on_combined_odd_forms(a: str, b: str, vector: str) -> None:
    data = ODD[b](ODD[a](VECTORS[vector]))
    got = fast(data)
    if got is not None:
        assert got == general(data)


# ------------------------------------------------------------------ build_request reference


def reference_build_request(
    *,
    channel: str,
    target: SipUri,
    local: SipUri,
    body: bytes,
    content_type: str | None,
    max_forwards: int,
    branch: str,
    from_tag: str,
    call_id: str,
    cseq: int,
    user_agent: str | None,
    rport: bool,
) -> bytes:
    """The line-by-line builder the template replaced (validation left out)."""
    transport = target.transport
    r_params: Params = (("transport", transport),) if transport and transport != "udp" else ()
    ruri = SipUri(host=target.host, port=target.port, user=channel, params=r_params)
    from_uri = SipUri(host=local.host, port=local.port, user=channel)
    via_params: Params = (("branch", branch),) + ((("rport", None),) if rport else ())
    via = Via(transport="UDP", host=local.host, port=local.port_number, params=via_params)
    lines = [
        f"KDMQ {ruri} {SIP_VERSION}",
        f"Via: {via}",
        f"To: <{ruri}>",
        f"From: <{from_uri}>;tag={from_tag}",
        f"CSeq: {cseq} KDMQ",
        f"Call-ID: {call_id}",
        f"Content-Length: {len(body)}",
    ]
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    lines.append(f"Max-Forwards: {max_forwards}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


URIS = [
    "sip:127.0.0.1:5060",
    "sip:127.0.0.1",
    "sip:[::1]:5070",
    "sip:node.example:5080;transport=udp",
    "sip:10.0.0.2:5090;transport=tcp",
]


@settings(max_examples=300, database=None, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "channel": st.sampled_from(["echo", "mqueue", "notification_peer", "a.b-c"]),
            "target": st.sampled_from(URIS).map(parse_uri),
            "local": st.sampled_from(URIS).map(parse_uri),
            "body": st.binary(max_size=200),
            "content_type": st.sampled_from([None, "text/plain", "application/json;charset=utf-8"]),
            "max_forwards": st.integers(0, 255),
            "cseq": st.integers(0, 2**31 - 1),
            "user_agent": st.sampled_from(
                [None, "", "pymqueue", "kamailio (5.6.3 (x86_64/linux))"]
            ),
            "rport": st.booleans(),
        }
    )
)
def test_template_builds_the_same_bytes(args: dict[str, object]) -> None:
    args = {
        **args,
        "branch": m.new_branch(),
        "from_tag": m.new_tag(),
        "call_id": m.new_call_id("127.0.0.1"),
    }
    for _ in range(2):  # the second call uses the cached template
        assert build_request(**args) == reference_build_request(**args)  # type: ignore[arg-type]


def test_template_cache_does_not_let_bad_values_through() -> None:
    a, b = parse_uri("sip:127.0.0.1:5099"), parse_uri("sip:127.0.0.1:5100")
    build_request(channel="echo", target=b, local=a, body=b"", content_type=None)
    for kw in (
        {"cseq": -1},
        {"branch": "z9hG4bK\r\n"},
        {"call_id": "a b"},
        {"from_tag": "a;b"},
        {"body": "text"},
        {"max_forwards": 256},
        {"channel": "a b"},
    ):
        args: dict[str, object] = {
            "channel": "echo",
            "target": b,
            "local": a,
            "body": b"",
            "content_type": None,
        }
        args.update(kw)
        with pytest.raises(DmqProtocolError):
            build_request(**args)  # type: ignore[arg-type]
    # True == 1 as a dict key: the template of 1 must not be used for True
    one = build_request(
        channel="echo",
        target=b,
        local=a,
        body=b"",
        content_type=None,
        branch="z9hG4bKa",
        from_tag="t",
        call_id="c",
    )
    odd = build_request(
        channel="echo",
        target=b,
        local=a,
        body=b"",
        content_type=None,
        branch="z9hG4bKa",
        from_tag="t",
        call_id="c",
        max_forwards=True,
    )
    assert b"Max-Forwards: 1\r\n" in one
    assert odd == reference_build_request(
        channel="echo",
        target=b,
        local=a,
        body=b"",
        content_type=None,
        max_forwards=True,
        branch="z9hG4bKa",
        from_tag="t",
        call_id="c",
        cseq=10,
        user_agent="pymqueue",
        rport=False,
    )


# ------------------------------------------------------------------ build_response reference


def reference_build_response(
    request: DmqRequest,
    code: int,
    reason: str,
    *,
    body: bytes,
    content_type: str | None,
    to_tag: str,
    source: tuple[str, int] | None,
    server: str | None,
) -> bytes:
    """The line-by-line reply builder the one-string form replaced (validation left out)."""
    vias = list(request.vias)
    if source is not None:
        top = vias[0]
        ip, port = source
        if top.rport_requested:
            params: list[tuple[str, str | None]] = []
            for n, v in top.params:
                if n == "rport" and v is None:
                    params += [("rport", str(port)), ("received", ip)]
                elif n != "received":
                    params.append((n, v))
            vias[0] = Via(top.transport, top.host, top.port, tuple(params))
        elif top.host.strip("[]") != ip and m._param(top.params, "received") is None:
            vias[0] = Via(top.transport, top.host, top.port, (*top.params, ("received", ip)))
    to = request.to
    if to.tag is None:
        to = NameAddr(to.uri, (*to.params, ("tag", to_tag)), to.display)
    lines = [f"{SIP_VERSION} {code} {reason}"]
    lines += [f"Via: {v}" for v in vias]
    lines += [
        f"To: {to}",
        f"From: {request.from_}",
        f"CSeq: {request.cseq} {request.cseq_method}",
        f"Call-ID: {request.call_id}",
    ]
    if body:
        lines.append(f"Content-Type: {content_type}")
    if server:
        lines.append(f"Server: {server}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


REQUEST_VECTORS = [
    VECTORS[n] for n in sorted(VECTORS) if isinstance(general(VECTORS[n]), DmqRequest)
]


@settings(max_examples=300, database=None, deadline=None)
@given(
    st.sampled_from(REQUEST_VECTORS),
    st.sampled_from(sorted(ODD)),
    st.fixed_dictionaries(
        {
            "code": st.integers(200, 699),
            "reason": st.sampled_from(["OK", "Not Found", "Server Internal Error", ""]),
            "body": st.binary(max_size=100),
            "source": st.sampled_from([None, ("127.0.0.1", 5060), ("10.1.2.3", 7), ("::1", 9)]),
            "server": st.sampled_from([None, "", "pymqueue", "kamailio (5.6.3)"]),
        }
    ),
)
def test_reply_builder_gives_the_same_bytes(data: bytes, odd: str, args: dict[str, object]) -> None:
    for variant in (data, ODD[odd](data), data.replace(b";branch=", b";rport;branch=", 1)):
        request = general(variant)
        if not isinstance(request, DmqRequest):
            continue
        ctype = "text/plain" if args["body"] else None
        got = build_response(request, content_type=ctype, to_tag="t4g", **args)  # type: ignore[arg-type]
        assert got == reference_build_response(request, content_type=ctype, to_tag="t4g", **args)  # type: ignore[arg-type]
