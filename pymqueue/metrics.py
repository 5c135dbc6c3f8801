"""Prometheus metrics of an :class:`~pymqueue.instance.Instance`, served by ``pymqueue serve``
on its RPC HTTP port at ``GET /metrics`` (``docs/operations.md`` lists every metric).

Needs ``prometheus_client`` (the ``metrics`` extra); without it the instance runs without
``/metrics``. Queue and DMQ values are read when Prometheus scrapes (a queue's
:meth:`~pymqueue.Queue.stats`, the bus's node table and :class:`~pymqueue.dmq.BusStats`), so
they are exactly what ``stats()`` says at that moment; the RPC request counter is kept here.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from pymqueue.queue.types import QueueStats

__all__ = ["METRICS_PATH", "available", "install_metrics"]

log = logging.getLogger("pymqueue.metrics")

METRICS_PATH = "/metrics"
PREFIX = "pymqueue"

# QueueStats field -> (metric name, help); counters get "_total" from prometheus_client.
_QUEUE_GAUGES = {
    "items": ("queue_items", "Items in the queue."),
    "bytes": ("queue_bytes", "Bytes of the items in the queue (keys and values)."),
    "capacity": ("queue_capacity_bytes", "Byte capacity of the queue's ring."),
    "max_items": ("queue_max_items", "Item limit of the queue (Kamailio's size; 0: none)."),
    "high_water": ("queue_high_water_items", "Most items the queue has held at once."),
}
_QUEUE_COUNTERS = {
    "added": ("queue_added", "Items added to the queue."),
    "fetched": ("queue_fetched", "Items fetched from the queue."),
    "dropped": ("queue_dropped", "Oldest items dropped to make room (overflow)."),
    "rejected": ("queue_rejected", "Adds refused because the queue was full."),
    "replaced": ("queue_replaced", "Items replaced by a newer one with the same key (addmode 2)."),
    "recoveries": ("queue_recoveries", "Times the queue's lock was recovered from a dead holder."),
}
_BUS_COUNTERS = {
    "received": ("dmq_messages_received", "KDMQ datagrams received."),
    "sent": ("dmq_messages_sent", "KDMQ datagrams sent."),
    "dropped": ("dmq_messages_dropped", "KDMQ messages dropped (no handler, full stream)."),
    "handler_failures": ("dmq_handler_failures", "KDMQ handlers that raised."),
    "send_errors": ("dmq_send_errors", "KDMQ datagrams that could not be sent."),
    "overloaded": ("dmq_overloaded", "KDMQ requests answered 503: max_deferred handlers running."),
    "batches": ("dmq_read_batches", "Socket wake-ups that read KDMQ datagrams."),
}
# bus load (docs/dmq.md, "Under load"): (name, help, read from the BusThread)
_BUS_LOAD: dict[str, tuple[str, str, Callable[[Any], int]]] = {
    "pending": ("dmq_pending_transactions", "Our KDMQ requests waiting for a final reply.",
                lambda b: b.bus.core.pending_transactions),
    "deferred": ("dmq_deferred_requests", "Received requests whose handler answers later.",
                 lambda b: b.bus.core.deferred_requests),
    "max_deferred": ("dmq_max_deferred", "Limit on deferred requests and async handlers.",
                     lambda b: b.bus.config.max_deferred),
    "cache": ("dmq_reply_cache_entries", "Replies kept for retransmitted requests.",
              lambda b: b.bus.core.reply_cache_entries),
    "cache_size": ("dmq_reply_cache_max_entries", "Limit on the reply cache (reply_cache_size).",
                   lambda b: b.bus.config.reply_cache_size),
    "max_batch": ("dmq_max_batch", "Most KDMQ datagrams read in one socket wake-up.",
                  lambda b: b.bus.stats.max_batch),
    "rcvbuf": ("dmq_receive_buffer_bytes", "Receive buffer the kernel granted the bus socket.",
               lambda b: b.bus.stats.rcvbuf),
}  # fmt: skip
_BUS_LOAD_COUNTERS: dict[str, tuple[str, str, Callable[[Any], int]]] = {
    "evicted": ("dmq_reply_cache_evicted", "Replies pushed out of the cache before their time.",
                lambda b: b.bus.core.reply_cache_evicted),
    "deferred_dropped": ("dmq_deferred_dropped",
                         "Deferred requests forgotten unanswered (max_deferred waiting).",
                         lambda b: b.bus.core.deferred_dropped),
}  # fmt: skip


_DQUEUE_COUNTERS = {
    "forwarded": ("dqueue_forwarded", "Items sent to the owner (each attempt)."),
    "acknowledged": ("dqueue_acknowledged", "Items the owner acknowledged (left the outbox)."),
    "resent": ("dqueue_resent", "Batches sent again after a timeout or an error."),
    "received": ("dqueue_received", "Items received from other nodes."),
    "applied": ("dqueue_applied", "Items received and added to the local queue."),
    "duplicates": ("dqueue_duplicates", "Items received and dropped as already applied."),
    "refused": ("dqueue_refused", "Items the owner refused as malformed (400), dropped here."),
    "missed": ("dqueue_missed", "Mirror deliveries given up (node down or kept failing)."),
}


class _Stats(Protocol):
    def stats(self) -> QueueStats: ...


class Instance(Protocol):
    """What is read of an :class:`~pymqueue.instance.Instance` (which imports this module)."""

    @property
    def queues(self) -> Mapping[str, _Stats]: ...

    dmq: Any  # BusThread | None
    rpc: Any  # RpcServer | None


def available() -> bool:
    """Whether ``prometheus_client`` is installed (the ``metrics`` extra)."""
    return importlib.util.find_spec("prometheus_client") is not None


class _InstanceCollector:
    """Reads the instance's queues and DMQ bus at each scrape."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def describe(self) -> list[Any]:
        return []  # values come and go with the queues: no fixed description

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        gauges = {
            f: GaugeMetricFamily(f"{PREFIX}_{n}", h, labels=["queue"])
            for f, (n, h) in _QUEUE_GAUGES.items()
        }
        counters = {
            f: CounterMetricFamily(f"{PREFIX}_{n}", h, labels=["queue"])
            for f, (n, h) in _QUEUE_COUNTERS.items()
        }
        waiters = GaugeMetricFamily(
            f"{PREFIX}_queue_waiters",
            "Processes asleep in a wait on the queue: for an item (get) or for room (put).",
            labels=["queue", "side"],
        )
        for name, q in list(self.instance.queues.items()):
            try:
                s = q.stats()
            except Exception as exc:  # a queue closed by a concurrent stop: skip it
                log.debug("metrics: queue %r skipped: %s", name, exc)
                continue
            for f, g in gauges.items():
                g.add_metric([name], getattr(s, f))
            for f, c in counters.items():
                c.add_metric([name], getattr(s, f))
            waiters.add_metric([name, "get"], s.getters_waiting)
            waiters.add_metric([name, "put"], s.putters_waiting)
        yield from gauges.values()
        yield from counters.values()
        yield waiters
        yield from self._dmq()
        yield from self._dqueues()

    def _dqueues(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        read = getattr(self.instance, "dqueue_stats", None)  # Instance.dqueue_stats
        stats = read() if read is not None else {}
        if not stats:
            return
        outbox = GaugeMetricFamily(
            f"{PREFIX}_dqueue_outbox_items",
            "Items waiting in this node's outbox (0 on the owner); mirror: local adds held.",
            labels=["queue"],
        )
        owner = GaugeMetricFamily(
            f"{PREFIX}_dqueue_owner",
            "1 for the node this node sees as the queue's owner.",
            labels=["queue", "owner", "local"],
        )
        carriers = GaugeMetricFamily(
            f"{PREFIX}_dqueue_carriers",
            "Active nodes known to carry the queue (a mirror's targets).",
            labels=["queue"],
        )
        counters = {
            f: CounterMetricFamily(f"{PREFIX}_{n}", h, labels=["queue"])
            for f, (n, h) in _DQUEUE_COUNTERS.items()
        }
        for name, s in stats.items():
            outbox.add_metric([name], s.outbox)
            carriers.add_metric([name], s.carriers)
            if s.mode != "mirror":  # a mirror has no owner
                owner.add_metric([name, s.owner or "", "true" if s.is_owner else "false"], 1)
            for f, c in counters.items():
                c.add_metric([name], getattr(s, f))
        yield outbox
        yield carriers
        yield owner
        yield from counters.values()

    def _dmq(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        bus = self.instance.dmq
        if bus is None:
            return
        from pymqueue.dmq.nodes import NodeStatus  # noqa: PLC0415

        try:
            nodes = bus.nodes()
        except Exception as exc:  # the bus is stopping
            log.debug("metrics: DMQ nodes skipped: %s", exc)
            return
        state = GaugeMetricFamily(
            f"{PREFIX}_dmq_node_status",
            "1 for the state a DMQ node is in (Kamailio's active/pending/disabled/timeout).",
            labels=["node", "status", "local"],
        )
        counts = GaugeMetricFamily(
            f"{PREFIX}_dmq_nodes", "DMQ nodes known, by state.", labels=["status"]
        )
        by_status = dict.fromkeys((st.value for st in NodeStatus), 0)
        for n in nodes:
            for st in NodeStatus:
                state.add_metric(
                    [str(n.node), st.value, "true" if n.local else "false"],
                    1 if n.status is st else 0,
                )
            by_status[n.status.value] += 1
        for st_name, count in by_status.items():
            counts.add_metric([st_name], count)
        yield state
        yield counts
        stats = bus.bus.stats
        for field, (name, help_text) in _BUS_COUNTERS.items():
            c = CounterMetricFamily(f"{PREFIX}_{name}", help_text)
            c.add_metric([], getattr(stats, field))
            yield c
        # read from this thread while the bus's loop runs: each is one int or len() (atomic)
        for name, help_text, read in _BUS_LOAD.values():
            g = GaugeMetricFamily(f"{PREFIX}_{name}", help_text)
            g.add_metric([], read(bus))
            yield g
        for name, help_text, read in _BUS_LOAD_COUNTERS.values():
            c = CounterMetricFamily(f"{PREFIX}_{name}", help_text)
            c.add_metric([], read(bus))
            yield c


def install_metrics(instance: Instance) -> bool:
    """Serve the instance's metrics at ``GET /metrics`` on its RPC HTTP port and count its
    RPC requests. Returns False (and does nothing) without ``prometheus_client`` or RPC."""
    rpc = instance.rpc
    if rpc is None or not available():
        return False
    from prometheus_client import (  # noqa: PLC0415
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        generate_latest,
    )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_InstanceCollector(instance))
    requests = Counter(
        f"{PREFIX}_rpc_requests",
        "JSON-RPC requests answered, by method and outcome (ok or error).",
        ["method", "outcome"],
        registry=registry,
    )

    def observe(method: str, outcome: str) -> None:
        requests.labels(method=method, outcome=outcome).inc()

    def route() -> tuple[str, bytes]:
        return CONTENT_TYPE_LATEST, generate_latest(registry)

    rpc.add_observer(observe)
    rpc.add_get_route(METRICS_PATH, route)
    return True
