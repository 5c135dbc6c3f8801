"""The shared-memory queue.

* :mod:`~pymqueue.queue.types`: the settings and snapshots, pure Python (no C engine);
* :mod:`~pymqueue.queue._engine`: the binding tier, the only importer of the C library;
* :mod:`~pymqueue.queue.sync`: :class:`Queue`, :func:`list_queues`, :func:`unlink`;
* :mod:`~pymqueue.queue.aio`: :class:`AsyncQueue`.

This package imports nothing itself, so ``pymqueue.queue.types`` loads without the engine;
``pymqueue.Queue`` and the other public names are re-exported by :mod:`pymqueue`.
"""
