"""An instance: the set of queues of one configuration, with their lifecycle.

Kamailio creates its queues when it starts and (for ``dbmode`` 1/3) saves them when it stops.
An :class:`Instance` does the same for pymqueue: :meth:`Instance.start` creates every queue
of the config (or attaches to it when it already exists), loads the ``dbmode`` 1/2 queues
from the database, starts the RPC server and, with a ``[dmq]`` table, joins the DMQ bus
(:class:`~pymqueue.dmq.BusThread`, with ``dmq.list_nodes``/``dmq.remove`` on the RPC
server); :meth:`Instance.stop` leaves the bus, stops the RPC server,
saves the ``dbmode`` 1/3 queues, closes the queues and unlinks the ones it created.
Application processes simply attach to the queues by name (``Queue(name)``).

``pymqueue serve -c FILE`` runs one as a process; in-process it is a context manager::

    with Instance.from_file("pymqueue.toml") as inst:
        inst.queue("jobs").add("k", "v")
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from pymqueue._text import display, to_bytes
from pymqueue.config import InstanceConfig, load_config
from pymqueue.definitions import DbMode, QueueDef
from pymqueue.errors import ConfigError, QueueClosed, QueueNotFound

if TYPE_CHECKING:
    from pymqueue.db import Persistence
    from pymqueue.dmq import BusThread
    from pymqueue.dmq.core import DmqConfig
    from pymqueue.dmq.htable_replica import Htable
    from pymqueue.dmq.mqueue_service import DqueueStats, MqueueService
    from pymqueue.queue.sync import Queue
    from pymqueue.rpc import RpcServer

__all__ = ["Instance"]

log = logging.getLogger("pymqueue.instance")


class Instance:
    """The queues of one :class:`~pymqueue.config.InstanceConfig`, created on :meth:`start`.

    ``queues`` maps each name (text) to its :class:`~pymqueue.Queue` in Kamailio's registry
    order: the most recently *defined* queue first (the order of ``mqueue.get_sizes``).
    ``namespace`` overrides the config's namespace (default: config, else the environment
    variable ``PYMQUEUE_NAMESPACE``, else ``""``).
    """

    config: InstanceConfig
    rpc: RpcServer | None
    dmq: BusThread | None
    """The DMQ bus (when the config has a ``[dmq]`` table), running in its own thread."""

    def __init__(self, config: InstanceConfig, *, namespace: str | None = None) -> None:
        self.config = config
        self.namespace = namespace if namespace is not None else config.namespace
        self.rpc = None
        self.dmq = None
        self.htables: dict[str, Htable] = {}
        """Replicated htables (``[[dmq.htable]]``) by name, while started."""
        self.dqueues: MqueueService | None = None
        """The ``mqueue`` channel (queues with ``dmq = "owner"``), while started."""
        self._queues: dict[bytes, Queue] = {}
        self._registry: dict[str, Queue] = {}
        self._attached: set[bytes] = set()
        self._persistence: Persistence | None = None
        self._started = False
        self._lock = threading.RLock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, namespace: str | None = None) -> Instance:
        """Load a TOML config (:func:`~pymqueue.config.load_config`) into a new instance."""
        return cls(load_config(path), namespace=namespace)

    # -- access ------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def queues(self) -> Mapping[str, Queue]:
        """Name → queue, newest definition first (read-only; empty until started)."""
        return MappingProxyType(self._registry)

    @property
    def attached(self) -> frozenset[bytes]:
        """Raw names of the queues that already existed at start (not unlinked at stop)."""
        return frozenset(self._attached)

    def queue(self, name: str | bytes) -> Queue:
        """The queue defined under ``name`` (exact bytes); :class:`QueueNotFound` otherwise."""
        raw = to_bytes(name)
        q = self._queues.get(raw)
        if q is None:
            text = display(raw)
            if not self._started:
                raise QueueClosed(f"instance is not started (queue {text!r})", queue=text)
            raise QueueNotFound(f"No such queue: {text!r}", queue=text)
        return q

    def definition(self, name: str | bytes) -> QueueDef:
        """The :class:`QueueDef` of ``name``; :class:`QueueNotFound` if not defined."""
        raw = to_bytes(name)
        for qdef in self.config.queues:
            if qdef.name == raw:
                return qdef
        text = display(raw)
        raise QueueNotFound(f"No such queue: {text!r}", queue=text)

    def dqueue_stats(self) -> dict[str, DqueueStats]:
        """Owner, outbox and counters of each ``dmq = "owner"`` queue (empty if none or
        stopped); also the RPC ``dmq.queues`` and ``pymqueue_dqueue_*`` metrics."""
        service = self.dqueues
        return service.stats() if service is not None else {}

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self, qdef: QueueDef) -> tuple[Queue, bool]:
        """Create the queue, or attach when it exists; returns (queue, attached).

        Attaching to a queue whose settings differ from the definition raises
        :class:`~pymqueue.ConfigError` (a segment cannot be resized or re-moded).
        """
        from pymqueue.queue.sync import Queue  # noqa: PLC0415

        q = Queue(
            qdef.name,
            create=None,
            size=qdef.size,
            capacity=qdef.capacity,
            policy=qdef.policy,
            addmode=qdef.addmode,
            namespace=self.namespace,
        )
        return q, not q.created

    def start(self) -> Instance:
        """Create or attach every queue, load from the DB, start the RPC server. Idempotent."""
        with self._lock:
            if self._started:
                return self
            try:
                for qdef in self.config.queues:
                    q, attached = self._open(qdef)
                    self._queues[qdef.name] = q
                    if attached:
                        self._attached.add(qdef.name)
                        if qdef.dmq != "mirror" and q.stats().hold:
                            # left holding by a mirror node that died: nobody would release
                            name = qdef.display_name
                            log.warning("queue %s: left held by a mirror: released", name)
                            q.hold(False)
                for qdef in reversed(self.config.queues):
                    self._registry[qdef.display_name] = self._queues[qdef.name]
                self._started = True
                if any(qdef.dbmode != DbMode.NONE for qdef in self.config.queues):
                    if self.config.db_url is None:
                        raise ConfigError("a queue has a dbmode but no db_url is set")
                    from pymqueue.db import Persistence  # noqa: PLC0415

                    persistence = Persistence(
                        self.config.db_url, sync_interval=self.config.db_sync_interval
                    )
                    persistence.on_start(
                        [
                            (qdef, self._queues[qdef.name], qdef.name in self._attached)
                            for qdef in self.config.queues
                        ]
                    )
                    self._persistence = persistence  # from now on, stopping saves
                if self.config.rpc.enabled:
                    from pymqueue.kamailio.rpc_methods import register_mqueue_rpc  # noqa: PLC0415
                    from pymqueue.rpc import RpcServer  # noqa: PLC0415

                    self.rpc = RpcServer(self.config.rpc)
                    register_mqueue_rpc(self.rpc, self)
                    from pymqueue.metrics import install_metrics  # noqa: PLC0415

                    install_metrics(self)  # GET /metrics, with the `metrics` extra
                    self.rpc.start()
                dmq_config = self.config.dmq_config
                if dmq_config is not None:
                    self._start_dmq(dmq_config)
            except BaseException:
                # like Kamailio (spec T43): what was loaded from the DB is written back
                self._teardown()
                raise
        return self

    def stop(self) -> None:
        """Stop the RPC server, save to the DB, close (and unlink) the queues. Idempotent."""
        with self._lock:
            if not self._started and not self._queues:
                return
            self._teardown()

    def _start_dmq(self, dmq_config: DmqConfig) -> None:
        """Run the DMQ bus in a background thread; add ``dmq.*`` to the RPC server."""
        from pymqueue.dmq import BusThread  # noqa: PLC0415
        from pymqueue.dmq.rpc import register_dmq_rpc  # noqa: PLC0415

        bus = BusThread(config=dmq_config)
        if self.config.htables:  # before start: they ask for their cells when the bus joins
            from pymqueue.dmq.htable_replica import Htable  # noqa: PLC0415

            for hdef in self.config.htables:
                self.htables[hdef.name] = Htable(bus, hdef)
        distributed = [qdef for qdef in self.config.queues if qdef.dmq is not None]
        if distributed:  # before start: it learns who carries what as nodes come up
            from pymqueue.dmq.mqueue_service import DqueueSpec, MqueueService  # noqa: PLC0415

            names = {qdef.name for qdef in distributed}
            self.dqueues = MqueueService(
                bus,
                [
                    DqueueSpec(
                        self._queues[qdef.name],
                        owner=qdef.owner,
                        mode=qdef.dmq or "owner",
                        batch_items=qdef.batch_items,
                    )
                    for qdef in distributed
                ],
                [q for raw, q in self._queues.items() if raw not in names],
            )
        bus.start()
        self.dmq = bus
        if self.dqueues is not None:
            self.dqueues.start()
        if self.rpc is not None:
            register_dmq_rpc(self.rpc, bus)
            from pymqueue.dmq.mqueue_service import register_dqueue_rpc  # noqa: PLC0415

            register_dqueue_rpc(self.rpc, self.dqueue_stats)
            if self.config.htables:
                from pymqueue.kamailio.htable_rpc import register_htable_rpc  # noqa: PLC0415

                register_htable_rpc(self.rpc, lambda: self.htables)

    def _teardown(self) -> None:
        errors: list[BaseException] = []
        if self.dmq is not None:
            try:
                self.dmq.stop()  # leave the bus first (peers see us disabled at once)
            except Exception as exc:
                errors.append(exc)
            self.dmq = None
        if self.dqueues is not None:
            self.dqueues.close()
            self.dqueues = None
        for table in self.htables.values():
            table.close()
        self.htables.clear()
        if self.rpc is not None:
            try:
                self.rpc.stop()
            except Exception as exc:
                errors.append(exc)
            self.rpc = None
        keep = False
        if self._persistence is not None:
            try:
                self._persistence.on_stop(
                    [
                        (qdef, self._queues[qdef.name])
                        for qdef in reversed(self.config.queues)
                        if qdef.name in self._queues
                    ]
                )
            except Exception as exc:
                # the items are still in the queues: leave the segments in place
                log.error("saving failed; the queues are left in shared memory: %s", exc)
                errors.append(exc)
                keep = True
            self._persistence = None
        saved = {
            qdef.name
            for qdef in self.config.queues
            if qdef.dbmode in (DbMode.LOAD_SAVE, DbMode.SAVE)
        }
        for raw, q in self._queues.items():
            try:
                # A queue we created goes with us. One we reattached (left by a previous run
                # that died) goes too once its items are saved: they live in the database
                # now, and the next start must load them rather than reattach an empty queue.
                if not keep and (raw not in self._attached or raw in saved):
                    q.unlink()
                q.close()
            except Exception as exc:
                errors.append(exc)
        self._queues.clear()
        self._registry.clear()
        self._attached.clear()
        self._started = False
        if errors:
            raise errors[0]

    def __enter__(self) -> Instance:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.stop()
            return
        try:
            self.stop()
        except Exception:
            log.exception("error while stopping the instance")  # keep the original exception

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        src = f" {self.config.source!r}" if self.config.source else ""
        return f"<pymqueue.Instance{src} {state} queues={len(self.config.queues)} at {id(self):#x}>"
