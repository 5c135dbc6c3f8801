"""Kamailio's ``mqueue`` module parameters: the definition strings and ``modparam`` order.

* :func:`parse_mqueue` reads one value of ``modparam("mqueue", "mqueue", "…")``
  (``name=q;size=10;dbmode=1;addmode=2``) into a :class:`~pymqueue.definitions.QueueDef`.
* :class:`ModparamState` applies ``mqueue``, ``mqueue_name``, ``mqueue_size``,
  ``mqueue_addmode`` and ``db_url`` in file order, as Kamailio does;
  :func:`queues_from_modparams` runs a list of them.

The parser accepts every *sensible* definition Kamailio 5.6.3 accepts, with the same meaning,
and rejects with :class:`~pymqueue.errors.ConfigError` what Kamailio rejects **and** what it
silently misreads (``size=abc`` meaning unbounded, ``10abc`` meaning 10, a comma cutting the
definition short, a repeated attribute …). So a string pymqueue accepts means the same thing
to Kamailio. ``docs/kamailio.md`` lists every such divergence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pymqueue.definitions import INT_MAX, DbMode, QueueDef
from pymqueue.errors import ConfigError
from pymqueue.queue.types import AddMode

__all__ = ["ModparamState", "parse_mqueue", "queues_from_modparams"]


_KAMAILIO_ATTRS = ("name", "size", "dbmode", "addmode")
_DECIMAL = re.compile(r"\+?[0-9]+")
_TOKEN_END = frozenset(';,="')


def _int_value(attr: str, raw: str, text: str, lo: int, hi: int) -> int:
    """A decimal integer in ``[lo, hi]``; optional ``+``, nothing else."""
    if not _DECIMAL.fullmatch(raw):
        hint = " (use 0 or leave size out for an unbounded queue)" if attr == "size" else ""
        raise ConfigError(
            f"mqueue {attr!r} must be a decimal integer in {lo}..{hi}, got {raw!r}{hint} "
            f"in {text!r}"
        )
    value = int(raw)
    if not lo <= value <= hi:
        raise ConfigError(f"mqueue {attr!r} must be in {lo}..{hi}, got {raw!r} in {text!r}")
    return value


def _split_attrs(text: str) -> list[tuple[str, str]]:
    """Tokenise ``attr=value;attr="quoted value";…`` strictly.

    Whitespace around names, ``=``, values and ``;`` is ignored, a value may be
    double-quoted (the quotes are removed, anything but ``"`` may appear inside), one
    trailing ``;`` is allowed. Everything else that Kamailio would either reject or read
    in a surprising way is an error.
    """
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)

    def skip_ws(j: int) -> int:
        while j < n and text[j].isspace():
            j += 1
        return j

    i = skip_ws(i)
    if i == n:
        raise ConfigError(f"mqueue name not defined: empty definition {text!r}")
    while True:
        start = i
        while i < n and text[i] not in _TOKEN_END and not text[i].isspace():
            i += 1
        attr = text[start:i]
        i = skip_ws(i)
        if not attr:
            what = repr(text[i]) if i < n else "end of text"
            raise ConfigError(f"mqueue attribute name expected at {what} in {text!r}")
        if i == n or text[i] != "=":
            raise ConfigError(f"mqueue attribute {attr!r} has no '=value' in {text!r}")
        i = skip_ws(i + 1)
        if i < n and text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise ConfigError(f"unterminated quoted value for {attr!r} in {text!r}")
            value = text[i + 1 : end]
            i = end + 1
        else:
            start = i
            while i < n and text[i] not in _TOKEN_END and not text[i].isspace():
                i += 1
            value = text[start:i]
        out.append((attr, value))
        i = skip_ws(i)
        if i == n:
            return out
        if text[i] == ",":
            raise ConfigError(
                f"comma in mqueue definition {text!r} (Kamailio would silently ignore "
                f"{text[i:]!r}); separate attributes with ';' and quote names with commas"
            )
        if text[i] != ";":
            raise ConfigError(
                f"unexpected {text[i:]!r} after the value of {attr!r} in {text!r} "
                "(quote values that contain spaces)"
            )
        i = skip_ws(i + 1)
        if i == n:
            return out  # one trailing ';'


def parse_mqueue(text: str) -> QueueDef:
    """Parse one Kamailio ``mqueue`` parameter value, e.g. ``"name=acc;size=100;dbmode=1"``.

    Attribute names are case-insensitive (``name``, ``size``, ``dbmode``, ``addmode``);
    ``size`` is ``0`` (unbounded) up to 2**31-1, ``dbmode`` 0-3, ``addmode`` 0-2.
    Raises :class:`ConfigError` quoting the offending text.
    """
    if not isinstance(text, str):
        raise ConfigError(f"mqueue definition must be a string, got {type(text).__name__}")
    values: dict[str, str] = {}
    for attr, value in _split_attrs(text):
        key = attr.lower()
        if key not in _KAMAILIO_ATTRS:
            raise ConfigError(f"unknown param: {attr!r} in mqueue definition {text!r}")
        if key in values:
            raise ConfigError(
                f"mqueue attribute {attr!r} given twice in {text!r} (Kamailio would use "
                "the first one)"
            )
        values[key] = value
    name = values.get("name", "")
    if not name:
        raise ConfigError(f"mqueue name not defined in {text!r}")
    size = _int_value("size", values["size"], text, 0, INT_MAX) if "size" in values else 0
    dbmode = _int_value("dbmode", values["dbmode"], text, 0, 3) if "dbmode" in values else 0
    addmode = _int_value("addmode", values["addmode"], text, 0, 2) if "addmode" in values else 0
    return QueueDef(
        name=name.encode("utf-8"),
        size=size,
        dbmode=DbMode(dbmode),
        addmode=AddMode(addmode),
    )


class ModparamState:
    """Kamailio's module parameters applied in file order.

    ``mqueue_size`` and ``mqueue_addmode`` only affect ``mqueue_name`` lines that come
    *after* them, exactly as in Kamailio::

        mp = ModparamState()
        mp.set("mqueue_name", "n1")        # unbounded
        mp.set("mqueue_size", 2)
        mp.set("mqueue_name", "n2")        # capacity 2
        mp.queues  # (QueueDef(b"n1"), QueueDef(b"n2", size=2))
    """

    PARAMS = ("mqueue", "mqueue_name", "mqueue_size", "mqueue_addmode", "db_url")

    def __init__(self) -> None:
        self._queues: list[QueueDef] = []
        self._names: set[bytes] = set()
        self.size = 0
        self.addmode = AddMode.APPEND
        self.db_url: str | None = None

    @property
    def queues(self) -> tuple[QueueDef, ...]:
        return tuple(self._queues)

    def add(self, qdef: QueueDef) -> None:
        """Add a definition; a name already defined is an error (``mqueue redefined``)."""
        if qdef.name in self._names:
            raise ConfigError(f"mqueue redefined: {qdef.display_name!r}")
        self._names.add(qdef.name)
        self._queues.append(qdef)

    def set(self, param: str, value: object) -> None:
        """Apply ``modparam("mqueue", param, value)``."""
        if param == "mqueue":
            if not isinstance(value, str):
                raise ConfigError(f"parameter 'mqueue' takes a string, got {value!r}")
            self.add(parse_mqueue(value))
        elif param == "mqueue_name":
            if not isinstance(value, str):
                raise ConfigError(f"parameter 'mqueue_name' takes a string, got {value!r}")
            if not value:
                raise ConfigError("mqueue name not defined: 'mqueue_name' is empty")
            self.add(QueueDef(name=value.encode("utf-8"), size=self.size, addmode=self.addmode))
        elif param == "mqueue_size":
            self.size = _int_param(param, value, 0, INT_MAX)
        elif param == "mqueue_addmode":
            self.addmode = AddMode(_int_param(param, value, 0, 2))
        elif param == "db_url":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"parameter 'db_url' takes a non-empty string, got {value!r}")
            if self.db_url is not None:
                raise ConfigError(f"parameter 'db_url' given twice ({self.db_url!r}, {value!r})")
            self.db_url = value
        else:
            raise ConfigError(
                f"parameter {param!r} not found in module mqueue (known: {', '.join(self.PARAMS)})"
            )


def _int_param(param: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"parameter {param!r} takes an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"parameter {param!r} must be in {lo}..{hi}, got {value}")
    return value


def queues_from_modparams(lines: Sequence[tuple[str, object]]) -> tuple[QueueDef, ...]:
    """Queue definitions from Kamailio ``modparam("mqueue", P, V)`` pairs, in order."""
    mp = ModparamState()
    for param, value in lines:
        mp.set(param, value)
    return mp.queues
