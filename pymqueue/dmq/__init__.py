"""pymqueue.dmq: Kamailio's DMQ bus (KDMQ over UDP): a sans-I/O core and its asyncio adapters.

The core:

* :mod:`pymqueue.dmq.message` — the KDMQ codec (strict parser, Kamailio-shaped builder,
  HMAC signing);
* :mod:`pymqueue.dmq.nodes` — node identities, node-list lines and the membership state
  machine of Kamailio 5.6.3;
* :mod:`pymqueue.dmq.transaction` — client retransmission (Timer E, ``fr_timer``) and the
  server reply cache;
* :mod:`pymqueue.dmq.events` — what the core reports to its adapter;
* :mod:`pymqueue.dmq.core` — :class:`DmqCore`, which ties them together and is driven by an
  I/O adapter with ``receive_datagram``/``handle_timer``/``datagrams_to_send``/``next_event``.

Nothing in the core modules opens a socket or reads a clock: the time is passed in. The
asyncio adapters do (as aioquic's ``asyncio/`` package beside its sans-I/O ``quic/``):

* :mod:`pymqueue.dmq.protocol` — :class:`DmqProtocol`, the ``asyncio.DatagramProtocol`` that
  owns the UDP socket and the core's timer;
* :mod:`pymqueue.dmq.bus` — :class:`Bus` (the asyncio facade), :class:`EventStream`,
  :class:`NodeInfo`, :func:`to_reply`;
* :mod:`pymqueue.dmq.thread` — :class:`BusThread`, a :class:`Bus` in a background thread;
* :mod:`pymqueue.dmq._common` — what they share (:class:`BusStats`, ``NodeRef``, the logger).

:mod:`pymqueue.dmq.rpc` registers Kamailio's ``dmq.*`` management RPCs for a running bus.
Importing this package only defines classes: a socket is bound by :meth:`Bus.start` (or
:meth:`BusThread.start`), not before.
"""

from __future__ import annotations

from pymqueue.dmq._common import BusStats
from pymqueue.dmq.bus import Bus, EventStream, NodeInfo, to_reply
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
from pymqueue.dmq.protocol import DmqProtocol
from pymqueue.dmq.thread import BusThread

__all__ = [
    "MAX_DATAGRAM",
    "MIN_PING_INTERVAL",
    "Bus",
    "BusStats",
    "BusThread",
    "DatagramDropped",
    "DmqConfig",
    "DmqCore",
    "DmqEvent",
    "DmqProtocol",
    "DmqRequest",
    "DmqResponse",
    "EventStream",
    "Handler",
    "HandlerFailed",
    "IncomingRequest",
    "Joined",
    "Node",
    "NodeDown",
    "NodeId",
    "NodeInfo",
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
    "to_reply",
]
