"""Kamailio 5.6.3's two DMQ management RPCs (spec §6) for a running bus.

* ``dmq.list_nodes`` → one struct per node, newest first:
  ``{"host", "port" (string), "proto" ("*" without transport), "resolved_ip", "status",
  "last_notification" (always 0, as in 5.6.3), "local" (0/1)}``;
* ``dmq.remove sip:HOST:PORT`` → ``"Ok. DMQ node removed."`` (also for an unknown node or the
  local one, which is kept); an unparsable URI → ``500 Failure``; no parameter →
  ``500 Invalid Parameters`` — Kamailio's answers, measured on 5.6.3.
"""

from __future__ import annotations

from typing import Any, Protocol

from pymqueue.dmq.message import parse_uri
from pymqueue.dmq.nodes import NodeId
from pymqueue.errors import DmqProtocolError, RpcError

__all__ = ["list_nodes_result", "register_dmq_rpc"]

REMOVED = "Ok. DMQ node removed."


class _NodeInfoLike(Protocol):
    @property
    def node(self) -> NodeId: ...
    @property
    def status(self) -> Any: ...
    @property
    def local(self) -> bool: ...


class _BusLike(Protocol):
    def nodes(self) -> list[Any]: ...
    def remove_node(self, node: NodeId | str) -> None: ...


class _RpcLike(Protocol):
    def register(self, name: str, func: Any, help: str) -> None: ...


def list_nodes_result(nodes: list[Any]) -> list[dict[str, Any]]:
    """Kamailio's ``dmq.list_nodes`` structs for :meth:`Bus.nodes` entries."""
    out = []
    for info in nodes:
        node: NodeId = info.node
        host = node.host
        out.append(
            {
                "host": host,
                "port": node.port,
                "proto": node.transport or "*",
                "resolved_ip": host.strip("[]"),
                "status": str(info.status),
                "last_notification": 0,
                "local": 1 if info.local else 0,
            }
        )
    return out


def register_dmq_rpc(rpc: _RpcLike, bus: _BusLike) -> None:
    """Add ``dmq.list_nodes`` and ``dmq.remove`` to an :class:`~pymqueue.rpc.RpcServer`."""

    def list_nodes(*_: Any) -> list[dict[str, Any]]:
        return list_nodes_result(bus.nodes())

    def remove(*args: Any) -> str:
        if not args or not isinstance(args[0], str):
            raise RpcError(500, "Invalid Parameters")
        try:
            uri = parse_uri(args[0])
        except DmqProtocolError:
            raise RpcError(500, "Failure") from None
        if uri.user is not None:
            raise RpcError(500, "Failure")
        bus.remove_node(NodeId.from_uri(uri))
        return REMOVED

    rpc.register("dmq.list_nodes", list_nodes, "List DMQ nodes")
    rpc.register("dmq.remove", remove, "Remove a DMQ node")
