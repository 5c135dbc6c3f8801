"""Queues across hosts, sans-I/O: the JSON codec of the ``mqueue`` DMQ channel.

Nothing here touches a socket, a queue or a clock. :mod:`pymqueue.dmq.mqueue_service` binds it
to a :class:`~pymqueue.dmq.Bus` and to shared-memory queues.

Wire format (``docs/dmq.md``, "Queues across hosts"; content type ``application/json``), one
UTF-8 JSON object per KDMQ request:

* items — what a Kamailio script sends with ``dmq_send_message`` and what a pymqueue outbox
  forwards to its owner::

      {"queue": "jobs",
       "items": [{"id": "17", "key": "k", "value": "v"}, …],
       "origin": "sip:127.0.0.1:5091", "epoch": "9f3a…"}

  ``queue_b64`` replaces ``queue`` when the name is not UTF-8, ``key_b64``/``value_b64``
  replace ``key``/``value`` for bytes that are not UTF-8 (standard base64). ``id`` is an
  optional string. ``origin`` (the sending node's URI) and ``epoch`` (hex of the outbox's
  :attr:`Queue.epoch`) come together or not at all; with them, every item has a decimal
  ``id`` (the record id, 1 … 2⁶⁴-1), strictly ascending within the message. Unknown members
  are ignored (newer senders may add some); a member given twice counts once, the last
  (as Python's ``json`` reads it: checking costs a third of the decoding time).
* carries — membership between pymqueue nodes: ``{"carries": ["jobs", …]}`` (plus
  ``carries_b64`` for names that are not UTF-8); the 200 reply carries the replier's own.
* replies to items: 200 ``{"applied": n, "duplicates": d}``; 503 ``{"applied": n}`` (the queue
  was full from item ``n`` on); 400/404/500 with a reason.

Decoding (:func:`decode`) is strict and raises nothing but
:class:`~pymqueue.errors.MqueueDecodeError` (code 400) whatever the body. Encoding
(:class:`BatchBuilder`) packs as many items as fit in :data:`MAX_BODY` bytes.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import itertools
import json
import operator
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from pymqueue.dmq.nodes import NodeId
from pymqueue.errors import MqueueDecodeError

__all__ = [
    "CHANNEL",
    "CONTENT_TYPE",
    "MAX_BODY",
    "MAX_ID",
    "BatchBuilder",
    "Carries",
    "Dedup",
    "ItemsMessage",
    "ItemsReply",
    "WireItem",
    "decode",
    "decode_reply",
    "encode_carries",
    "encode_items",
    "encode_reply",
    "rendezvous_owner",
]

CHANNEL: Final = "mqueue"
CONTENT_TYPE: Final = "application/json"
MAX_BODY: Final = 60_000
"""Largest body we send (as the htable sync messages: one UDP datagram with its headers)."""
MAX_DECODE: Final = 1 << 20
"""Largest body we try to decode (anything larger is refused with a 400 unread)."""
MAX_ID: Final = 2**64 - 1
MAX_ORIGIN: Final = 256
MAX_ITEMS: Final = 65_536
MAX_CARRIES: Final = 4096


class WireItem(NamedTuple):
    """One item of an items message. ``id``: the ``id`` member as sent (None: absent);
    ``seq``: its value as a record id when the message has an origin (else 0)."""

    key: bytes
    value: bytes
    id: str | None = None
    seq: int = 0


_new_item = functools.partial(tuple.__new__, WireItem)
"""``WireItem`` from a 4-tuple without a Python-level call (map over many)."""


@dataclass(frozen=True, slots=True)
class ItemsMessage:
    """Items for ``queue`` (exact bytes). ``origin``/``epoch`` None: not from a pymqueue
    outbox (a Kamailio script)."""

    queue: bytes
    items: tuple[WireItem, ...]
    origin: str | None = None
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class Carries:
    """The queues a pymqueue node carries (exact names)."""

    queues: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class ItemsReply:
    """The body of a 200/503 reply to items (members absent: 0)."""

    applied: int = 0
    duplicates: int = 0


Message = ItemsMessage | Carries


def _bad(detail: str) -> MqueueDecodeError:
    return MqueueDecodeError(detail)


def _loads(body: bytes) -> Any:
    if len(body) > MAX_DECODE:
        raise _bad(f"body of {len(body)} bytes, more than {MAX_DECODE}")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise _bad("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() digit limits
        raise _bad(f"not JSON: {exc}") from None


def _b64(what: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise _bad(f"{what} must be a string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _bad(f"{what} is not standard base64") from None


def _utf8(what: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise _bad(f"{what} must be a string")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\udXXX escape
        raise _bad(f"{what} is not valid Unicode text (lone surrogate)") from None


def _bytes_member(obj: dict[str, Any], name: str, where: str) -> bytes:
    text, b64 = obj.get(name), obj.get(name + "_b64")
    if text is not None and b64 is not None:
        raise _bad(f"{where}: give {name} or {name}_b64, not both")
    if b64 is not None:
        return _b64(f"{where}.{name}_b64", b64)
    if text is None:
        raise _bad(f"{where}: {name} (or {name}_b64) is required")
    return _utf8(f"{where}.{name}", text)


def _parse_seq(text: object, where: str) -> int:
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 20:
        raise _bad(f"{where}.id must be a decimal record id when origin is given")
    value = int(text)
    if not 0 < value <= MAX_ID:
        raise _bad(f"{where}.id {text} is outside 1..2^64-1")
    return value


def _parse_epoch(text: object) -> int:
    if not isinstance(text, str) or not 0 < len(text) <= 16:
        raise _bad("epoch must be a string of 1 to 16 hex digits")
    try:
        value = int(text, 16)
    except ValueError:
        raise _bad("epoch must be a string of 1 to 16 hex digits") from None
    if value == 0 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise _bad("epoch must be a non-zero hex number")
    return value


def _decode_items(doc: dict[str, Any]) -> ItemsMessage:
    if "queue" in doc and "queue_b64" in doc:
        raise _bad("give queue or queue_b64, not both")
    queue = _bytes_member(doc, "queue", "message")
    if not queue:
        raise _bad("queue name is empty")
    origin = doc.get("origin")
    epoch_text = doc.get("epoch")
    if (origin is None) != (epoch_text is None):
        raise _bad("origin and epoch come together")
    epoch: int | None = None
    if origin is not None:
        if not isinstance(origin, str) or not 0 < len(origin) <= MAX_ORIGIN:
            raise _bad(f"origin must be a node URI of 1 to {MAX_ORIGIN} characters")
        epoch = _parse_epoch(epoch_text)
    raw = doc.get("items")
    if not isinstance(raw, list):
        raise _bad("items must be an array")
    if len(raw) > MAX_ITEMS:
        raise _bad(f"{len(raw)} items, more than {MAX_ITEMS}")
    if origin is not None:
        bulk = _bulk_items(raw)
        if bulk is not None:
            return ItemsMessage(queue, bulk, origin, epoch)
    items: list[WireItem] = []
    last = 0
    append = items.append
    for i, obj in enumerate(raw):
        # the common case first (text members, a well-formed id), without building messages
        if type(obj) is dict and "key_b64" not in obj and "value_b64" not in obj:
            k, v, ident = obj.get("key"), obj.get("value"), obj.get("id")
            if type(k) is str and type(v) is str:
                try:
                    kb, vb = k.encode(), v.encode()
                except UnicodeEncodeError:
                    pass  # the slow path says why
                else:
                    if origin is None:
                        if ident is None or (type(ident) is str and len(ident) <= 256):
                            append(WireItem(kb, vb, ident, 0))
                            continue
                    elif (
                        type(ident) is str
                        and len(ident) <= 20
                        and ident.isdigit()
                        and ident.isascii()
                    ):
                        seq = int(ident)
                        if last < seq <= MAX_ID:
                            last = seq
                            append(WireItem(kb, vb, ident, seq))
                            continue
        where = f"items[{i}]"
        if not isinstance(obj, dict):
            raise _bad(f"{where} must be an object")
        key = _bytes_member(obj, "key", where)
        value = _bytes_member(obj, "value", where)
        ident = obj.get("id")
        seq = 0
        if origin is not None:
            seq = _parse_seq(ident, where)
            if seq <= last:
                raise _bad(f"{where}.id {seq} is not above the previous one ({last})")
            last = seq
        elif ident is not None and (not isinstance(ident, str) or len(ident) > 256):
            raise _bad(f"{where}.id must be a string of at most 256 characters")
        items.append(WireItem(key, value, ident, seq))
    return ItemsMessage(queue, tuple(items), origin, epoch)


_THREE = frozenset({3})
_ID_KEY_VALUE = operator.itemgetter("id", "key", "value")
_DICT = frozenset({dict})
_STR = frozenset({str})


def _bulk_items(raw: list[Any]) -> tuple[WireItem, ...] | None:
    """A forwarder's items (each exactly ``id``, ``key``, ``value``, text, ids ascending)
    checked and converted column by column at C speed; None: not that shape, or not valid
    (the item-by-item path then says why)."""
    if not raw:
        return ()
    try:
        if set(map(type, raw)) != _DICT or set(map(len, raw)) != _THREE:
            return None
        ids, keys, values = zip(*map(_ID_KEY_VALUE, raw), strict=True)
    except KeyError:
        return None
    if set(map(type, ids)) != _STR or set(map(type, keys)) != _STR:
        return None
    if set(map(type, values)) != _STR:
        return None
    if min(map(len, ids)) < 1 or max(map(len, ids)) > 20:
        return None
    joined = "".join(ids)
    if not (joined.isascii() and joined.isdigit()):
        return None
    seqs = list(map(int, ids))
    if seqs[0] < 1 or seqs[-1] > MAX_ID or not all(map(operator.lt, seqs, seqs[1:])):
        return None
    try:
        kbs = map(str.encode, keys)
        vbs = map(str.encode, values)
        return tuple(map(_new_item, zip(kbs, vbs, ids, seqs, strict=True)))
    except UnicodeEncodeError:
        return None


def _decode_carries(doc: dict[str, Any]) -> Carries:
    names: set[bytes] = set()
    for member, conv in (("carries", _utf8), ("carries_b64", _b64)):
        raw = doc.get(member, [])
        if not isinstance(raw, list):
            raise _bad(f"{member} must be an array")
        if len(raw) > MAX_CARRIES:
            raise _bad(f"{member}: more than {MAX_CARRIES} names")
        for i, text in enumerate(raw):
            name = conv(f"{member}[{i}]", text)
            if not name:
                raise _bad(f"{member}[{i}] is empty")
            names.add(name)
    return Carries(frozenset(names))


def decode(body: bytes) -> Message:
    """The message ``body`` holds; :class:`MqueueDecodeError` (400) for anything else."""
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise _bad("body must be a JSON object")
    is_items = "items" in doc or "queue" in doc or "queue_b64" in doc
    is_carries = "carries" in doc or "carries_b64" in doc
    if is_items and is_carries:
        raise _bad("a message is either items or carries, not both")
    if is_carries:
        return _decode_carries(doc)
    if not is_items:
        raise _bad("neither items (queue, items) nor carries")
    return _decode_items(doc)


def decode_reply(body: bytes) -> ItemsReply | Carries | None:
    """The body of a reply to what we sent (None when empty or not understood: a reply is
    information, never a reason to fail)."""
    if not body:
        return None
    try:
        doc = _loads(body)
        if not isinstance(doc, dict):
            return None
        if "carries" in doc or "carries_b64" in doc:
            return _decode_carries(doc)
    except MqueueDecodeError:
        return None
    applied, dups = doc.get("applied", 0), doc.get("duplicates", 0)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (applied, dups)):
        return None
    return ItemsReply(applied, dups)


# ------------------------------------------------------------------------------- encoding


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _field(member: str, data: bytes) -> str:
    """``"member":"text"`` for UTF-8 without NUL, else ``"member_b64":"…"``: a NUL escaped
    in a JSON string makes the whole body unreadable to Kamailio 5.6.3's jansson."""
    if b"\x00" not in data:
        try:
            return f'"{member}":{json.dumps(data.decode("utf-8"))}'
        except UnicodeDecodeError:
            pass
    return f'"{member}_b64":"{base64.b64encode(data).decode("ascii")}"'


