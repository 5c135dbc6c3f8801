"""Kamailio's replicated htables, sans-I/O: the JSON codec of the ``htable`` DMQ channel and
the table model (cells, expiry, ``autoexpire``), as Kamailio 5.6.3's ``htable`` module has them.

Nothing here touches a socket or reads a clock: times are Unix seconds passed in (``now``).
:mod:`pymqueue.dmq.htable_replica` binds a model to a :class:`~pymqueue.dmq.Bus`.

Wire format (spec §5.2-5.4, ``ht_dmq.c`` of 5.6.3), one JSON object per KDMQ message:

* actions, members in Kamailio's order: ``{"action":2,"htname":"t","cname":"k","type":2,
  "strval":"v","mode":1}`` — 1 sync request, 2 set (``type`` 0 → ``intval``, 2 → ``strval``),
  3 set expire (``intval`` = seconds from now), 4 delete, 5 remove by regex, 6 remove by prefix
  (pattern in ``strval``; ``mode`` 0 = match names, 1 = match string values);
* sync data: ``{"cells":[{"htname","cname","type","strval"|"intval","expire"}, …]}``, ``expire``
  an absolute Unix time (0 = the table's default), at most :data:`MAX_SYNC_BODY` bytes a message.

Encoding never produces what harms a 5.6.3 node (spec §7): no empty object, no unknown member
(5.6.3 answers 400 and, for ``last_modified``, newer releases' LWW would be lost anyway), no
action 7/8, every action carries ``htname`` and ``cname`` (``""`` for 5 and 6) and every sync
cell every member. What Kamailio cannot carry is refused with :class:`HtableValueError`:
text that is not valid UTF-8 (lone surrogates), a NUL character (5.6.3 cuts strings at NUL),
integers outside 32 bits, an empty key, a cell too large for one sync message.

Decoding (:func:`decode`) is strict and never raises anything but :class:`HtableDecodeError`,
whose ``code`` is the reply 5.6.3 gives (400 bad JSON or unknown member, 500 unknown action)
or, where 5.6.3 crashes or reads uninitialised memory, 400.
"""

from __future__ import annotations

import enum
import heapq
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from pymqueue.errors import HtableValueError

__all__ = [
    "CHANNEL",
    "CONTENT_TYPE",
    "INT_MAX",
    "INT_MIN",
    "MAX_SYNC_BODY",
    "Action",
    "ActionMessage",
    "HtableDecodeError",
    "HtableDef",
    "HtableModel",
    "Match",
    "SyncCell",
    "SyncCells",
    "SyncRequest",
    "Value",
    "build_sync_bodies",
    "check_key",
    "check_value",
    "decode",
    "encode_action",
    "encode_sync_request",
]

CHANNEL: Final = "htable"
"""Kamailio's channel name for htable replication."""
CONTENT_TYPE: Final = "application/json"
MAX_SYNC_BODY: Final = 60_000
"""Largest sync message body we send (Kamailio flushes at about this size)."""
INT_MIN: Final = -(2**31)
INT_MAX: Final = 2**31 - 1
TYPE_INT: Final = 0
TYPE_STR: Final = 2  # AVP_VAL_STR

Value = str | int


class Action(enum.IntEnum):
    """The ``action`` member (``ht_dmq_action_t``)."""

    SYNC = 1
    SET = 2
    SET_EXPIRE = 3
    DELETE = 4
    RM_REGEX = 5
    RM_PREFIX = 6


class Match(enum.IntEnum):
    """``mode`` of a removal: match key names (0) or string values (1)."""

    NAME = 0
    VALUE = 1

    @classmethod
    def of(cls, on: Match | int | str) -> Match:
        if isinstance(on, str):
            try:
                return cls[on.upper()]
            except KeyError:
                raise ValueError(f"on must be 'name' or 'value', not {on!r}") from None
        return cls(int(on))


class HtableDecodeError(Exception):
    """A body on the htable channel that is refused; ``code``/``reason`` is the SIP reply."""

    def __init__(self, code: int, reason: str, detail: str) -> None:
        super().__init__(f"{code} {reason}: {detail}")
        self.code = code
        self.reason = reason
        self.detail = detail


