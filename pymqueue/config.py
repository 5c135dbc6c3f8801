"""Queue definitions (Kamailio ``mqueue`` syntax) and the instance configuration (TOML).

Two entry points:

* :func:`parse_mqueue` reads one value of Kamailio's ``modparam("mqueue", "mqueue", "…")``
  (``name=q;size=10;dbmode=1;addmode=2``) into a :class:`QueueDef`.
* :func:`load_config` reads an instance configuration file (TOML) into an
  :class:`InstanceConfig`; :func:`config_from_dict` does the same for an already parsed table.

The parser accepts every *sensible* definition Kamailio 5.6.3 accepts, with the same meaning,
and rejects with :class:`~pymqueue.errors.ConfigError` what Kamailio rejects **and** what it
silently misreads (``size=abc`` meaning unbounded, ``10abc`` meaning 10, a comma cutting the
definition short, a repeated attribute …). So a string pymqueue accepts means the same thing
to Kamailio. ``docs/kamailio.md`` lists every such divergence.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

from pymqueue._queue import AddMode, Overflow
from pymqueue.errors import ConfigError

if TYPE_CHECKING:
    from pymqueue.dmq.core import DmqConfig

__all__ = [
    "DbMode",
    "InstanceConfig",
    "ModparamState",
    "QueueDef",
    "RpcConfig",
    "config_from_dict",
    "load_config",
    "parse_dmq_table",
    "parse_mqueue",
]

#: Largest ``size`` accepted: Kamailio stores it in a C ``int``.
INT_MAX = 2**31 - 1


class DbMode(IntEnum):
    """Kamailio's ``dbmode`` attribute, as 5.6.3 implements it (its README swaps 2 and 3)."""

    NONE = 0  #: no database interaction
    LOAD_SAVE = 1  #: load (then delete the rows) at start, save at stop
    LOAD = 2  #: load (then delete the rows) at start only
    SAVE = 3  #: save at stop only; rows accumulate over restarts


@dataclass(frozen=True)
class QueueDef:
    """One queue definition.

    ``name`` is the exact byte string (compared case-sensitively, like Kamailio);
    ``size`` is the maximum item count, ``0`` meaning unbounded. ``policy`` and ``capacity``
    are pymqueue extras (overflow policy and ring size in bytes) with Kamailio's behaviour
    as the default.
    """

    name: bytes
    size: int = 0
    dbmode: DbMode = DbMode.NONE
    addmode: AddMode = AddMode.APPEND
    policy: Overflow = Overflow.DROP_OLDEST
    capacity: int | None = None

    @property
    def display_name(self) -> str:
        """The name as text (invalid UTF-8 replaced), for messages and listings."""
        return self.name.decode("utf-8", "replace")


@dataclass(frozen=True)
class RpcConfig:
    """Where the RPC server listens: HTTP ``(host, port)`` and/or a Unix socket path."""

    http: tuple[str, int] | None = None
    unix: str | None = None

    @property
    def enabled(self) -> bool:
        return self.http is not None or self.unix is not None


@dataclass(frozen=True)
class InstanceConfig:
    """Everything an :class:`~pymqueue.instance.Instance` needs."""

    queues: tuple[QueueDef, ...]  # in definition order
    db_url: str | None = None
    db_sync_interval: float | None = None
    rpc: RpcConfig = field(default_factory=RpcConfig)
    namespace: str | None = None
    dmq: Mapping[str, Any] | None = None  # raw [dmq] table, interpreted by pymqueue.dmq
    source: str | None = None  # file the config was read from, for messages

    def __post_init__(self) -> None:
        seen: set[bytes] = set()
        for qdef in self.queues:
            if qdef.name in seen:
                raise ConfigError(f"mqueue redefined: {qdef.display_name!r}")
            seen.add(qdef.name)

    @property
    def dmq_config(self) -> DmqConfig | None:
        """The ``[dmq]`` table as a validated :class:`~pymqueue.dmq.DmqConfig` (None if
        absent); :class:`ConfigError` on a bad value (also checked by :func:`load_config`)."""
        return parse_dmq_table(self.dmq) if self.dmq is not None else None


# ---------------------------------------------------------------------------------------
# [dmq]: Kamailio's dmq modparams (and tm's fr_timer) plus pymqueue's extras

_DMQ_KEYS = {
    "server_address": "str",
    "notification_address": "uris",  # a string or a list, as Kamailio's repeated modparam
    "notification_addresses": "uris",
    "notification_channel": "str",
    "ping_interval": "num",
    "fr_timer": "num",  # seconds (Kamailio's tm fr_timer is in ms)
    "t1": "num",
    "t2": "num",
    "max_nodes": "int",
    "allow_networks": "strs",
    "secret": "str",
    "user_agent": "str",
    "via_rport": "bool",
}


