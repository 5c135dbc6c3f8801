"""The instance configuration (TOML): :func:`load_config` reads a file into an
:class:`InstanceConfig`; :func:`config_from_dict` does the same for an already parsed table.

Queues come from ``modparam`` lines (Kamailio's module parameters, read by
:mod:`pymqueue.kamailio.modparam`) and from ``[[queue]]`` tables, either of which may hold a
Kamailio ``mqueue`` string; what a queue *is* lives in :mod:`pymqueue.definitions`. The
``[dmq]`` table is checked here and interpreted by :mod:`pymqueue.dmq`.

``QueueDef``, ``DbMode``, ``ModparamState``, ``parse_mqueue`` and ``queues_from_modparams``
are re-exported from their homes for code written against this module.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from pymqueue.definitions import INT_MAX, DbMode, QueueDef
from pymqueue.errors import ConfigError
from pymqueue.kamailio.modparam import ModparamState, parse_mqueue, queues_from_modparams
from pymqueue.queue.types import AddMode, Overflow

if TYPE_CHECKING:
    from pymqueue.dmq.core import DmqConfig
    from pymqueue.dmq.htable import HtableDef

__all__ = [
    "DbMode",
    "InstanceConfig",
    "ModparamState",
    "QueueDef",
    "RpcConfig",
    "config_from_dict",
    "load_config",
    "parse_dmq_table",
    "parse_htable_defs",
    "parse_mqueue",
    "queues_from_modparams",
]


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
    def htables(self) -> tuple[HtableDef, ...]:
        """The ``[[dmq.htable]]`` tables (replicated htables), in definition order."""
        return parse_htable_defs(self.dmq) if self.dmq is not None else ()

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
    "max_deferred": "count",  # requests whose async handler answers later, at once
    "reply_cache_size": "count",  # replies kept for retransmissions
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
    unknown = sorted(set(table) - set(_DMQ_KEYS) - {"htable"})
    if unknown:
        raise ctx.error(f"dmq.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_DMQ_KEYS))})")
    if "server_address" not in table:
        raise ctx.error("dmq.server_address", "is required")
    if "notification_address" in table and "notification_addresses" in table:
        raise ctx.error("dmq.notification_addresses", "give notification_address or _addresses")
    kwargs: dict[str, Any] = {}
    parse_htable_defs(table, source)
    for key, value in table.items():
        if key == "htable":
            continue
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
        elif kind in ("int", "count"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            if kind == "count" and value < 1:
                raise ctx.error(f"dmq.{key}", f"must be >= 1, got {value!r}")
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


_HTABLE_KEYS = {"name": str, "autoexpire": int, "updateexpire": bool, "size": int, "channel": str}


def parse_htable_defs(table: Mapping[str, Any], source: str | None = None) -> tuple[HtableDef, ...]:
    """The ``[[dmq.htable]]`` array of a ``[dmq]`` table (ConfigError on a bad one)."""
    from pymqueue.dmq.htable import HtableDef  # noqa: PLC0415 - keep the dmq package lazy

    ctx = _Ctx(source)
    raw = table.get("htable", [])
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        raise ctx.error("dmq.htable", "must be an array of tables ([[dmq.htable]])")
    out: list[HtableDef] = []
    for i, item in enumerate(raw):
        key = f"dmq.htable[{i}]"
        for k, v in item.items():
            want = _HTABLE_KEYS.get(k)
            if want is None:
                raise ctx.error(f"{key}.{k}", f"unknown key (known: {', '.join(_HTABLE_KEYS)})")
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise ctx.error(f"{key}.{k}", f"must be a {want.__name__}, got {v!r}")
        if "name" not in item:
            raise ctx.error(f"{key}.name", "is required")
        try:
            hdef = HtableDef(**item)
        except (ValueError, TypeError) as exc:
            raise ctx.error(key, str(exc)) from None
        if any(d.name == hdef.name and d.channel == hdef.channel for d in out):
            raise ctx.error(f"{key}.name", f"table {hdef.name!r} defined twice")
        out.append(hdef)
    return tuple(out)


# ---------------------------------------------------------------------------------------
# The TOML instance configuration

_TOP_KEYS = frozenset(
    {"namespace", "db_url", "db_sync_interval", "modparam", "queue", "rpc", "dmq"}
)
_QUEUE_KEYS = frozenset(
    {
        "mqueue",
        "name",
        "size",
        "dbmode",
        "addmode",
        "policy",
        "capacity",
        "dmq",
        "owner",
        "batch_items",
    }
)
_DMQ_MODES = ("owner", "mirror")
_BATCH_ITEMS_MAX = 4096  # pymqueue.dmq.mqueue_service.BATCH_ITEMS
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
    dmq, owner = _queue_dmq(ctx, key, table)
    batch_items = table.get("batch_items")
    if batch_items is not None:
        if dmq is None:
            raise ctx.error(f"{key}.batch_items", "is only meaningful with dmq")
        if (
            isinstance(batch_items, bool)
            or not isinstance(batch_items, int)
            or not 1 <= batch_items <= _BATCH_ITEMS_MAX
        ):
            raise ctx.error(
                f"{key}.batch_items",
                f"must be an integer in 1..{_BATCH_ITEMS_MAX}, got {batch_items!r}",
            )
    return QueueDef(
        name=base.name,
        size=base.size,
        dbmode=base.dbmode,
        addmode=base.addmode,
        policy=policy,
        capacity=capacity,
        dmq=dmq,
        owner=owner,
        batch_items=batch_items,
    )


def _queue_dmq(ctx: _Ctx, key: str, table: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``dmq`` and ``owner`` of a ``[[queue]]`` table (queues across hosts)."""
    dmq = table.get("dmq")
    if dmq is not None and dmq not in _DMQ_MODES:
        raise ctx.error(f"{key}.dmq", f"unknown value {dmq!r} (one of: {', '.join(_DMQ_MODES)})")
    owner = table.get("owner")
    if owner is None:
        return dmq, None
    if dmq != "owner":
        raise ctx.error(f"{key}.owner", 'is only meaningful with dmq = "owner"')
    from pymqueue.dmq.nodes import NodeId  # noqa: PLC0415 - keep the dmq package lazy
    from pymqueue.errors import DmqProtocolError  # noqa: PLC0415

    if not isinstance(owner, str):
        raise ctx.error(f"{key}.owner", f"must be a node URI string, got {owner!r}")
    try:
        node = NodeId.parse(owner)
    except DmqProtocolError as exc:
        raise ctx.error(f"{key}.owner", f"bad node URI {owner!r}: {exc}") from None
    if not node.port or node.transport not in (None, "udp"):
        raise ctx.error(f"{key}.owner", f"{owner!r}: a UDP node URI with a port is needed")
    return dmq, str(node)


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
    else:
        for i, table in enumerate(tables):
            if table.get("dmq") is not None:
                raise ctx.error(f"queue[{i}].dmq", "needs a [dmq] table (the bus to use)")

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
