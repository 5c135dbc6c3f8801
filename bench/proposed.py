"""DIAGNOSTIC ONLY: a leaner ``add``/``fetch`` with the facade's semantics, to size the
speed-ups suggested for ``pymqueue/_queue.py`` (which this file does not change).

Differences from ``Queue.add`` / ``Queue.fetch`` (behaviour unchanged):

* ``lib.pmq_add`` / ``lib.pmq_fetch`` and the codes bound at module level (no ``B.lib``,
  ``B.DUPLICATE`` lookups); the handle read inline instead of calling ``self._h()``;
* ``type(x) is bytes`` inline before falling back to ``_b``;
* no ``self.policy != Overflow.BLOCK`` on the hot path (an Enum class attribute lookup plus
  an IntEnum comparison, about 130 ns): try once with timeout 0, and only on ``E_FULL`` /
  ``E_EMPTY`` enter the wait loop (the loop builds a lambda and reads the clock; the shipped
  code pays that on EVERY blocking call: every ``add`` of a block-policy queue and every
  ``fetch(timeout=None)``);
* the output lengths live in an ``array('I')`` shared with C (``ffi.from_buffer``), so
  ``k, v = buf.arr`` replaces two cdata indexings.
"""

from __future__ import annotations

from array import array
from typing import Any

from pymqueue._pmq_c import ffi, lib

from pymqueue import Overflow, Queue
from pymqueue._queue import _b  # the facade's own conversion
from pymqueue.errors import QueueClosed

_add = lib.pmq_add
_fetch = lib.pmq_fetch
_DUP = lib.PMQ_DUPLICATE
_FULL = lib.PMQ_E_FULL
_EMPTY = lib.PMQ_E_EMPTY
_BLOCK = Overflow.BLOCK
_BUF_SIZE = 64 * 1024


class _LBuf:
    __slots__ = ("arr", "cdata", "lens", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.cdata = ffi.new("uint8_t[]", size)
        self.view = ffi.buffer(self.cdata)
        self.arr = array("I", [0, 0])
        self.lens = ffi.from_buffer("uint32_t[]", self.arr)


class LeanQueue(Queue):
    __slots__ = ()

    def add(self, key: Any, value: Any, timeout: float | None = None) -> bool:
        k = key if type(key) is bytes else _b(key)
        v = value if type(value) is bytes else _b(value)
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        rc = _add(handle, k, len(k), v, len(v), 0)
        if rc == 0:
            return True
        if rc == _DUP:
            return False
        if rc == _FULL and timeout != 0 and self.policy is _BLOCK:
            rc = self._wait_loop(lambda ns: _add(handle, k, len(k), v, len(v), ns), timeout,
                                 _FULL)
            if rc == 0:
                return True
        return bool(self._fail(rc, len(k), len(v)))

    def fetch(self, timeout: float | None = 0) -> tuple[bytes, bytes] | None:
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"queue {self._name!r} is closed", self._name)
        bufs = self._bufs
        buf = bufs.pop() if bufs else _LBuf(_BUF_SIZE)
        rc = _fetch(handle, buf.cdata, buf.size, buf.lens, 0)
        if rc == 0:
            k, v = buf.arr
            view = buf.view
            item = (view[0:k], view[k : k + v])
            bufs.append(buf)
            return item
        bufs.append(buf)  # type: ignore[arg-type]
        if rc == _EMPTY and timeout == 0:
            return None
        return super().fetch(timeout)  # waiting, a bigger buffer, or an error: shipped path
