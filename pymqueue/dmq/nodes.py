"""DMQ node list: the membership state of Kamailio 5.6.3's ``notification_peer`` (sans-I/O).

A node is named by the literal host, port and transport strings of its URI
(:class:`NodeId`); ``sip:10.0.0.1:5060`` and ``sip:10.0.0.1`` are different nodes, as in
Kamailio. Each node has a :class:`NodeStatus`. The list changes only through

* :meth:`NodeList.merge` — lines received in a notification request or in a 200 to one
  (spec §3.7: add unknown nodes, adopt another status unless the node is ``disabled`` or the
  line has no parameters, ignore the local node);
* :meth:`NodeList.on_final` — the final outcome of a notification *we* sent: 200 makes the
  node ``active`` (and "confirmed": we saw it answer), a timeout (408) makes a
  notification address ``pending``, deletes a node that was ``disabled`` when the request
  left, and makes any other node ``disabled``;
* :meth:`NodeList.remove` (``dmq.remove``).

Every method returns the :class:`NodeChange` list it caused, so the caller can emit
node-up/node-down events and decide on a re-broadcast.

Node lines are parsed by :func:`parse_node_list` (strict: any syntax error, blank line or
unknown status raises :class:`~pymqueue.errors.DmqProtocolError`; the last line may lack its
line end, LF-only is accepted) and written by :meth:`NodeList.body`, which only emits the safe
forms (spec §10.7): CRLF after every line, ``status=active`` or ``status=disabled``, IP
literals, and besides the local node only nodes that are active *and* were seen answering.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pymqueue.dmq.message import SipUri, parse_uri
from pymqueue.errors import DmqProtocolError

__all__ = [
    "MAX_NODE_LINES",
    "Node",
    "NodeChange",
    "NodeId",
    "NodeLine",
    "NodeList",
    "NodeStatus",
    "parse_node_line",
    "parse_node_list",
]

MAX_NODE_LINES = 1024
"""Most lines accepted in one node-list body."""


class NodeStatus(enum.Enum):
    """Kamailio 5.6.3's node states (the names are the wire values)."""

    ACTIVE = "active"
    PENDING = "pending"
    DISABLED = "disabled"
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value


_STATUS_BY_NAME = {s.value: s for s in NodeStatus}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """Identity of a node: literal host, literal port (``""`` if none) and transport."""

    host: str
    port: str = ""
    transport: str | None = None

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse ``sip:HOST[:PORT][;transport=T]`` (no user part, IP literal host)."""
        uri = parse_uri(text)
        if uri.user is not None:
            raise DmqProtocolError(f"a node URI has no user part: {text[:80]!r}")
        node = cls.from_uri(uri)
        if not node.is_ip:
            raise DmqProtocolError(f"node host must be an IP literal: {text[:80]!r}")
        return node

    @classmethod
    def from_uri(cls, uri: SipUri) -> NodeId:
        if cls is NodeId:
            return _node_of(uri.host, uri.port, uri.transport)
        return cls(host=uri.host, port=uri.port, transport=uri.transport)

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.host)

    @property
    def uri(self) -> SipUri:
        return _uri_of(self.host, self.port, self.transport)

    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)`` to send UDP datagrams to."""
        return _address_of(self.host, self.port, self.transport)

    def __str__(self) -> str:
        return str(self.uri)


# a bus names the same few nodes in every message: both are immutable, so cache them
@functools.lru_cache(maxsize=1024)
def _node_of(host: str, port: str, transport: str | None) -> NodeId:
    return NodeId(host=host, port=port, transport=transport)


@functools.lru_cache(maxsize=1024)
def _uri_of(host: str, port: str, transport: str | None) -> SipUri:
    params = (("transport", transport),) if transport is not None else ()
    return SipUri(host=host, port=port, params=params)


@functools.lru_cache(maxsize=1024)
def _address_of(host: str, port: str, transport: str | None) -> tuple[str, int]:
    return _uri_of(host, port, transport).address


