"""Events produced by :class:`pymqueue.dmq.DmqCore` (fetch them with ``next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass

from pymqueue.dmq.nodes import NodeId, NodeStatus
from pymqueue.errors import DmqTimeout

__all__ = [
    "DatagramDropped",
    "DmqEvent",
    "HandlerFailed",
    "Joined",
    "NodeDown",
    "NodeStatusChanged",
    "NodeUp",
    "ReplyReceived",
    "TransactionTimedOut",
]


@dataclass(frozen=True, slots=True)
class DmqEvent:
    """Base class of every event."""


@dataclass(frozen=True, slots=True)
class NodeStatusChanged(DmqEvent):
    """Any change of the node list; ``old``/``new`` None = added/deleted."""

    node: NodeId
    old: NodeStatus | None
    new: NodeStatus | None


@dataclass(frozen=True, slots=True)
class NodeUp(DmqEvent):
    """A node became ``active`` (broadcasts now reach it)."""

    node: NodeId


@dataclass(frozen=True, slots=True)
class NodeDown(DmqEvent):
    """An ``active`` node stopped being active; ``status`` None means it was deleted."""

    node: NodeId
    status: NodeStatus | None


@dataclass(frozen=True, slots=True)
class Joined(DmqEvent):
    """First notification exchange done (Kamailio runs its channels' init hooks here)."""


@dataclass(frozen=True, slots=True)
class ReplyReceived(DmqEvent):
    """Final reply to a request started by ``send``/``broadcast``."""

    transaction_id: int
    node: NodeId
    channel: str
    code: int
    reason: str
    body: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class TransactionTimedOut(DmqEvent):
    """No final reply to a ``send``/``broadcast`` request within ``fr_timer``."""

    transaction_id: int
    node: NodeId
    channel: str

    def exception(self) -> DmqTimeout:
        return DmqTimeout(
            f"no reply from {self.node} on channel {self.channel!r} "
            f"(transaction {self.transaction_id})"
        )


@dataclass(frozen=True, slots=True)
class DatagramDropped(DmqEvent):
    """A datagram was ignored (not allowed, bad signature, malformed…); for logging."""

    address: tuple[str, int]
    reason: str


@dataclass(frozen=True, slots=True)
class HandlerFailed(DmqEvent):
    """A channel handler raised or returned an unusable reply; the sender got a 500."""

    channel: str
    error: BaseException
