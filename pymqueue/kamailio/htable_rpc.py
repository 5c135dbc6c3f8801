"""Kamailio 5.6.3's ``htable.*`` RPC commands over an instance's replicated tables.

Shapes, codes and texts as measured on 5.6.3 (``kamcmd``/``jsonrpcs``):

* ``htable.get T K`` → ``{"item": {"name", "value", "flags" (2 string, 0 integer),
  "expire" ("NEVER" or local "YYYY-MM-DD HH:MM:SS")}}``; missing key → 500 ``Key name doesn't
  exist in htable.``;
* ``htable.sets T K V`` / ``htable.seti T K N`` → ``Ok. Key set to new value.``;
* ``htable.setex T K S`` → ``Ok`` (whether or not the key exists);
* ``htable.delete T K`` → ``Ok. Key deleted.``; missing key → 404 ``Key not found in htable.``
  (and the delete is replicated anyway, as 5.6.3 does);
* ``htable.dump T`` → ``[{"entry", "size", "slot": [{"name", "value", "type": "str"|"int"}]}]``;
* ``htable.listTables`` → ``{"name", "dbtable": "", "dbmode": 0, "expire", "updateexpire",
  "size" (2**size), "dmqreplicate": 1}`` per table, newest definition first;
* ``htable.stats`` → ``{"name", "slots", "all", "min", "max"}`` per table;
* unknown table → 500 ``No such htable``; too few parameters → 500 with 5.6.3's texts.

Divergences: ``entry`` (the hash slot) uses pymqueue's hash (CRC-32), not Kamailio's, so the
grouping of ``dump`` differs; ``htable.seti`` refuses a value that is not a 32-bit integer
(500 ``Invalid integer value``) where 5.6.3 stores 0 or a truncated number.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pymqueue.errors import HtableValueError, RpcError

__all__ = ["register_htable_rpc"]


class _RpcLike(Protocol):
    def register(self, name: str, func: Any, help: str) -> None: ...


KEY_SET = "Ok. Key set to new value."
KEY_DELETED = "Ok. Key deleted."


def _slot(key: str, size: int) -> int:
    return zlib.crc32(key.encode("utf-8")) & ((1 << size) - 1)


def _expire_text(when: float | None) -> str:
    if when is None:
        return "NEVER"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def register_htable_rpc(rpc: _RpcLike, tables: Callable[[], Mapping[str, Any]]) -> None:
    """Add ``htable.*`` to an :class:`~pymqueue.rpc.RpcServer`; ``tables()`` gives the
    replicas by name, in definition order (:class:`~pymqueue.dmq.htable_replica.Htable`)."""

    def table(args: tuple[Any, ...], need: int, text: str) -> Any:
        if len(args) < need or not all(isinstance(a, str | int) for a in args[:need]):
            raise RpcError(500, text)
        found = tables().get(str(args[0]))
        if found is None:
            raise RpcError(500, "No such htable")
        return found

    def get(*args: Any) -> dict[str, Any]:
        ht = table(args, 2, "Not enough parameters (htable name and key name)")
        key = str(args[1])
        try:
            value = ht[key]
            when = ht.expire_at(key)
        except KeyError:
            raise RpcError(500, "Key name doesn't exist in htable.") from None
        return {
            "item": {
                "name": key,
                "value": value,
                "flags": 2 if isinstance(value, str) else 0,
                "expire": _expire_text(when),
            }
        }

    def store(ht: Any, key: str, value: str | int) -> str:
        try:
            ht[key] = value
        except (HtableValueError, TypeError) as exc:
            raise RpcError(500, f"Cannot set key: {exc}") from None
        return KEY_SET

    def sets(*args: Any) -> str:
        ht = table(args, 3, "Not enough parameters (htable name, key name and value)")
        return store(ht, str(args[1]), str(args[2]))

    def seti(*args: Any) -> str:
        ht = table(args, 3, "Not enough parameters (htable name, key name and value)")
        try:
            value = int(args[2])
        except (TypeError, ValueError):
            raise RpcError(500, "Invalid integer value") from None
        if isinstance(args[2], bool) or not -(2**31) <= value < 2**31:
            raise RpcError(500, "Invalid integer value")
        return store(ht, str(args[1]), value)

    def setex(*args: Any) -> str:
        ht = table(args, 3, "Not enough parameters (htable name, key name and expire)")
        try:
            seconds = int(args[2])
            ht.setex(str(args[1]), seconds)
        except (TypeError, ValueError):  # HtableValueError is a ValueError
            raise RpcError(500, "Invalid expire value") from None
        return "Ok"

    def delete(*args: Any) -> str:
        if len(args) < 2 or not isinstance(args[1], str):
            raise RpcError(500, "Not enough parameters (htable name & key name")
        ht = table(args, 2, "Not enough parameters (htable name & key name")
        try:
            found = ht.forget(args[1])  # replicated even when absent, as 5.6.3 does
        except (HtableValueError, TypeError):
            found = False
        if not found:
            raise RpcError(404, "Key not found in htable.")
        return KEY_DELETED

    def dump(*args: Any) -> list[dict[str, Any]]:
        if not args:
            raise RpcError(500, "No htable name given")
        ht = table(args, 1, "No htable name given")
        size = ht.definition.size
        slots: dict[int, list[dict[str, Any]]] = {}
        for key, value, _ in ht.cells():
            slots.setdefault(_slot(key, size), []).append(
                {"name": key, "value": value, "type": "str" if isinstance(value, str) else "int"}
            )
        return [
            {"entry": entry, "size": len(cells), "slot": cells}
            for entry, cells in sorted(slots.items())
        ]

    def list_tables(*_: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "dbtable": "",
                "dbmode": 0,
                "expire": ht.definition.autoexpire,
                "updateexpire": 1 if ht.definition.updateexpire else 0,
                "size": 1 << ht.definition.size,
                "dmqreplicate": 1,
            }
            for name, ht in reversed(list(tables().items()))
        ]

    def stats(*_: Any) -> list[dict[str, Any]]:
        out = []
        for name, ht in reversed(list(tables().items())):
            size = ht.definition.size
            counts: dict[int, int] = {}
            for key, _v, _w in ht.cells():
                slot = _slot(key, size)
                counts[slot] = counts.get(slot, 0) + 1
            total = sum(counts.values())
            full = len(counts) == 1 << size
            out.append(
                {
                    "name": name,
                    "slots": 1 << size,
                    "all": total,
                    "min": min(counts.values()) if full else 0,
                    "max": max(counts.values(), default=0),
                }
            )
        return out

    rpc.register("htable.get", get, "Get one key from a hash table.")
    rpc.register("htable.sets", sets, "Set one key in a hash table to a string value.")
    rpc.register("htable.seti", seti, "Set one key in a hash table to an integer value.")
    rpc.register("htable.setex", setex, "Set expire in a hash table for a key.")
    rpc.register("htable.delete", delete, "Delete one key from a hash table.")
    rpc.register("htable.dump", dump, "Dump the content of a hash table.")
    rpc.register("htable.listTables", list_tables, "List all htables.")
    rpc.register("htable.stats", stats, "Statistics about htables.")
