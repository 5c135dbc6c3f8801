"""KDMQ codec: parse and build the SIP messages of Kamailio's DMQ bus (sans-I/O).

A DMQ message is a SIP ``KDMQ`` request over UDP, answered by an ordinary SIP final reply
(``docs/dmq.md``; wire facts in the shared spec, section 2). This module turns datagrams into
:class:`DmqRequest` / :class:`DmqResponse` values and back, byte-compatible with what Kamailio
5.6.3 sends and accepts.

Parsing (:func:`parse_message`) is strict and total: for *any* input it returns a message or
raises :class:`pymqueue.errors.DmqProtocolError`, never another exception. It enforces

* a datagram of at most :data:`MAX_DATAGRAM` bytes, CRLF line ends in the header section,
* at most :data:`MAX_HEADERS` header lines of at most :data:`MAX_HEADER_LINE` bytes each,
  UTF-8 without control characters, folded lines unfolded,
* a ``SIP/2.0`` start line, the mandatory ``Via``/``From``/``To``/``Call-ID``/``CSeq`` and a
  ``Content-Length`` equal to the body length (exactly: the body is the rest of the datagram).

Building (:func:`build_request`, :func:`build_response`) only emits the safe forms: CRLF on
every line, the header order Kamailio uses, validated tokens (no CR/LF can be injected) and a
``Content-Length``. :func:`sign` / :func:`verify` add and check an HMAC-SHA256 over the whole
datagram in the ``X-Pymqueue-Signature`` header, which Kamailio ignores.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import NamedTuple

from pymqueue.errors import DmqProtocolError

__all__ = [
    "MAX_DATAGRAM",
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "SIGNATURE_HEADER",
    "DmqRequest",
    "DmqResponse",
    "NameAddr",
    "SipUri",
    "Via",
    "build_request",
    "build_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "parse_uri",
    "sign",
    "verify",
]

MAX_DATAGRAM = 65535
"""Largest datagram parsed or built (Kamailio's BUF_SIZE)."""
MAX_HEADERS = 64
"""Most header lines accepted in one message (after unfolding)."""
MAX_HEADER_LINE = 4096
"""Longest header line (name, colon and value, after unfolding) or start line, in bytes."""
SIGNATURE_HEADER = "X-Pymqueue-Signature"
"""Header carrying the HMAC-SHA256 of the rest of the datagram (pymqueue nodes only)."""

SIP_VERSION = "SIP/2.0"
BRANCH_COOKIE = "z9hG4bK"

_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "l": "content-length",
    "c": "content-type",
    "m": "contact",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,/%]+")
_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+|\"[^\"\\\r\n]*\"")
_URI_RE = re.compile(
    r"sip:(?:(?P<user>[^@;?:\s<>]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:;?\s\[\]<>@]+)"
    r"(?::(?P<port>[^;?\s]*))?(?P<params>(?:;[^;?\s]*)*)",
    re.IGNORECASE,
)
_VIA_RE = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*(?P<transport>[A-Za-z]+)\s+(?P<host>\[[0-9A-Fa-f:.]+\]|[^:;\s]+)"
    r"(?::(?P<port>[0-9]+))?\s*(?P<params>(?:;.*)?)",
    re.IGNORECASE,
)
_CSEQ_RE = re.compile(r"([0-9]{1,10})\s+(" + _TOKEN + r")")
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ([^\x00-\x1f\x7f]*)")
_REQUEST_RE = re.compile(r"(" + _TOKEN + r") (\S+) SIP/2\.0")
_CALL_ID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}@]+")
_MEDIA_TYPE_RE = re.compile(
    _TOKEN + "/" + _TOKEN + r"(?:\s*;\s*" + _TOKEN + "=(?:" + _TOKEN + r"|\"[^\"\r\n]*\"))*"
)
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PARAMS_FAST_RE = re.compile(r"(?:;" + _TOKEN + r"(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+)?){1,32}")
_LENGTH_RE = re.compile(r"[0-9]{1,6}")
_MAX_FORWARDS_RE = re.compile(r"[0-9]{1,3}")
_DISPLAY_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ ]+")
# one header line of the fast path: CRLF, name, colon, value (no control character but HTAB,
# so no folding either); the value neither starts nor ends with a blank (a line ending in
# blanks does not match, so the general path strips it)
_FAST_LINE_RE = re.compile(
    r"\r\n(" + _TOKEN + r")[ \t]*:[ \t]*"
    r"((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)(?=\r\n|\Z)"
)
_REASON_RE = re.compile(r"[^\x00-\x1f\x7f]{0,128}")


