"""What a queue *is*: a :class:`QueueDef` (name, size, dbmode, addmode and pymqueue's extras)
and its limits.

One floor below both readers of definitions, the TOML configuration
(:mod:`pymqueue.config`) and Kamailio's module parameters
(:mod:`pymqueue.kamailio.modparam`). Pure Python: it never loads the C engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pymqueue._text import display
from pymqueue.queue.types import AddMode, Overflow

__all__ = ["INT_MAX", "DbMode", "QueueDef"]

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
    as the default. ``dmq``/``owner`` make it a queue across hosts (``dmq = "owner"``: an
    owner node per queue, outboxes elsewhere; ``owner``: the preferred owner's node URI;
    ``"mirror"``: every add reaches every node; ``batch_items``: most items per message), see
    :mod:`pymqueue.dmq.mqueue_service`.
    """

    name: bytes
    size: int = 0
    dbmode: DbMode = DbMode.NONE
    addmode: AddMode = AddMode.APPEND
    policy: Overflow = Overflow.DROP_OLDEST
    capacity: int | None = None
    dmq: str | None = None
    owner: str | None = None
    batch_items: int | None = None

    @property
    def display_name(self) -> str:
        """The name as text (invalid UTF-8 replaced), for messages and listings."""
        return display(self.name)