@dataclass(frozen=True, slots=True)
class NodeLine:
    """One parsed node-list line. ``status`` is None when the line has no ``status``."""

    node: NodeId
    status: NodeStatus | None
    has_params: bool


def parse_node_line(line: str) -> NodeLine:
    """Parse ``sip:HOST:PORT[;params]`` (``status`` one of the four names, if present)."""
    try:
        uri = parse_uri(line)
    except DmqProtocolError as exc:
        raise DmqProtocolError(f"bad node line {line[:80]!r}: {exc}") from None
    if uri.user is not None:
        raise DmqProtocolError(f"node line with a user part: {line[:80]!r}")
    status: NodeStatus | None = None
    seen = False
    for name, value in uri.params:
        if name != "status":
            continue
        if seen:
            raise DmqProtocolError(f"node line with two status parameters: {line[:80]!r}")
        seen = True
        if value is None or value not in _STATUS_BY_NAME:
            raise DmqProtocolError(f"unknown node status in {line[:80]!r}")
        status = _STATUS_BY_NAME[value]
    return NodeLine(NodeId.from_uri(uri), status, bool(uri.params))


def parse_node_list(body: bytes) -> list[NodeLine]:
    """Parse a ``text/plain`` node-list body; raise :class:`DmqProtocolError` if malformed.

    An empty body is an empty list. Lines end with CRLF or LF; trailing NULs are ignored (as
    Kamailio does); the last line may lack its terminator (Kamailio would cut a character
    and wedge, we read it whole). A blank line, a non-ASCII byte or an unknown status
    rejects the whole body.
    """
    try:
        text = bytes(body).rstrip(b"\x00").decode("ascii")
    except (UnicodeDecodeError, TypeError, ValueError) as exc:
        raise DmqProtocolError("node list is not ASCII") from exc
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_NODE_LINES:
        raise DmqProtocolError(f"node list of more than {MAX_NODE_LINES} lines")
    out: list[NodeLine] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            raise DmqProtocolError("blank line in a node list")
        out.append(parse_node_line(line))
    return out


@dataclass(slots=True)
class Node:
    """A node as this process knows it."""

    id: NodeId
    status: NodeStatus
    local: bool = False
    notification_address: bool = False
    confirmed: bool = False
    """True once the node answered 200 to one of our notifications, until it times out."""


@dataclass(frozen=True, slots=True)
class NodeChange:
    """``old``/``new`` are None when the node was added/deleted."""

    node: NodeId
    old: NodeStatus | None
    new: NodeStatus | None