def _fail(message: str) -> DmqProtocolError:
    return DmqProtocolError(message)


Params = tuple[tuple[str, str | None], ...]


def _parse_params(text: str, what: str) -> Params:
    """Parse ``;name[=value]…`` (``text`` starts with ``;`` or is empty)."""
    if not text:
        return ()
    if _PARAMS_FAST_RE.fullmatch(text):
        # no whitespace, no quotes, at most 32: the loop below without its checks
        if text.count(";") == 1:  # the usual ;tag= or ;branch=
            name, sep, value = text[1:].partition("=")
            return ((name.lower(), value if sep else None),)
        out: list[tuple[str, str | None]] = []
        for raw in text[1:].split(";"):
            name, sep, value = raw.partition("=")
            out.append((name.lower(), value if sep else None))
        return tuple(out)
    if not text.startswith(";"):
        raise _fail(f"bad parameters in {what}")
    out = []
    for raw in text[1:].split(";"):
        part = raw.strip()
        name, sep, value = part.partition("=")
        name = name.strip()
        if not _TOKEN_RE.fullmatch(name):
            raise _fail(f"bad parameter name in {what}: {part[:40]!r}")
        if sep:
            value = value.strip()
            if not _PARAM_VALUE_RE.fullmatch(value):
                raise _fail(f"bad parameter value in {what}: {part[:40]!r}")
            out.append((name.lower(), value))
        else:
            out.append((name.lower(), None))
        if len(out) > 32:
            raise _fail(f"too many parameters in {what}")
    return tuple(out)


def _format_params(params: Params) -> str:
    if not params:
        return ""
    return "".join([f";{n}" if v is None else f";{n}={v}" for n, v in params])


