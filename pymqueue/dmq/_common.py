"""What the asyncio adapters (:mod:`~pymqueue.dmq.protocol`, :mod:`~pymqueue.dmq.bus`,
:mod:`~pymqueue.dmq.thread`) share: the ``pymqueue.dmq`` logger, :class:`BusStats` and
:data:`NodeRef` with its parser. Imports only the core, so every adapter module can import it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from pymqueue.dmq.nodes import NodeId
from pymqueue.errors import DmqNodeNotFound, DmqProtocolError

__all__ = ["BusStats", "NodeRef", "log", "node_id"]

log = logging.getLogger("pymqueue.dmq")

NodeRef = NodeId | str
"""A node given as a :class:`~pymqueue.dmq.NodeId` or its URI (``sip:`` optional)."""


@dataclass(slots=True)
class BusStats:
    """Counters of one bus (datagrams in/out, drops, handler failures, load)."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    handler_failures: int = 0
    send_errors: int = 0
    overloaded: int = 0
    """Requests answered ``503`` because ``max_deferred`` async handlers were running."""
    batches: int = 0
    """Socket wake-ups that read datagrams (``received / batches`` = mean batch)."""
    max_batch: int = 0
    """Most datagrams read in one wake-up."""
    rcvbuf: int = 0
    """Receive buffer the kernel granted the socket (bytes; 0 before start)."""


def node_id(ref: NodeRef) -> NodeId:
    """``ref`` as a :class:`~pymqueue.dmq.NodeId`; :class:`DmqNodeNotFound` if unparsable."""
    if isinstance(ref, NodeId):
        return ref
    if not isinstance(ref, str):
        raise DmqNodeNotFound(f"bad node URI {ref!r}: not a str or NodeId")
    return _parse_node(ref)


@functools.lru_cache(maxsize=256)
def _parse_node(ref: str) -> NodeId:
    """Cached: a program names the same few nodes on every request (NodeId is immutable)."""
    try:
        return NodeId.parse(ref if ref.startswith("sip:") else "sip:" + ref)
    except DmqProtocolError as exc:
        raise DmqNodeNotFound(f"bad node URI {ref!r}: {exc}") from None