def parse_dmq_table(table: Mapping[str, Any], source: str | None = None) -> DmqConfig:
    """Validate a ``[dmq]`` table into a :class:`~pymqueue.dmq.DmqConfig` (ConfigError)."""
    from pymqueue.dmq.core import DmqConfig  # noqa: PLC0415 - keep the dmq package lazy

    ctx = _Ctx(source)
    if not isinstance(table, Mapping):
        raise ctx.error("dmq", "must be a table")
    unknown = sorted(set(table) - set(_DMQ_KEYS))
    if unknown:
        raise ctx.error(f"dmq.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_DMQ_KEYS))})")
    if "server_address" not in table:
        raise ctx.error("dmq.server_address", "is required")
    if "notification_address" in table and "notification_addresses" in table:
        raise ctx.error("dmq.notification_addresses", "give notification_address or _addresses")
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        kind = _DMQ_KEYS[key]
        bad = ctx.error(f"dmq.{key}", f"bad value {value!r}")
        if kind == "str":
            if not isinstance(value, str) or not value:
                raise bad
            kwargs[key] = value.encode("utf-8") if key == "secret" else value
        elif kind == "num":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad
            if not math.isfinite(value) or value <= 0:
                raise bad
            kwargs[key] = float(value)
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            kwargs[key] = value
        elif kind == "bool":
            if not isinstance(value, bool):
                raise bad
            kwargs[key] = value
        else:
            items = [value] if kind == "uris" and isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
                raise bad
            name = "notification_addresses" if kind == "uris" else key
            kwargs[name] = tuple(items)
    try:
        return DmqConfig(**kwargs)
    except ConfigError as exc:
        raise ctx.error("dmq", str(exc)) from None


# ---------------------------------------------------------------------------------------
# Kamailio attribute strings

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


# ---------------------------------------------------------------------------------------
# The TOML instance configuration

_TOP_KEYS = frozenset(
    {"namespace", "db_url", "db_sync_interval", "modparam", "queue", "rpc", "dmq"}
)
_QUEUE_KEYS = frozenset({"mqueue", "name", "size", "dbmode", "addmode", "policy", "capacity"})
_RPC_KEYS = frozenset({"host", "port", "unix"})
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{0,32}")


_E = TypeVar("_E", bound=Enum)