def _bad(detail: str) -> HtableDecodeError:
    return HtableDecodeError(400, "Bad Request", detail)


def _fail(detail: str) -> HtableDecodeError:
    return HtableDecodeError(500, "Server Internal Error", detail)


# ------------------------------------------------------------------------------- values


def check_text(what: str, text: object, *, empty: bool = False) -> str:
    """``text`` if Kamailio can carry it (a ``str``, UTF-8 encodable, no NUL)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    if not text and not empty:
        raise HtableValueError(f"{what} must not be empty")
    if "\x00" in text:
        raise HtableValueError(f"{what} {text!r} contains NUL (Kamailio cuts strings there)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HtableValueError(f"{what} {text!r} is not valid UTF-8 text") from None
    return text


def check_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not INT_MIN <= value <= INT_MAX:
        raise HtableValueError(f"{what} {value} does not fit Kamailio's 32-bit integer")
    return value


def check_key(key: object) -> str:
    """A cell name Kamailio can carry (non-empty text)."""
    return check_text("key", key)


def check_value(value: object) -> Value:
    """A cell value: ``str`` (stored as a string, type 2) or ``int`` (type 0, 32 bits)."""
    if isinstance(value, str):
        return check_text("value", value, empty=True)
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int("value", value)
    raise TypeError(f"htable values are str or int, not {type(value).__name__}")


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class ActionMessage:
    """A decoded action 2 to 6. ``value``: the value (2), seconds (3), pattern (5, 6)."""

    action: Action
    htname: str
    cname: str
    value: Value | None
    mode: int


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """``{"action":1}``; ``htname`` is None when absent (5.6.3 sends every table anyway)."""

    htname: str | None


@dataclass(frozen=True, slots=True)
class SyncCell:
    htname: str
    cname: str
    value: Value
    expire: int
    """Absolute Unix time; 0 = the table's default."""


@dataclass(frozen=True, slots=True)
class SyncCells:
    """``{"cells":[…]}``: the usable cells, and how many were skipped as malformed."""

    cells: tuple[SyncCell, ...]
    skipped: int = 0


Message = ActionMessage | SyncRequest | SyncCells


def encode_action(
    action: Action | int, htname: str, cname: str = "", value: Value | None = None, mode: int = 0
) -> bytes:
    """One action message, exactly as 5.6.3 writes it (plus ``cname`` ``""`` on 5 and 6).

    ``mode`` is forced to Kamailio's: 1 for a set, 0 for expire and delete; for 5 and 6 it is
    the :class:`Match`.
    """
    act = Action(action)
    if act is Action.SYNC:
        return encode_sync_request(htname or None)
    check_text("table name", htname)
    if act in (Action.RM_REGEX, Action.RM_PREFIX):
        if cname:
            raise ValueError("removals by regex or prefix have no cname")
        pattern = check_text("pattern", value)
        return _dumps(
            {
                "action": int(act),
                "htname": htname,
                "cname": "",
                "type": TYPE_STR,
                "strval": pattern,
                "mode": int(Match.of(mode)),
            }
        )
    check_key(cname)
    doc: dict[str, Any] = {"action": int(act), "htname": htname, "cname": cname}
    if act is Action.SET:
        val = check_value(value)
        if isinstance(val, str):
            doc |= {"type": TYPE_STR, "strval": val, "mode": 1}
        else:
            doc |= {"type": TYPE_INT, "intval": val, "mode": 1}
    elif act is Action.SET_EXPIRE:
        doc |= {"type": TYPE_INT, "intval": check_int("seconds", value), "mode": 0}
    else:
        doc["mode"] = 0
    return _dumps(doc)


def encode_sync_request(htname: str | None = None) -> bytes:
    """``{"action":1}`` (or with ``htname``: accepted by 5.6.3, which still sends all)."""
    if htname is None:
        return b'{"action":1}'
    return _dumps({"action": 1, "htname": check_text("table name", htname)})


def encode_cell(cell: SyncCell) -> bytes:
    doc: dict[str, Any] = {"htname": cell.htname, "cname": cell.cname}
    if isinstance(cell.value, str):
        doc |= {"type": TYPE_STR, "strval": cell.value}
    else:
        doc |= {"type": TYPE_INT, "intval": cell.value}
    doc["expire"] = cell.expire
    return _dumps(doc)