class NodeList:
    """The node list of one DMQ instance, including itself (newest first, like Kamailio)."""

    def __init__(
        self,
        local: NodeId,
        notification_addresses: Iterable[NodeId] = (),
        *,
        max_nodes: int = 1024,
        accept: Callable[[NodeId], bool] | None = None,
    ) -> None:
        """``max_nodes`` caps the list (lines naming new nodes beyond it are skipped);
        ``accept`` filters nodes learnt from lines (e.g. the core's allow-list), so a
        forged list cannot make us ping arbitrary addresses."""
        self.local = local
        self.notification_addresses = frozenset(notification_addresses)
        self.max_nodes = max_nodes
        self.accept = accept
        self._nodes: dict[NodeId, Node] = {local: Node(local, NodeStatus.ACTIVE, local=True)}

    # -- reading
    def __iter__(self) -> Iterator[Node]:
        return iter(reversed(list(self._nodes.values())))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def get(self, node: NodeId) -> Node | None:
        return self._nodes.get(node)

    def status(self, node: NodeId) -> NodeStatus | None:
        entry = self._nodes.get(node)
        return entry.status if entry is not None else None

    def peers(self, *, active_only: bool = False) -> list[NodeId]:
        """Non-local nodes (newest first), optionally only the ``active`` ones."""
        return [
            n.id for n in self if not n.local and (not active_only or n.status is NodeStatus.ACTIVE)
        ]

    def advertised(self, local_status: NodeStatus = NodeStatus.ACTIVE) -> list[NodeLine]:
        """What we put in bodies, in list order: ourselves and the confirmed active nodes.

        "Confirmed" means seen alive by us (:meth:`mark_seen`, :meth:`on_final` with 200), so
        a dead node that other nodes still gossip about is not kept alive by us (spec §3.8).
        """
        out: list[NodeLine] = []
        for n in self:
            if n.local:
                out.append(NodeLine(n.id, local_status, True))
            elif n.status is NodeStatus.ACTIVE and n.confirmed and n.id.is_ip:
                out.append(NodeLine(n.id, NodeStatus.ACTIVE, True))
        return out

    def mark_seen(self, node: NodeId) -> None:
        """The node itself just sent us a request from its own address: it is alive."""
        entry = self._nodes.get(node)
        if entry is not None and not entry.local:
            entry.confirmed = True

    def body(self, local_status: NodeStatus = NodeStatus.ACTIVE) -> bytes:
        """The safe ``text/plain`` body of :meth:`advertised` (``active``/``disabled``)."""
        if local_status not in (NodeStatus.ACTIVE, NodeStatus.DISABLED):
            raise ValueError("only active or disabled may be advertised")
        return "".join(
            f"{line.node};status={line.status}\r\n" for line in self.advertised(local_status)
        ).encode("ascii")

    # -- changing
    def _set(self, node: Node, status: NodeStatus, out: list[NodeChange]) -> None:
        if node.status is not status:
            out.append(NodeChange(node.id, node.status, status))
            node.status = status

    def add_notification_addresses(self) -> list[NodeChange]:
        """Start-up: put every configured notification address in the list as ``pending``."""
        out: list[NodeChange] = []
        for node in sorted(self.notification_addresses):
            if node not in self._nodes:
                self._nodes[node] = Node(node, NodeStatus.PENDING, notification_address=True)
                out.append(NodeChange(node, None, NodeStatus.PENDING))
        return out

    def merge(self, lines: Iterable[NodeLine]) -> list[NodeChange]:
        """Merge received lines (spec §3.7). Lines with a host name are skipped (no DNS),
        and so are new nodes refused by ``accept`` or beyond ``max_nodes``."""
        out: list[NodeChange] = []
        for line in lines:
            if not line.node.is_ip:
                continue
            status = line.status or NodeStatus.PENDING
            entry = self._nodes.get(line.node)
            if entry is None:
                if len(self._nodes) >= self.max_nodes or (
                    self.accept is not None and not self.accept(line.node)
                ):
                    continue
                self._nodes[line.node] = Node(
                    line.node,
                    status,
                    notification_address=line.node in self.notification_addresses,
                )
                out.append(NodeChange(line.node, None, status))
            elif entry.local or entry.status is NodeStatus.DISABLED or not line.has_params:
                continue
            else:
                self._set(entry, status, out)
        return out

    def on_final(
        self, node: NodeId, code: int, status_at_send: NodeStatus | None
    ) -> list[NodeChange]:
        """Apply the final outcome of one of our notifications (408 = timeout)."""
        out: list[NodeChange] = []
        entry = self._nodes.get(node)
        if entry is None or entry.local:
            return out
        if code == 200:
            entry.confirmed = True
            self._set(entry, NodeStatus.ACTIVE, out)
        elif code == 408:
            entry.confirmed = False
            if entry.notification_address:
                self._set(entry, NodeStatus.PENDING, out)
            elif status_at_send is NodeStatus.DISABLED:
                del self._nodes[node]
                out.append(NodeChange(node, entry.status, None))
            else:
                self._set(entry, NodeStatus.DISABLED, out)
        return out

    def remove(self, node: NodeId) -> list[NodeChange]:
        """Delete a non-local node (the local one is kept, as by ``dmq.remove``)."""
        entry = self._nodes.get(node)
        if entry is None or entry.local:
            return []
        del self._nodes[node]
        return [NodeChange(node, entry.status, None)]