def _param(params: Params, name: str) -> str | None:
    for n, v in params:
        if n == name:
            return v if v is not None else ""
    return None


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` URI as DMQ uses it: ``sip:[user@]host[:port][;params]``.

    ``port`` is the literal port string (``""`` when absent): Kamailio names a node by the
    literal host, port and transport strings, so ``sip:h`` and ``sip:h:5060`` differ.
    """

    host: str
    port: str = ""
    user: str | None = None
    params: Params = ()
    _text: str = field(default="", init=False, repr=False, compare=False)
    """``str(self)``, formatted at the first call (URIs are parsed once and cached)."""

    @property
    def port_number(self) -> int:
        """The port to send to (5060 when the URI has none)."""
        return int(self.port) if self.port else 5060

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or None."""
        value = _param(self.params, "transport")
        return value.lower() if value else None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for a UDP socket (IPv6 brackets removed)."""
        return (self.host.strip("[]"), self.port_number)

    def __str__(self) -> str:
        text = self._text
        if not text:
            user = f"{self.user}@" if self.user is not None else ""
            port = f":{self.port}" if self.port else ""
            text = f"sip:{user}{self.host}{port}{_format_params(self.params)}"
            object.__setattr__(self, "_text", text)
        return text


def parse_uri(text: str) -> SipUri:
    """Parse a ``sip:`` URI; raise :class:`DmqProtocolError` if it is not one we accept."""
    if not isinstance(text, str) or len(text) > MAX_HEADER_LINE:
        raise _fail("bad SIP URI")
    return _parse_uri(text)


@functools.lru_cache(maxsize=1024)
def _parse_uri(text: str) -> SipUri:
    """Cached (errors are not): a bus sees the same few URIs in every message, and a
    :class:`SipUri` is immutable."""
    m = _URI_RE.fullmatch(text)
    if m is None:
        raise _fail(f"bad SIP URI: {text[:80]!r}")
    user, host, port = m.group("user"), m.group("host"), m.group("port")
    if user is not None and not _USER_RE.fullmatch(user):
        raise _fail(f"bad user part in URI: {text[:80]!r}")
    if not _HOST_RE.fullmatch(host):
        raise _fail(f"bad host in URI: {text[:80]!r}")
    if port is not None and (not _PORT_RE.fullmatch(port) or not 0 < int(port) <= 65535):
        raise _fail(f"bad port in URI: {text[:80]!r}")
    return SipUri(
        host=host,
        port=port or "",
        user=user,
        params=_parse_params(m.group("params"), "URI"),
    )


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A ``From``/``To`` value: ``<uri>;params`` (``tag`` is the tag parameter or None)."""

    uri: SipUri
    params: Params = ()
    display: str = ""

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _parse_name_addr(value: str, what: str) -> NameAddr:
    if value[:1] == "<":  # the usual form, no display name: the branch below without it
        uri_text, sep, params = value[1:].partition(">")
        if sep:
            return NameAddr(parse_uri(uri_text.strip()), _parse_params(params.strip(), what))
    if "<" in value:
        display, _, rest = value.partition("<")
        uri_text, sep, params = rest.partition(">")
        if not sep:
            raise _fail(f"unterminated <> in {what}")
        display = display.strip()
        if display and not (
            (display.startswith('"') and display.endswith('"') and len(display) >= 2)
            or _DISPLAY_RE.fullmatch(display)
        ):
            raise _fail(f"bad display name in {what}")
        return NameAddr(
            uri=parse_uri(uri_text.strip()),
            params=_parse_params(params.strip(), what),
            display=display,
        )
    uri_text, sep, params = value.partition(";")
    return NameAddr(uri=parse_uri(uri_text.strip()), params=_parse_params(sep + params, what))


@dataclass(frozen=True, slots=True)
class Via:
    """One ``Via`` value: ``SIP/2.0/UDP host[:port];params``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    @property
    def rport_requested(self) -> bool:
        """True when the sender asked for ``rport`` (a bare ``;rport``)."""
        return any(n == "rport" and v is None for n, v in self.params)

    def sent_by(self) -> str:
        return f"{self.host}:{self.port}" if self.port is not None else self.host

    def __str__(self) -> str:
        sent_by = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {sent_by}{_format_params(self.params)}"


def _parse_via(value: str) -> Via:
    value = value.strip()
    sent, sep, params = value.partition(";")
    if sep and sent == sent.rstrip():  # the cached protocol and sent-by, then the params
        try:
            transport, host, port = _parse_sent_by(sent)
        except DmqProtocolError:
            return _parse_via_text(value)  # raises, naming the whole value
        return Via(transport, host, port, _parse_params(sep + params, "Via"))
    return _parse_via_text(value)


@functools.lru_cache(maxsize=256)
def _parse_sent_by(sent: str) -> tuple[str, str, int | None]:
    """``SIP/2.0/UDP host:port`` of a Via, cached (a bus sees few); errors as the whole."""
    via = _parse_via_text(sent)
    return via.transport, via.host, via.port


def _parse_via_text(value: str) -> Via:
    m = _VIA_RE.fullmatch(value)
    if m is None:
        raise _fail(f"bad Via: {value[:80]!r}")
    host = m.group("host")
    if not _HOST_RE.fullmatch(host):
        raise _fail(f"bad Via host: {value[:80]!r}")
    port_text = m.group("port")
    port: int | None = None
    if port_text is not None:
        if len(port_text) > 5 or not 0 < int(port_text) <= 65535:
            raise _fail(f"bad Via port: {value[:80]!r}")
        port = int(port_text)
    return Via(
        transport=m.group("transport").upper(),
        host=host,
        port=port,
        params=_parse_params(m.group("params").strip(), "Via"),
    )


@dataclass(frozen=True, slots=True)
class _Common:
    headers: tuple[tuple[str, str], ...]
    """Every header as ``(lower-case full name, value)`` in wire order (unfolded)."""
    body: bytes
    vias: tuple[Via, ...]
    from_: NameAddr
    to: NameAddr
    call_id: str
    cseq: int
    cseq_method: str
    content_type: str | None

    @property
    def via(self) -> Via:
        """The top ``Via``."""
        return self.vias[0]

    @property
    def branch(self) -> str | None:
        return self.vias[0].branch

    def header(self, name: str) -> str | None:
        """First value of a header (full or compact name, any case), or None."""
        key = _COMPACT.get(name.lower(), name.lower())
        for n, v in self.headers:
            if n == key:
                return v
        return None

    def header_names(self) -> list[str]:
        return [n for n, _ in self.headers]


@dataclass(frozen=True, slots=True)
class DmqRequest(_Common):
    """A parsed request. ``channel`` is the R-URI user part (Kamailio's "peer")."""

    method: str
    uri: SipUri
    max_forwards: int | None

    @property
    def channel(self) -> str | None:
        return self.uri.user


@dataclass(frozen=True, slots=True)
class DmqResponse(_Common):
    """A parsed final or provisional reply."""

    code: int
    reason: str


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise _fail("no end of headers (CRLF CRLF)")
    return data[:end], data[end + 4 :]


def _header_lines(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail("header section is not UTF-8") from exc
    raw_lines = text.split("\r\n")
    start = raw_lines[0]
    if len(start) > MAX_HEADER_LINE:
        raise _fail("start line too long")
    lines: list[str] = []
    for raw in raw_lines[1:]:
        if raw[:1] in (" ", "\t"):
            if not lines:
                raise _fail("continuation line before the first header")
            lines[-1] += " " + raw.strip(" \t")
        else:
            lines.append(raw)
        if len(lines[-1]) > MAX_HEADER_LINE:
            raise _fail("header line too long")
        if len(lines) > MAX_HEADERS:
            raise _fail("too many headers")
    headers: list[tuple[str, str]] = []
    for line in lines:
        if _CTL_RE.search(line):
            raise _fail("control character in a header")
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise _fail(f"bad header line: {line[:80]!r}")
        key = name.lower()
        headers.append((_COMPACT.get(key, key), value.strip(" \t")))
    return start, headers


def _one(headers: list[tuple[str, str]], name: str) -> str:
    values = [v for n, v in headers if n == name]
    if not values:
        raise _fail(f"missing {name} header")
    if len(values) > 1:
        raise _fail(f"more than one {name} header")
    return values[0]


def _optional_one(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [v for n, v in headers if n == name]
    if len(values) > 1:
        raise _fail(f"more than one {name} header")
    return values[0] if values else None


class _Fields(NamedTuple):
    headers: tuple[tuple[str, str], ...]
    body: bytes
    vias: tuple[Via, ...]
    from_: NameAddr
    to: NameAddr
    call_id: str
    cseq: int
    cseq_method: str
    content_type: str | None


def _common(headers: list[tuple[str, str]], body: bytes, strict_length: bool) -> _Fields:
    vias: list[Via] = []
    for n, v in headers:
        if n == "via":
            for part in v.split(","):
                vias.append(_parse_via(part))
                if len(vias) > 16:
                    raise _fail("too many Via values")
    if not vias:
        raise _fail("missing Via header")
    call_id = _one(headers, "call-id")
    if not _CALL_ID_RE.fullmatch(call_id):
        raise _fail(f"bad Call-ID: {call_id[:80]!r}")
    cseq_m = _CSEQ_RE.fullmatch(_one(headers, "cseq"))
    if cseq_m is None or int(cseq_m.group(1)) >= 2**31:
        raise _fail("bad CSeq")
    if strict_length:
        length_text = _one(headers, "content-length")
        if not _LENGTH_RE.fullmatch(length_text):
            raise _fail(f"bad Content-Length: {length_text[:20]!r}")
        if int(length_text) != len(body):
            raise _fail(f"Content-Length {int(length_text)} but the body has {len(body)} bytes")
    content_type = _optional_one(headers, "content-type")
    if content_type is not None and not _MEDIA_TYPE_RE.fullmatch(content_type):
        raise _fail(f"bad Content-Type: {content_type[:80]!r}")
    return _Fields(
        headers=tuple(headers),
        body=body,
        vias=tuple(vias),
        from_=_parse_name_addr(_one(headers, "from"), "From"),
        to=_parse_name_addr(_one(headers, "to"), "To"),
        call_id=call_id,
        cseq=int(cseq_m.group(1)),
        cseq_method=cseq_m.group(2),
        content_type=content_type,
    )


def parse_message(data: bytes, *, strict_length: bool = True) -> DmqRequest | DmqResponse:
    """Parse one datagram; raise :class:`DmqProtocolError` for anything malformed.

    ``strict_length=False`` skips the ``Content-Length`` checks (the body is the rest of the
    datagram); the core uses it only to address a ``400`` reply to a request it rejects.
    """
    if strict_length and type(data) is bytes and len(data) <= MAX_DATAGRAM:
        try:
            msg = _parse_fast(data)
        except Exception:  # anything odd: the general path decides, with its own error
            msg = None
        if msg is not None:
            return msg
    try:
        return _parse(data, strict_length)
    except DmqProtocolError:
        raise
    except Exception as exc:  # belt and braces: the contract is "only DmqProtocolError"
        raise _fail(f"unparsable message ({type(exc).__name__})") from exc


def _parse(data: bytes, strict_length: bool) -> DmqRequest | DmqResponse:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail("a datagram must be bytes")
    data = bytes(data)
    if len(data) > MAX_DATAGRAM:
        raise _fail(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    if not data.startswith((b"SIP/2.0 ", b"KDMQ ")) and not re.match(rb"[A-Za-z]{1,32} ", data):
        raise _fail("not a SIP message")
    head, body = _split_head(data)
    start, headers = _header_lines(head)
    if start.startswith("SIP/2.0 "):
        m = _STATUS_RE.fullmatch(start)
        if m is None:
            raise _fail(f"bad status line: {start[:80]!r}")
        fields = _common(headers, body, strict_length)
        return DmqResponse(*fields, code=int(m.group(1)), reason=m.group(2))
    m = _REQUEST_RE.fullmatch(start)
    if m is None:
        raise _fail(f"not a SIP request line: {start[:80]!r}")
    common = _common(headers, body, strict_length)
    method = m.group(1)
    if common.cseq_method != method:
        raise _fail("CSeq method differs from the request method")
    mf_text = _optional_one(headers, "max-forwards")
    max_forwards: int | None = None
    if mf_text is not None:
        if not _MAX_FORWARDS_RE.fullmatch(mf_text) or int(mf_text) > 255:
            raise _fail(f"bad Max-Forwards: {mf_text[:20]!r}")
        max_forwards = int(mf_text)
    return DmqRequest(*common, method=method, uri=parse_uri(m.group(2)), max_forwards=max_forwards)


_NAMES: dict[str, str] = {}
"""Header names as written on the wire -> lower-case full names (a bus sees few)."""


def _header_name(name: str) -> str:
    key = name.lower()
    key = _COMPACT.get(key, key)
    if len(_NAMES) < 256:
        _NAMES[name] = key
    return key


def _parse_fast(data: bytes) -> DmqRequest | DmqResponse | None:
    """The common case in few C-level passes, or None: the general path then decides.

    Taken only when the header section is at most :data:`MAX_HEADER_LINE` characters (so no
    line is too long), has at most :data:`MAX_HEADERS` lines, none folded, none repeated
    (one ``Via`` header, possibly with several values). Every line is checked by one regex
    (:data:`_FAST_LINE_RE`: the same name, separator, control-character and blank rules as
    :func:`_header_lines`) and the fields by the same parsers as :func:`_common`, so it
    accepts exactly what the general path accepts and gives the same message; any doubt or
    error returns None or raises, and :func:`_parse` then runs the general path for the
    verdict (``tests/dmq/test_dmq_codec_fast.py`` compares both on fuzzed input).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEADER_LINE:
        return None
    text = data[:end].decode("utf-8")  # UnicodeDecodeError: general path
    nl = text.find("\r\n")
    if nl < 0:
        return None
    found = _FAST_LINE_RE.findall(text, nl)
    if len(found) != text.count("\r\n", nl) or len(found) > MAX_HEADERS:
        return None
    names = _NAMES
    headers = [(names.get(n) or _header_name(n), v) for n, v in found]
    h = dict(headers)
    if len(h) != len(headers):
        return None  # a repeated header: the general path counts them
    body = data[end + 4 :]
    vias = tuple([_parse_via(part) for part in h["via"].split(",")])
    if len(vias) > 16:
        return None
    call_id = h["call-id"]
    if not _CALL_ID_RE.fullmatch(call_id):
        return None
    cseq_m = _CSEQ_RE.fullmatch(h["cseq"])
    length = h["content-length"]
    if cseq_m is None or not _LENGTH_RE.fullmatch(length) or int(length) != len(body):
        return None
    cseq = int(cseq_m.group(1))
    if cseq >= 2**31:
        return None
    content_type = h.get("content-type")
    if content_type is not None and not _MEDIA_TYPE_RE.fullmatch(content_type):
        return None
    from_ = _parse_name_addr(h["from"], "From")
    to = _parse_name_addr(h["to"], "To")
    start = text[:nl]
    cseq_method = cseq_m.group(2)
    if start.startswith("SIP/2.0 "):
        m = _STATUS_RE.fullmatch(start)
        if m is None:
            return None
        return DmqResponse(
            tuple(headers),
            body,
            vias,
            from_,
            to,
            call_id,
            cseq,
            cseq_method,
            content_type,
            int(m.group(1)),
            m.group(2),
        )
    m = _REQUEST_RE.fullmatch(start)
    # the method as _parse's first check wants it: 1 to 32 ASCII letters
    if m is None or m.group(1) != cseq_method or len(cseq_method) > 32:
        return None
    if not (cseq_method.isascii() and cseq_method.isalpha()):
        return None
    mf_text = h.get("max-forwards")
    max_forwards: int | None = None
    if mf_text is not None:
        if not _MAX_FORWARDS_RE.fullmatch(mf_text) or int(mf_text) > 255:
            return None
        max_forwards = int(mf_text)
    return DmqRequest(
        tuple(headers),
        body,
        vias,
        from_,
        to,
        call_id,
        cseq,
        cseq_method,
        content_type,
        cseq_method,
        parse_uri(m.group(2)),
        max_forwards,
    )


# --------------------------------------------------------------------------- building


def new_branch() -> str:
    """A fresh RFC 3261 branch (``z9hG4bK`` + 16 hex digits)."""
    return BRANCH_COOKIE + secrets.token_hex(8)


def new_ids(host: str) -> tuple[str, str, str]:
    """A fresh branch, From tag and Call-ID (as :func:`new_branch`, :func:`new_tag` and
    :func:`new_call_id`) from one draw of the system's random source."""
    hex_ = secrets.token_hex(22)
    return BRANCH_COOKIE + hex_[:16], hex_[16:28], f"{hex_[28:]}@{host}"


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(8)}@{host}"


def _check_token(value: str, what: str, pattern: re.Pattern[str] = _TOKEN_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(f"bad {what}: {str(value)[:80]!r}")
    return value


_TEMPLATES: dict[tuple[object, ...], tuple[str, str, str]] = {}
"""Constant parts of the requests a bus sends, per (channel, target, local, …)."""


def _request_template(
    *,
    channel: str,
    target: SipUri,
    local: SipUri,
    content_type: str | None,
    max_forwards: int,
    user_agent: str | None,
    rport: bool,
) -> tuple[str, str, str]:
    """Validate the per-destination arguments of :func:`build_request` and format its lines
    up to the branch, between branch and tag, and after Content-Length."""
    _check_token(channel, "channel", _USER_RE)
    if content_type is not None:
        _check_token(content_type, "Content-Type", _MEDIA_TYPE_RE)
    if not isinstance(max_forwards, int) or not 0 <= max_forwards <= 255:
        raise _fail("bad Max-Forwards")
    transport = target.transport
    r_params: Params = (("transport", transport),) if transport and transport != "udp" else ()
    ruri = SipUri(host=target.host, port=target.port, user=channel, params=r_params)
    from_uri = SipUri(host=local.host, port=local.port, user=channel)
    via = Via(transport="UDP", host=local.host, port=local.port_number)
    before_branch = f"KDMQ {ruri} {SIP_VERSION}\r\nVia: {via};branch="
    before_tag = (";rport" if rport else "") + f"\r\nTo: <{ruri}>\r\nFrom: <{from_uri}>;tag="
    tail = ""
    if user_agent:
        tail += f"User-Agent: {_check_token(user_agent, 'User-Agent', _REASON_RE)}\r\n"
    tail += f"Max-Forwards: {max_forwards}\r\n"
    if content_type is not None:
        tail += f"Content-Type: {content_type}\r\n"
    return before_branch, before_tag, tail


def build_request(
    *,
    channel: str,
    target: SipUri,
    local: SipUri,
    body: bytes,
    content_type: str | None,
    max_forwards: int = 1,
    branch: str | None = None,
    from_tag: str | None = None,
    call_id: str | None = None,
    cseq: int = 10,
    user_agent: str | None = "pymqueue",
    rport: bool = False,
) -> bytes:
    """Build ``KDMQ sip:<channel>@<target> SIP/2.0`` sent from node ``local``.

    Header order and forms are Kamailio's (tm local UAC): Via, To, From, CSeq, Call-ID,
    Content-Length, User-Agent, Max-Forwards, Content-Type. Branch, tag and Call-ID are random
    unless given. ``rport=True`` adds ``;rport`` to the Via (Kamailio does not).

    The lines that depend only on channel, nodes and options are validated and formatted
    once per combination (a bounded cache); each call checks and fills in the rest.
    """
    if not isinstance(body, bytes):
        raise _fail("body must be bytes")
    key: tuple[object, ...] = (channel, target, local, content_type, max_forwards)
    key += (type(max_forwards), user_agent, rport)
    try:
        template = _TEMPLATES.get(key)
    except TypeError:  # unhashable argument: the checks raise
        template = None
    if template is None:
        template = _request_template(
            channel=channel,
            target=target,
            local=local,
            content_type=content_type,
            max_forwards=max_forwards,
            user_agent=user_agent,
            rport=rport,
        )
        if len(_TEMPLATES) >= 1024:
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    if not isinstance(cseq, int) or not 0 <= cseq < 2**31:
        raise _fail("bad CSeq")
    branch = _check_token(branch or new_branch(), "branch")
    from_tag = _check_token(from_tag or new_tag(), "tag")
    call_id = _check_token(call_id or new_call_id(local.host), "Call-ID", _CALL_ID_RE)
    before_branch, before_tag, tail = template
    data = (
        f"{before_branch}{branch}{before_tag}{from_tag}\r\nCSeq: {cseq} KDMQ\r\n"
        f"Call-ID: {call_id}\r\nContent-Length: {len(body)}\r\n{tail}\r\n"
    ).encode() + body
    if len(data) > MAX_DATAGRAM:
        raise _fail(f"message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def build_response(
    request: DmqRequest,
    code: int,
    reason: str,
    *,
    body: bytes = b"",
    content_type: str | None = None,
    to_tag: str | None = None,
    source: tuple[str, int] | None = None,
    server: str | None = "pymqueue",
) -> bytes:
    """Build the reply to ``request`` the way Kamailio's ``sl`` does.

    Header order: Via (all, copied), To (with a tag), From, CSeq, Call-ID, Content-Type (only
    with a body), Server, Content-Length. ``source`` is the address the request came from: if
    its top Via asked for ``rport`` we fill in ``rport=PORT;received=IP``; otherwise
    ``received=IP`` is added when the Via host differs from the source IP (RFC 3261 18.2.1).
    """
    if not isinstance(code, int) or not 100 <= code <= 699:
        raise _fail(f"bad status code {code!r}")
    _check_token(reason, "reason phrase", _REASON_RE)
    if not isinstance(body, bytes):
        raise _fail("body must be bytes")
    if body and content_type is None:
        raise _fail("a reply body needs a Content-Type")
    if content_type is not None:
        _check_token(content_type, "Content-Type", _MEDIA_TYPE_RE)
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
        elif top.host.strip("[]") != ip and _param(top.params, "received") is None:
            vias[0] = Via(top.transport, top.host, top.port, (*top.params, ("received", ip)))
    to = request.to
    to_text = str(to)
    if to.tag is None:  # the tag goes last, as a parameter added to the parsed ones
        to_text += f";tag={_check_token(to_tag or new_tag(), 'tag')}"
    # one string, no intermediate list of lines: this runs once per request received
    via_text = "".join([f"Via: {v}\r\n" for v in vias])
    extra = f"Content-Type: {content_type}\r\n" if body else ""
    if server:
        extra += f"Server: {_check_token(server, 'Server', _REASON_RE)}\r\n"
    data = (
        f"{SIP_VERSION} {code} {reason}\r\n{via_text}To: {to_text}\r\n"
        f"From: {request.from_}\r\nCSeq: {request.cseq} {request.cseq_method}\r\n"
        f"Call-ID: {request.call_id}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    if len(data) > MAX_DATAGRAM:
        raise _fail(f"message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


# --------------------------------------------------------------------------- signing


def _mac(secret: bytes, data: bytes) -> str:
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def sign(data: bytes, secret: bytes) -> bytes:
    """Return ``data`` with an ``X-Pymqueue-Signature`` header as its last header.

    The MAC covers every byte of the datagram except that header line, so the body, the
    branch and the addresses are all protected; a retransmission carries the same signature.
    """
    head, body = _split_head(data)
    signed = head + b"\r\n\r\n" + body
    line = f"\r\n{SIGNATURE_HEADER}: v1={_mac(secret, signed)}".encode("ascii")
    out = head + line + b"\r\n\r\n" + body
    if len(out) > MAX_DATAGRAM:
        raise _fail(f"signed message exceeds {MAX_DATAGRAM} bytes")
    return out


def verify(data: bytes, secret: bytes) -> bool:
    """True when ``data`` carries exactly one valid signature made with ``secret``."""
    try:
        head, body = _split_head(data)
    except DmqProtocolError:
        return False
    lines = head.split(b"\r\n")
    prefix = SIGNATURE_HEADER.lower().encode("ascii") + b":"
    hits = [i for i, line in enumerate(lines) if line.lower().startswith(prefix)]
    if len(hits) != 1 or hits[0] == 0:
        return False
    value = lines[hits[0]][len(prefix) :].strip()
    if not value.startswith(b"v1="):
        return False
    rest = b"\r\n".join(lines[: hits[0]] + lines[hits[0] + 1 :])
    expected = _mac(secret, rest + b"\r\n\r\n" + body).encode("ascii")
    return hmac.compare_digest(value[3:], expected)