_EMPTY_SYNC = b'{"cells":[]}'


def build_sync_bodies(cells: Iterable[SyncCell], limit: int = MAX_SYNC_BODY) -> Iterator[bytes]:
    """``{"cells":[…]}`` bodies of at most ``limit`` bytes each (one empty body when there is
    no cell, as Kamailio sends). A cell that cannot fit alone raises :class:`HtableValueError`
    (the replica refuses such values before they exist)."""
    head, tail = b'{"cells":[', b"]}"
    room = limit - len(head) - len(tail)
    parts: list[bytes] = []
    size = 0
    sent = False
    for cell in cells:
        data = encode_cell(cell)
        if len(data) > room:
            raise HtableValueError(
                f"cell {cell.cname!r} of {cell.htname!r} needs {len(data)} bytes, "
                f"more than one sync message holds ({room})"
            )
        extra = len(data) + (1 if parts else 0)
        if size + extra > room:
            yield head + b",".join(parts) + tail
            sent = True
            parts, size, extra = [], 0, len(data)
        parts.append(data)
        size += extra
    if parts or not sent:
        yield head + b",".join(parts) + tail


def cell_size(htname: str, cname: str, value: Value) -> int:
    """Bytes of one cell in a sync message (with the largest ``expire``)."""
    return len(encode_cell(SyncCell(htname, cname, value, 2**31)))


# ------------------------------------------------------------------------------- decoding