class _Ctx:
    """Error context: file name and key path."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        where = f"{self.source}: " if self.source else ""
        return ConfigError(f"{where}{key}: {message}")


def _enum_value(ctx: _Ctx, key: str, enum: type[_E], value: object) -> _E:
    if isinstance(value, str):
        try:
            return enum[value.strip().upper().replace("-", "_")]
        except KeyError:
            known = ", ".join(m.name.lower() for m in enum)
            raise ctx.error(key, f"unknown value {value!r} (one of {known})") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum(value)
        except ValueError:
            raise ctx.error(
                key, f"unknown value {value!r} (one of {[m.value for m in enum]})"
            ) from None
    raise ctx.error(key, f"must be a string or an integer, got {value!r}")


def _queue_table(ctx: _Ctx, key: str, table: Mapping[str, Any]) -> QueueDef:
    unknown = sorted(set(table) - _QUEUE_KEYS)
    if unknown:
        raise ctx.error(f"{key}.{unknown[0]}", "unknown key")
    if "mqueue" in table:
        clash = sorted(set(table) & {"name", "size", "dbmode", "addmode"})
        if clash:
            raise ctx.error(
                f"{key}.{clash[0]}", "give either 'mqueue' (a Kamailio string) or the table form"
            )
        mq = table["mqueue"]
        if not isinstance(mq, str):
            raise ctx.error(f"{key}.mqueue", f"must be a string, got {mq!r}")
        try:
            base = parse_mqueue(mq)
        except ConfigError as exc:
            raise ctx.error(f"{key}.mqueue", str(exc)) from None
    else:
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ctx.error(f"{key}.name", f"a non-empty string is required, got {name!r}")
        size = table.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= INT_MAX:
            raise ctx.error(
                f"{key}.size", f"must be an integer in 0..{INT_MAX} (0: unbounded), got {size!r}"
            )
        base = QueueDef(
            name=name.encode("utf-8"),
            size=size,
            dbmode=_enum_value(ctx, f"{key}.dbmode", DbMode, table.get("dbmode", 0)),
            addmode=_enum_value(ctx, f"{key}.addmode", AddMode, table.get("addmode", 0)),
        )
    policy = _enum_value(ctx, f"{key}.policy", Overflow, table.get("policy", "drop_oldest"))
    capacity = table.get("capacity")
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0
    ):
        raise ctx.error(f"{key}.capacity", f"must be a positive integer (bytes), got {capacity!r}")
    return QueueDef(
        name=base.name,
        size=base.size,
        dbmode=base.dbmode,
        addmode=base.addmode,
        policy=policy,
        capacity=capacity,
    )


def _rpc_table(ctx: _Ctx, table: object) -> RpcConfig:
    if not isinstance(table, Mapping):
        raise ctx.error("rpc", "must be a table")
    unknown = sorted(set(table) - _RPC_KEYS)
    if unknown:
        raise ctx.error(f"rpc.{unknown[0]}", "unknown key (host, port, unix)")
    http: tuple[str, int] | None = None
    if "port" in table:
        port = table["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ctx.error("rpc.port", f"must be an integer in 0..65535, got {port!r}")
        host = table.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ctx.error("rpc.host", f"must be a non-empty string, got {host!r}")
        http = (host, port)
    elif "host" in table:
        raise ctx.error("rpc.host", "given without rpc.port")
    unix = table.get("unix")
    if unix is not None and (not isinstance(unix, str) or not unix):
        raise ctx.error("rpc.unix", f"must be a non-empty path, got {unix!r}")
    return RpcConfig(http=http, unix=unix)


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> InstanceConfig:
    """Build an :class:`InstanceConfig` from a parsed TOML table.

    Queues come from ``modparam`` (Kamailio's module parameters in file order) first, then
    from the ``[[queue]]`` tables in file order. ``source`` names the file in messages.
    """
    ctx = _Ctx(source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ctx.error(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")

    mp = ModparamState()
    modparams = data.get("modparam", [])
    if not isinstance(modparams, list):
        raise ctx.error("modparam", "must be an array of [param, value] pairs")
    for i, line in enumerate(modparams):
        key = f"modparam[{i}]"
        if not isinstance(line, list) or len(line) != 2 or not isinstance(line[0], str):
            raise ctx.error(key, f"must be a [param, value] pair, got {line!r}")
        try:
            mp.set(line[0], line[1])
        except ConfigError as exc:
            raise ctx.error(key, str(exc)) from None

    tables = data.get("queue", [])
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise ctx.error("queue", "must be an array of tables ([[queue]])")
    for i, table in enumerate(tables):
        key = f"queue[{i}]"
        qdef = _queue_table(ctx, key, table)
        try:
            mp.add(qdef)
        except ConfigError as exc:
            raise ctx.error(f"{key}.name", str(exc)) from None

    db_url = data.get("db_url")
    if db_url is not None:
        if not isinstance(db_url, str) or not db_url:
            raise ctx.error("db_url", f"must be a non-empty string, got {db_url!r}")
        if mp.db_url is not None:
            raise ctx.error("db_url", "also given in modparam; give it once")
    else:
        db_url = mp.db_url

    interval = data.get("db_sync_interval")
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or interval <= 0
    ):
        raise ctx.error(
            "db_sync_interval", f"must be a positive number of seconds, got {interval!r}"
        )

    db_queues = [q for q in mp.queues if q.dbmode != DbMode.NONE]
    if db_queues and db_url is None:
        raise ctx.error(
            "db_url",
            f"queue {db_queues[0].display_name!r} has dbmode {int(db_queues[0].dbmode)} "
            "but no db_url is set",
        )

    namespace = data.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace)
    ):
        raise ctx.error(
            "namespace", f"must be up to 32 letters, digits, '_' or '-', got {namespace!r}"
        )

    rpc = _rpc_table(ctx, data["rpc"]) if "rpc" in data else RpcConfig()

    dmq = data.get("dmq")
    if dmq is not None:
        if not isinstance(dmq, Mapping):
            raise ctx.error("dmq", "must be a table")
        parse_dmq_table(dmq, source)

    return InstanceConfig(
        queues=mp.queues,
        db_url=db_url,
        db_sync_interval=float(interval) if interval is not None else None,
        rpc=rpc,
        namespace=namespace,
        dmq=dict(dmq) if dmq is not None else None,
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> InstanceConfig:
    """Read an instance configuration (TOML). Errors name the file and the key."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return config_from_dict(data, source=source)


def queues_from_modparams(lines: Sequence[tuple[str, object]]) -> tuple[QueueDef, ...]:
    """Queue definitions from Kamailio ``modparam("mqueue", P, V)`` pairs, in order."""
    mp = ModparamState()
    for param, value in lines:
        mp.set(param, value)
    return mp.queues
