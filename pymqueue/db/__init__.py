"""Database persistence of queues, compatible with Kamailio's mqueue tables.

See :class:`Persistence` and ``docs/persistence.md``.
"""

from __future__ import annotations

from pymqueue.db.persistence import Persistence, SaveReport
from pymqueue.db.rejects import RejectedItem, read_rejected
from pymqueue.db.url import DbUrl, parse_db_url

__all__ = ["DbUrl", "Persistence", "RejectedItem", "SaveReport", "parse_db_url", "read_rejected"]