def _name_member(name: bytes, member: str = "queue") -> str:
    return _field(member, name)


_SAFE = re.compile(rb"[ !#-\[\]-~]*")
"""Bytes that go into a JSON string as they are (printable ASCII but quote and backslash)."""


def item_fragment(key: bytes, value: bytes, ident: str | int | None = None) -> bytes:
    """One item as JSON (ASCII: its length is its size in bytes)."""
    if type(ident) is int and _SAFE.fullmatch(key) and _SAFE.fullmatch(value):
        return b'{"id":"%d","key":"%b","value":"%b"}' % (ident, key, value)
    head = "{" if ident is None else f'{{"id":{json.dumps(str(ident))},'
    return f"{head}{_field('key', key)},{_field('value', value)}}}".encode("ascii")


class BatchBuilder:
    """Items messages of at most ``max_body`` bytes for one queue (and origin/epoch).

    :meth:`build` packs as many of the given records as fit, in order, and says how many it
    took; a first record that cannot fit alone is reported with 0 (the caller decides)."""

    def __init__(
        self,
        queue: bytes,
        origin: str | None = None,
        epoch: int | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        if (origin is None) != (epoch is None):
            raise ValueError("origin and epoch come together")
        if epoch is not None and not 0 < epoch <= MAX_ID:
            raise ValueError("epoch must be in 1..2^64-1")
        tail = ""
        if origin is not None:
            tail = f',"origin":{json.dumps(origin)},"epoch":"{epoch:x}"'
        self._head = f'{{{_name_member(queue)},"items":['.encode("ascii")
        self._tail = f"]{tail}}}".encode("ascii")
        self.max_body = max_body
        self.overhead = len(self._head) + len(self._tail)

    def build(self, records: Sequence[tuple[int | str | None, bytes, bytes]]) -> tuple[bytes, int]:
        """``(body, n)``: the message holding ``records[:n]`` (``(id, key, value)`` each)."""
        frags = _fast_fragments(records)
        if frags is None:
            frags = [item_fragment(k, v, i) for i, k, v in records]
        room = self.max_body - self.overhead + 1  # the first item has no comma before it
        # each fragment costs its length and a comma: the running totals, at C speed
        totals = list(itertools.accumulate(map((1).__add__, map(len, frags))))
        n = bisect.bisect_right(totals, room)
        if not n:
            return b"", 0
        return b"".join((self._head, b",".join(frags[:n]), self._tail)), n


_FAST = b'{"id":"%d","key":"%b","value":"%b"}'


def _fast_fragments(records: Sequence[tuple[int | str | None, bytes, bytes]]) -> list[bytes] | None:
    """Every record formatted at C speed when every id is an int and every key and value is
    printable ASCII without quote or backslash (checked on all of them at once); else None."""
    if not records:
        return []
    blob = b"".join([k + v for _, k, v in records])
    if not _SAFE.fullmatch(blob):
        return None
    try:
        return [_FAST % r for r in records]
    except TypeError:  # an id that is not an int
        return None


def encode_items(
    queue: bytes,
    items: Iterable[tuple[int | str | None, bytes, bytes]],
    origin: str | None = None,
    epoch: int | None = None,
) -> bytes:
    """One items message with every item (no size limit: for tests and small scripts)."""
    builder = BatchBuilder(queue, origin, epoch)
    parts = b",".join(item_fragment(k, v, i) for i, k, v in items)
    return b"".join((builder._head, parts, builder._tail))


def encode_carries(queues: Iterable[bytes]) -> bytes:
    """``{"carries": [...]}`` (names that are not UTF-8 in ``carries_b64``)."""
    text: list[str] = []
    b64: list[str] = []
    for name in sorted(set(queues)):
        try:
            text.append(name.decode("utf-8"))
        except UnicodeDecodeError:
            b64.append(base64.b64encode(name).decode("ascii"))
    doc: dict[str, Any] = {"carries": text}
    if b64:
        doc["carries_b64"] = b64
    return _dumps(doc)


def encode_reply(applied: int, duplicates: int | None = None) -> bytes:
    """The body of a 200 (with ``duplicates``) or 503 (without) reply to items."""
    doc: dict[str, Any] = {"applied": applied}
    if duplicates is not None:
        doc["duplicates"] = duplicates
    return _dumps(doc)


# ------------------------------------------------------------------------------- ownership


def rendezvous_score(queue: bytes, node: NodeId) -> int:
    """The weight of ``node`` for ``queue`` (64 bits of BLAKE2b of name, NUL, node URI)."""
    digest = hashlib.blake2b(queue + b"\x00" + str(node).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_owner(
    queue: bytes,
    local: NodeId,
    active: Iterable[NodeId],
    carriers: Mapping[NodeId, Iterable[bytes]],
    configured: NodeId | None = None,
) -> NodeId:
    """The owner of ``queue`` as ``local`` sees it: ``configured`` while it is ``local`` or
    active; otherwise the node of highest :func:`rendezvous_score` among ``local`` and the
    active nodes whose announced ``carries`` name the queue."""
    live = set(active)
    if configured is not None and (configured == local or configured in live):
        return configured
    candidates = [local] + [n for n in live if queue in carriers.get(n, ())]
    return max(candidates, key=lambda n: (rendezvous_score(queue, n), str(n)))


# ------------------------------------------------------------------------------- dedup


class _Window:
    """The most recent ``size`` ids seen (a set with a FIFO of insertion order)."""

    __slots__ = ("ids", "order")

    def __init__(self, size: int) -> None:
        self.ids: set[str] = set()
        self.order: deque[str] = deque(maxlen=size)

    def add(self, ident: str) -> None:
        if ident in self.ids:
            return
        if len(self.order) == self.order.maxlen:
            self.ids.discard(self.order[0])
        self.order.append(ident)
        self.ids.add(ident)


class Dedup:
    """Which items of a message were already applied.

    * With ``origin``/``epoch`` (a pymqueue outbox): per (origin, queue, epoch) the highest
      id applied; items at or below it are duplicates. At most ``max_origins`` such keys are
      kept (least recently used forgotten first).
    * Without (a Kamailio script): items with an ``id`` are duplicates when the same id came
      from the same sending node for the same queue among its last ``window`` ids; at most
      ``max_senders`` (node, queue) windows are kept. Items without ``id`` are never
      duplicates.

    :meth:`fresh` says which items to apply; :meth:`applied` records what was applied."""

    def __init__(self, max_origins: int = 4096, window: int = 4096, max_senders: int = 256) -> None:
        self.max_origins = max_origins
        self.window = window
        self.max_senders = max_senders
        self._high: OrderedDict[tuple[str, bytes, int], int] = OrderedDict()
        self._windows: OrderedDict[tuple[str, bytes], _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._high) + len(self._windows)

    def high(self, origin: str, queue: bytes, epoch: int) -> int:
        """The highest id applied from ``origin``'s ``queue`` of ``epoch`` (0: none)."""
        return self._high.get((origin, queue, epoch), 0)

    def fresh(self, msg: ItemsMessage, sender: str) -> list[WireItem]:
        if msg.origin is not None:
            assert msg.epoch is not None
            key = (msg.origin, msg.queue, msg.epoch)
            high = self._high.get(key, 0)
            if key in self._high:
                self._high.move_to_end(key)
            if not high:
                return list(msg.items)
            return [it for it in msg.items if it.seq > high]
        window = self._windows.get((sender, msg.queue))
        seen = window.ids if window is not None else set()
        now: set[str] = set()
        out: list[WireItem] = []
        for it in msg.items:
            if it.id is not None:
                if it.id in seen or it.id in now:
                    continue
                now.add(it.id)
            out.append(it)
        return out

    def applied(self, msg: ItemsMessage, sender: str, items: Sequence[WireItem]) -> None:
        if not items:
            return
        if msg.origin is not None:
            assert msg.epoch is not None
            key = (msg.origin, msg.queue, msg.epoch)
            self._high[key] = max(self._high.get(key, 0), items[-1].seq)
            self._high.move_to_end(key)
            while len(self._high) > self.max_origins:
                self._high.popitem(last=False)
            return
        wkey = (sender, msg.queue)
        window = self._windows.get(wkey)
        if window is None:
            window = self._windows[wkey] = _Window(self.window)
        self._windows.move_to_end(wkey)
        for it in items:
            if it.id is not None:
                window.add(it.id)
        while len(self._windows) > self.max_senders:
            self._windows.popitem(last=False)
