"""Kamailio's mqueue script API: ``mq_add``, ``mq_fetch``, ``mq_size``, ``mq_pv_free`` and the
pseudo-variables ``$mqk(q)``, ``$mqv(q)``, ``$mq_size(q)``, with Kamailio 5.6.3's return codes.

In Kamailio every process has, per queue, a private *slot* holding the item it fetched last;
``$mqk``/``$mqv`` read that slot. Here the slot belongs to a :class:`ScriptApi` object (a
*consumer context*): several contexts in one process behave like several Kamailio
processes. A context is not thread-safe; give each thread its own.

Return codes (negative means "false" in a Kamailio ``if``):

========================  ==============================================================
``mq_add(q, k, v)``       1 added (also when addmode 1 ignored a duplicate or overflow
                          dropped the oldest); -1 unknown queue, parameter too long, or
                          the queue refused the item (policy ``reject``/``block``, too large)
``mq_fetch(q)``           1 item moved into this context's slot; -2 queue empty (the slot
                          is cleared); -1 unknown queue (the slot is left alone)
``mq_size(q)``            N >= 1 items; -1 empty; -2 unknown queue. Never 0
``mq_pv_free(q)``         always 1; clears this context's slot for ``q``
========================  ==============================================================

Pseudo-variables: :meth:`ScriptApi.pv_mqk` / :meth:`ScriptApi.pv_mqv` return the slot's
key / value as ``bytes``, or ``None`` for ``$null`` (nothing held, or the held key / value is
empty, as in Kamailio); :meth:`ScriptApi.pv_mq_size` returns the count (0 when empty).
For an unknown queue all three return ``None`` and log ``mqueue not found: <q>`` (Kamailio's
getter fails, prints an empty string, and compares equal to ``$null``).

The module-level functions use one default context (see :func:`default_api`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from pymqueue._text import display, name_bytes, name_text, to_bytes
from pymqueue.errors import Error, QueueNotFound

if TYPE_CHECKING:
    from pymqueue.queue.sync import Queue

__all__ = [
    "NULL_TEXT",
    "PV_BUFFER_SIZE",
    "ScriptApi",
    "default_api",
    "mq_add",
    "mq_fetch",
    "mq_pv_free",
    "mq_size",
    "pv_mq_size",
    "pv_mqk",
    "pv_mqv",
    "pv_text",
    "set_default_api",
]

log = logging.getLogger("pymqueue.kamailio")

#: Kamailio's default ``pv_buffer_size``: a config-script parameter (queue name, key or
#: value) can be at most ``PV_BUFFER_SIZE - 1`` bytes long (spec §3, case T23).
PV_BUFFER_SIZE = 8192

#: How Kamailio prints ``$null`` in a format string.
NULL_TEXT = b"<null>"

Name: TypeAlias = "str | bytes"
Data: TypeAlias = "str | bytes"


class _HasQueue(Protocol):
    def queue(self, name: str | bytes) -> Queue: ...


Lookup: TypeAlias = "_HasQueue | Mapping[bytes, Queue] | Mapping[str, Queue] | Callable[[bytes], Queue | None] | None"  # noqa: E501


def pv_text(value: bytes | int | None) -> bytes:
    """Render a PV value as Kamailio prints it in a format string (``$null`` → ``<null>``)."""
    if value is None:
        return NULL_TEXT
    if isinstance(value, int):
        return str(value).encode()
    return value


class _AttachLookup:
    """Default lookup: any existing queue by name (``Queue(name, create=False)``), cached."""

    def __init__(self, namespace: str | None) -> None:
        self._namespace = namespace
        self._cache: dict[bytes, Queue] = {}

    def __call__(self, name: bytes) -> Queue | None:
        q = self._cache.get(name)
        if q is not None:
            return q
        from pymqueue.queue.sync import Queue  # noqa: PLC0415

        try:
            q = Queue(name, create=False, namespace=self._namespace)
        except QueueNotFound:
            return None
        self._cache[name] = q
        return q

    def close(self) -> None:
        for q in self._cache.values():
            q.close()
        self._cache.clear()


class ScriptApi:
    """One consumer context: Kamailio's config functions and PVs with their own slots.

    ``lookup`` finds a queue by name (bytes); it is one of:

    * an :class:`~pymqueue.instance.Instance` (or anything with ``queue(name)`` raising
      :class:`~pymqueue.QueueNotFound`),
    * a mapping from name (bytes or str) to :class:`~pymqueue.Queue`,
    * a callable ``name -> Queue | None``,
    * ``None``: attach any existing queue by name in ``namespace``.

    ``pv_buffer_size`` reproduces the limit of Kamailio's config-script path (parameters of
    ``pv_buffer_size`` bytes or more make ``mq_add`` return -1); ``None`` lifts it, as
    Kamailio's KEMI does.
    """

    def __init__(
        self,
        lookup: Lookup = None,
        *,
        namespace: str | None = None,
        pv_buffer_size: int | None = PV_BUFFER_SIZE,
    ) -> None:
        self._own_lookup: _AttachLookup | None = None
        if lookup is None:
            self._own_lookup = _AttachLookup(namespace)
        self._lookup = lookup
        self.pv_buffer_size = pv_buffer_size
        self._slots: dict[bytes, tuple[bytes, bytes]] = {}

    # -- lookup ------------------------------------------------------------------------

    def _find(self, name: bytes) -> Queue | None:
        if self._own_lookup is not None:
            return self._own_lookup(name)
        lookup = self._lookup
        if isinstance(lookup, Mapping):
            table = cast("Mapping[object, Queue]", lookup)
            found = table.get(name)
            if found is None:
                found = table.get(name_text(name))
            return found
        if hasattr(lookup, "queue"):
            try:
                return lookup.queue(name)  # type: ignore[union-attr]
            except QueueNotFound:
                return None
        assert callable(lookup)
        try:
            return lookup(name)
        except QueueNotFound:
            return None

    def _too_long(self, value: bytes) -> bool:
        return self.pv_buffer_size is not None and len(value) >= self.pv_buffer_size

    # -- config functions ------------------------------------------------------------------

    def mq_add(self, q: Name, key: Data, value: Data) -> int:
        """Append ``(key, value)``; 1 on success (see the module doc), -1 on failure."""
        name, k, v = name_bytes(q), to_bytes(key), to_bytes(value)
        for what, data in (("name", name), ("key", k), ("val", v)):
            if self._too_long(data):
                log.error("cannot get the %s: %d bytes >= pv_buffer_size", what, len(data))
                return -1
        queue = self._find(name)
        if queue is None:
            log.error("mqueue not found: %s", display(name))
            return -1
        try:
            queue.add(k, v, timeout=0)
        except Error as exc:
            log.error("mqueue %s: cannot add: %s", display(name), exc)
            return -1
        return 1

    def mq_fetch(self, q: Name) -> int:
        """Move the oldest item into this context's slot: 1, -2 empty, -1 unknown queue."""
        name = name_bytes(q)
        queue = self._find(name)
        if queue is None:
            return -1  # the slot is left alone (B16)
        self._slots.pop(name, None)  # freed before looking at the queue (B13)
        item = queue.fetch(timeout=0)
        if item is None:
            return -2
        self._slots[name] = (bytes(item[0]), bytes(item[1]))
        return 1

    def mq_size(self, q: Name) -> int:
        """Item count N >= 1; -1 when empty; -2 when the queue is unknown."""
        name = name_bytes(q)
        queue = self._find(name)
        if queue is None:
            log.error("mqueue %s not found", display(name))
            return -2
        n = queue.size()
        return n if n > 0 else -1

    def mq_pv_free(self, q: Name) -> int:
        """Drop this context's held item for ``q``; always 1 (also for unknown queues)."""
        self._slots.pop(name_bytes(q), None)
        return 1

    # -- pseudo-variables --------------------------------------------------------------------

    def _slot_part(self, q: Name, index: int) -> bytes | None:
        name = name_bytes(q)
        if self._find(name) is None:
            log.error("mqueue not found: %s", display(name))
            return None
        item = self._slots.get(name)
        if item is None or not item[index]:
            return None  # nothing held, or an empty key/value: $null (B18-B20)
        return item[index]

    def pv_mqk(self, q: Name) -> bytes | None:
        """``$mqk(q)``: the held key, or ``None`` (``$null``)."""
        return self._slot_part(q, 0)

    def pv_mqv(self, q: Name) -> bytes | None:
        """``$mqv(q)``: the held value, or ``None`` (``$null``)."""
        return self._slot_part(q, 1)

    def pv_mq_size(self, q: Name) -> int | None:
        """``$mq_size(q)``: the item count (0 when empty), ``None`` for an unknown queue."""
        name = name_bytes(q)
        queue = self._find(name)
        if queue is None:
            log.error("mqueue not found: %s", display(name))
            return None
        return queue.size()

    # -- KEMI flavour (KSR.mqueue.*) --------------------------------------------------------

    def kemi_mq_size(self, q: Name) -> int:
        """``KSR.mqueue.mq_size``: the count, 0 when empty, -1 for an unknown queue."""
        queue = self._find(name_bytes(q))
        return -1 if queue is None else queue.size()

    def mqk_get(self, q: Name) -> bytes | None:
        """``KSR.mqueue.mqk_get``: the held key (``b""`` if empty), ``None`` if none held."""
        item = self._slots.get(name_bytes(q))
        return None if item is None else item[0]

    def mqv_get(self, q: Name) -> bytes | None:
        """``KSR.mqueue.mqv_get``: the held value (``b""`` if empty), ``None`` if none held."""
        item = self._slots.get(name_bytes(q))
        return None if item is None else item[1]

    # -- housekeeping ------------------------------------------------------------------------

    def clear(self) -> None:
        """Drop every held item (what a Kamailio process exiting does)."""
        self._slots.clear()

    def close(self) -> None:
        """Drop held items and close the queues this context attached itself."""
        self.clear()
        if self._own_lookup is not None:
            self._own_lookup.close()

    def __enter__(self) -> ScriptApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pymqueue.kamailio.ScriptApi held={len(self._slots)} at {id(self):#x}>"


_default: ScriptApi | None = None


def default_api() -> ScriptApi:
    """The context the module-level functions use (created on first use: attach by name)."""
    global _default  # noqa: PLW0603
    if _default is None:
        _default = ScriptApi()
    return _default


def set_default_api(api: ScriptApi | None) -> None:
    """Replace the default context (``None``: a fresh one is made on next use)."""
    global _default  # noqa: PLW0603
    _default = api


def mq_add(q: Name, key: Data, value: Data) -> int:
    """:meth:`ScriptApi.mq_add` on the default context."""
    return default_api().mq_add(q, key, value)


def mq_fetch(q: Name) -> int:
    """:meth:`ScriptApi.mq_fetch` on the default context."""
    return default_api().mq_fetch(q)


def mq_size(q: Name) -> int:
    """:meth:`ScriptApi.mq_size` on the default context."""
    return default_api().mq_size(q)


def mq_pv_free(q: Name) -> int:
    """:meth:`ScriptApi.mq_pv_free` on the default context."""
    return default_api().mq_pv_free(q)


def pv_mqk(q: Name) -> bytes | None:
    """``$mqk(q)`` of the default context."""
    return default_api().pv_mqk(q)


def pv_mqv(q: Name) -> bytes | None:
    """``$mqv(q)`` of the default context."""
    return default_api().pv_mqv(q)


def pv_mq_size(q: Name) -> int | None:
    """``$mq_size(q)`` (the default context's lookup)."""
    return default_api().pv_mq_size(q)
