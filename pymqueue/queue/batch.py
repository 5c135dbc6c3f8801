"""``ItemBatch``: the items of one :meth:`Queue.fetch_batch <pymqueue.Queue.fetch_batch>`,
kept in one buffer of their own.

The engine copies a whole batch (keys and values back to back) into one buffer in one call;
the batch cuts items out of it only when asked, with C-level loops (one ``struct`` call cuts
every key and/or value), so a consumer that wants only the values, or only some items, makes
only those objects.

Lifetime: the buffer belongs to the batch alone (a new one per ``fetch_batch``; the queue
never writes into it again), so :meth:`ItemBatch.view` may hand out zero-copy views of it:
they stay valid as long as they live, and keep the buffer alive. Pure Python: no C engine.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any, overload

__all__ = ["ItemBatch"]

_CUTTERS: dict[tuple[bytes, str], struct.Struct] = {}
_CUTTERS_MAX = 64


def _cutter(lens: array[int], kind: str) -> struct.Struct:
    """The ``struct`` that cuts a batch with these lengths (key, value, key, value …):
    ``kind`` "ss" keys and values, "sx" keys only, "xs" values only. Batches of one shape
    (the usual case: same-sized keys and values) reuse it."""
    shape = (lens.tobytes(), kind)
    cut = _CUTTERS.get(shape)
    if cut is None:
        if len(_CUTTERS) >= _CUTTERS_MAX:
            _CUTTERS.clear()
        k, v = kind[0], kind[1]
        fmt = "".join(f"{a}{k}{b}{v}" for a, b in zip(lens[::2], lens[1::2], strict=True))
        cut = _CUTTERS[shape] = struct.Struct(fmt)
    return cut


class ItemBatch(Sequence[tuple[bytes, bytes]]):
    """The ``(key, value)`` items of one fetch, oldest first, in one buffer.

    A sequence: ``len(b)``, ``b[i]`` (a ``(key, value)`` tuple of bytes; a slice gives a
    list), iteration. :meth:`values`, :meth:`keys` and :meth:`items` cut all of them in one
    C-level call each; :meth:`view` hands out one item without copying.
    """

    __slots__ = ("_buf", "_lens", "_n", "_starts")

    def __init__(self, buf: Any, lens: array[int], n: int) -> None:
        """``buf``: a buffer only this batch uses (nobody writes it afterwards) holding
        ``n`` items back to back; ``lens``: their key and value lengths (at least 2n)."""
        self._buf = buf
        self._lens = lens if len(lens) == 2 * n else lens[: 2 * n]
        self._n = n
        self._starts: list[int] | None = None

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def _offsets(self) -> list[int]:
        """Where each key and value starts (and, last, the end of the used bytes)."""
        starts = self._starts
        if starts is None:
            starts = self._starts = list(accumulate(self._lens, initial=0))
        return starts

    def _index(self, i: int) -> int:
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("batch index out of range")
        return i

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, bytes]: ...

    @overload
    def __getitem__(self, i: slice) -> list[tuple[bytes, bytes]]: ...

    def __getitem__(self, i: int | slice) -> tuple[bytes, bytes] | list[tuple[bytes, bytes]]:
        if isinstance(i, slice):
            return self.items()[i]
        j = 2 * self._index(i)
        o = self._offsets()
        buf = self._buf
        return bytes(buf[o[j] : o[j + 1]]), bytes(buf[o[j + 1] : o[j + 2]])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.items())

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every ``(key, value)``, as :meth:`Queue.fetch_many` returns them."""
        if not self._n:
            return []
        parts = iter(_cutter(self._lens, "ss").unpack_from(self._buf))
        return list(zip(parts, parts, strict=True))

    def values(self) -> list[bytes]:
        """Every value (one bytes object per item; the keys are not copied)."""
        if not self._n:
            return []
        return list(_cutter(self._lens, "xs").unpack_from(self._buf))

    def keys(self) -> list[bytes]:
        """Every key (the values are not copied)."""
        if not self._n:
            return []
        return list(_cutter(self._lens, "sx").unpack_from(self._buf))

    def view(self, i: int) -> tuple[memoryview, memoryview]:
        """Item ``i`` as two read-only views of the batch's buffer, without copying (for
        large values). They keep the buffer alive; ``bytes(view)`` copies one out."""
        j = 2 * self._index(i)
        o = self._offsets()
        mv = memoryview(self._buf).toreadonly()
        return mv[o[j] : o[j + 1]], mv[o[j + 1] : o[j + 2]]

    @property
    def nbytes(self) -> int:
        """Key and value bytes of all items together."""
        return self._offsets()[-1]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as its used bytes and lengths (the engine's buffer is not picklable)."""
        return (ItemBatch, (bytes(self._buf[0 : self.nbytes]), self._lens, self._n))

    def __repr__(self) -> str:
        return f"<pymqueue.ItemBatch items={self._n} bytes={self.nbytes} at 0x{id(self):x}>"
