"""pymqueue.dmq: Kamailio's DMQ bus (KDMQ over UDP), sans-I/O core.

* :mod:`pymqueue.dmq.message` — the KDMQ codec (strict parser, Kamailio-shaped builder,
  HMAC signing);
* :mod:`pymqueue.dmq.nodes` — node identities, node-list lines and the membership state
  machine of Kamailio 5.6.3;
* :mod:`pymqueue.dmq.transaction` — client retransmission (Timer E, ``fr_timer``) and the
  server reply cache;
* :mod:`pymqueue.dmq.core` — :class:`DmqCore`, which ties them together and is driven by an
  I/O adapter with ``receive_datagram``/``handle_timer``/``datagrams_to_send``/``next_event``.

Nothing in this package opens a socket or reads a clock.
"""

from __future__ import annotations

from pymqueue.dmq.core import (
    MIN_PING_INTERVAL,
    DmqConfig,
    DmqCore,
    Handler,
    IncomingRequest,
    PeerReply,
)
from pymqueue.dmq.events import (
    DatagramDropped,
    DmqEvent,
    HandlerFailed,
    Joined,
    NodeDown,
    NodeStatusChanged,
    NodeUp,
    ReplyReceived,
    TransactionTimedOut,
)
from pymqueue.dmq.message import (
    MAX_DATAGRAM,
    DmqRequest,
    DmqResponse,
    SipUri,
    build_request,
    build_response,
    parse_message,
)
from pymqueue.dmq.nodes import (
    Node,
    NodeId,
    NodeLine,
    NodeList,
    NodeStatus,
    parse_node_list,
)

__all__ = [
    "MAX_DATAGRAM",
    "MIN_PING_INTERVAL",
    "DatagramDropped",
    "DmqConfig",
    "DmqCore",
    "DmqEvent",
    "DmqRequest",
    "DmqResponse",
    "Handler",
    "HandlerFailed",
    "IncomingRequest",
    "Joined",
    "Node",
    "NodeDown",
    "NodeId",
    "NodeLine",
    "NodeList",
    "NodeStatus",
    "NodeStatusChanged",
    "NodeUp",
    "PeerReply",
    "ReplyReceived",
    "SipUri",
    "TransactionTimedOut",
    "build_request",
    "build_response",
    "parse_message",
    "parse_node_list",
]