_ACTION_MEMBERS: Final = {
    "action": int,
    "htname": str,
    "cname": str,
    "type": int,
    "strval": str,
    "intval": int,
    "mode": int,
}
_CELL_MEMBERS: Final = {
    "htname": str,
    "cname": str,
    "type": int,
    "strval": str,
    "intval": int,
    "expire": int,
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nul_cut(text: str) -> str:
    """5.6.3 reads strings with ``strlen``: everything from a NUL on is lost."""
    cut = text.find("\x00")
    return text if cut < 0 else text[:cut]


def _typed(name: str, raw: object, want: type) -> Value | None:
    """``raw`` as ``want`` (None if it is not); ints must fit 32 bits."""
    if want is int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not INT_MIN <= raw <= INT_MAX:
            return None
        return raw
    if not isinstance(raw, str):
        return None
    return _nul_cut(raw)


def decode(body: bytes) -> Message:
    """Decode one htable body; :class:`HtableDecodeError` (400/500) when refused."""
    if not body:
        raise _bad("empty body")
    try:
        text = body.decode("utf-8")
        root = json.loads(text, object_pairs_hook=list, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"not JSON: {exc}") from None
    if not isinstance(root, list) or (root and not isinstance(root[0], tuple)):
        # a JSON array parses to a list too; pairs are tuples
        raise _bad("not a JSON object (crashes 5.6.3)")
    if not root:
        raise _bad("empty JSON object (crashes 5.6.3)")
    if root[0][0] == "cells":
        return _decode_cells(root[0][1])
    fields: dict[str, Value] = {}
    for name, raw in root:
        want = _ACTION_MEMBERS.get(name)
        if want is None:
            raise _bad(f"unknown member {name!r}")
        val = _typed(name, raw, want)
        if val is None:
            raise _bad(f"member {name!r} has the wrong type")
        fields[name] = val
    action = fields.get("action")
    htname = fields.get("htname")
    if action == Action.SYNC:
        return SyncRequest(str(htname) if htname else None)
    if action not in (2, 3, 4, 5, 6):
        raise _fail(f"unknown action {action!r}")
    if not htname:
        raise _fail("no table name")
    assert isinstance(action, int)
    assert isinstance(htname, str)
    act = Action(action)
    mode = int(fields.get("mode", 0))
    if act in (Action.RM_REGEX, Action.RM_PREFIX):
        pattern = fields.get("strval")
        if pattern is None:
            raise _bad("no strval (5.6.3 reads uninitialised memory)")
        if not pattern:
            raise _fail("empty pattern")
        return ActionMessage(act, htname, "", pattern, Match.NAME if mode == 0 else Match.VALUE)
    cname = fields.get("cname")
    if not isinstance(cname, str):
        raise _bad("no cname (5.6.3 reads uninitialised memory)")
    value: Value | None = None
    if act is Action.SET:
        is_str = int(fields.get("type", 0)) & TYPE_STR
        value = fields.get("strval" if is_str else "intval")
        if value is None:
            raise _bad("no value for the type (5.6.3 reads uninitialised memory)")
    elif act is Action.SET_EXPIRE:
        value = fields.get("intval")
        if value is None:
            raise _bad("no intval (5.6.3 reads uninitialised memory)")
    return ActionMessage(act, htname, cname, value, mode)


def _decode_cells(raw: object) -> SyncCells:
    if not isinstance(raw, list):
        return SyncCells(())  # {"cells":{}} and {"cells":1}: 200, nothing applied
    cells: list[SyncCell] = []
    skipped = 0
    for item in raw:
        if not isinstance(item, list) or (item and not isinstance(item[0], tuple)):
            skipped += 1
            continue
        fields: dict[str, Value] = {}
        ok = True
        for name, val in item:
            want = _CELL_MEMBERS.get(name)
            if want is None:
                continue  # 5.6.3 logs unknown members in cells (e.g. last_modified)
            typed = _typed(name, val, want)
            if typed is None:
                ok = False
                break
            fields[name] = typed
        htname, cname = fields.get("htname"), fields.get("cname")
        if not ok or not htname or not cname:
            skipped += 1
            continue
        is_str = int(fields.get("type", 0)) & TYPE_STR
        value = fields.get("strval" if is_str else "intval")
        if value is None:
            skipped += 1  # 5.6.3 would reuse the previous cell's value
            continue
        cells.append(SyncCell(str(htname), str(cname), value, int(fields.get("expire", 0))))
    return SyncCells(tuple(cells), skipped)


# ------------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class HtableDef:
    """A replicated table (Kamailio's ``modparam("htable", "htable", "name=>…")``)."""

    name: str
    autoexpire: int = 0
    """Default lifetime of a cell in seconds (0: cells never expire)."""
    updateexpire: bool = True
    """Whether setting an existing cell restarts its lifetime (Kamailio's default)."""
    size: int = 4
    """Kamailio's ``size``: 2**size hash slots (only shown by ``htable.listTables``/``dump``)."""
    channel: str = CHANNEL

    def __post_init__(self) -> None:
        check_text("table name", self.name)
        if isinstance(self.autoexpire, bool) or not isinstance(self.autoexpire, int):
            raise TypeError("autoexpire must be an int")
        if not 0 <= self.autoexpire <= INT_MAX:
            raise HtableValueError(f"autoexpire must be in 0..{INT_MAX}")
        if not 2 <= self.size <= 31:
            raise HtableValueError("size must be in 2..31")


class _Cell:
    __slots__ = ("expire", "value")

    def __init__(self, value: Value, expire: float) -> None:
        self.value = value
        self.expire = expire  # absolute Unix time, 0 = never


class HtableModel:
    """One table's cells with Kamailio's expiry rules; not thread-safe, no I/O.

    ``autoexpire`` > 0: a new cell lives ``autoexpire`` seconds, a set restarts that
    (``updateexpire``), :meth:`set_expire` sets another lifetime; a cell is gone once ``now``
    reaches its expire time. ``autoexpire`` 0: cells never expire and :meth:`set_expire` is a
    no-op (5.6.3 answers "Ok" and replicates it, and the cell never expires either).
    """

    def __init__(self, definition: HtableDef) -> None:
        self.definition = definition
        self.name = definition.name
        self._cells: dict[str, _Cell] = {}
        self._heap: list[tuple[float, str]] = []

    # -- reading
    def get(self, key: str, now: float) -> Value | None:
        cell = self._cells.get(key)
        if cell is None:
            return None
        if cell.expire and cell.expire <= now:
            del self._cells[key]
            return None
        return cell.value

    def expire_at(self, key: str, now: float) -> float | None:
        """Absolute expire time of ``key`` (0.0: never); None if absent."""
        if self.get(key, now) is None:
            return None
        return self._cells[key].expire

    def keys(self, now: float) -> list[str]:
        self.purge(now)
        return list(self._cells)

    def items(self, now: float) -> list[tuple[str, Value]]:
        self.purge(now)
        return [(k, c.value) for k, c in self._cells.items()]

    def count(self, now: float) -> int:
        self.purge(now)
        return len(self._cells)

    def entries(self, now: float) -> list[tuple[str, Value, float | None]]:
        """``(key, value, expire)`` of the live cells (expire None: never)."""
        self.purge(now)
        return [(k, c.value, c.expire or None) for k, c in self._cells.items()]

    def snapshot(self, now: float) -> list[SyncCell]:
        """Live cells as sync cells (``expire`` absolute, 0 for a table without expiry)."""
        self.purge(now)
        exp = self.definition.autoexpire > 0
        return [
            SyncCell(self.name, k, c.value, int(c.expire) if exp else 0)
            for k, c in self._cells.items()
        ]

    def purge(self, now: float) -> list[tuple[str, Value]]:
        """Remove the cells whose time is up; returns them."""
        gone: list[tuple[str, Value]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            cell = self._cells.get(key)
            if cell is not None and cell.expire == when:
                del self._cells[key]
                gone.append((key, cell.value))
        if len(heap) > 2 * len(self._cells) + 1024:
            self._heap = [(c.expire, k) for k, c in self._cells.items() if c.expire]
            heapq.heapify(self._heap)
        return gone

    # -- writing
    def set(self, key: str, value: Value, now: float, lifetime: float = 0) -> None:
        """Set a cell (``lifetime`` > 0: expire that many seconds from now, as a sync does)."""
        auto = self.definition.autoexpire
        cell = self._cells.get(key)
        if cell is not None and cell.expire and cell.expire <= now:
            cell = None  # an expired cell is replaced as if new
        if auto <= 0:
            if cell is None:
                self._cells[key] = _Cell(value, 0.0)
            else:
                cell.value = value
            return
        if cell is None:
            cell = self._cells[key] = _Cell(value, 0.0)
            when = now + (lifetime if lifetime > 0 else auto)
        else:
            cell.value = value
            if lifetime > 0:
                when = now + lifetime
            elif self.definition.updateexpire:
                when = now + auto
            else:
                return
        cell.expire = when
        heapq.heappush(self._heap, (when, key))

    def set_expire(self, key: str, seconds: int, now: float) -> bool:
        """Kamailio's setex: the cell expires ``seconds`` from now (autoexpire tables only)."""
        if self.definition.autoexpire <= 0 or self.get(key, now) is None:
            return False
        when = now + seconds
        self._cells[key].expire = when
        heapq.heappush(self._heap, (when, key))
        return True

    def delete(self, key: str) -> Value | None:
        cell = self._cells.pop(key, None)
        return None if cell is None else cell.value

    def clear(self) -> None:
        self._cells.clear()
        self._heap.clear()

    def remove_matching(self, action: Action, pattern: str, on: Match) -> list[tuple[str, Value]]:
        """Actions 5 (regex: searched anywhere, case-insensitive, ``^``/``$`` per line, as
        POSIX ``REG_EXTENDED|REG_ICASE|REG_NEWLINE``) and 6 (prefix). Values are matched
        only on string cells. A bad regex or an empty pattern raises HtableValueError."""
        if not pattern:
            raise HtableValueError("empty pattern")
        if action is Action.RM_REGEX:
            try:
                rx = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
            except re.error as exc:
                raise HtableValueError(f"bad regular expression {pattern!r}: {exc}") from None

            def match(text: str) -> bool:
                return rx.search(text) is not None
        elif action is Action.RM_PREFIX:

            def match(text: str) -> bool:
                return text.startswith(pattern)
        else:
            raise ValueError(f"not a removal: {action!r}")
        gone: list[tuple[str, Value]] = []
        for key, cell in list(self._cells.items()):
            if on is Match.NAME:
                hit = match(key)
            else:
                hit = isinstance(cell.value, str) and match(cell.value)
            if hit:
                del self._cells[key]
                gone.append((key, cell.value))
        return gone

    def load(self, cell: SyncCell, now: float) -> None:
        """Apply one sync cell as 5.6.3 does (lifetime ``expire - now``; 0 or less: default)."""
        lifetime = cell.expire - now if cell.expire else 0
        self.set(cell.cname, cell.value, now, lifetime if lifetime > 0 else 0)
