"""A :class:`~pymqueue.dmq.Bus` for code that is not async: :class:`BusThread`.

:class:`BusThread` runs a :class:`~pymqueue.dmq.Bus` in a background thread with its own event
loop and offers blocking ``broadcast``/``send``/``nodes``/``stop``; its handlers and listeners
run in that thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from pymqueue.dmq._common import NodeRef, log
from pymqueue.dmq.bus import Bus, BusHandler, NodeInfo, Result
from pymqueue.dmq.core import PeerReply
from pymqueue.dmq.events import DmqEvent
from pymqueue.dmq.nodes import NodeId, NodeStatus
from pymqueue.errors import DmqError, DmqTimeout

__all__ = ["BusThread"]

_T = TypeVar("_T")


class BusThread:
    """A :class:`Bus` running in a background thread with its own event loop.

    Same arguments as :class:`Bus`. :meth:`start` joins and returns once the socket is bound;
    the blocking methods take a ``timeout`` (None: wait for the bus's own timeouts)::

        with BusThread("sip:127.0.0.1:5099", "sip:127.0.0.1:5091", ping_interval=5) as bus:
            bus.register("mqueue", handler)       # runs in the bus thread
            bus.broadcast("mqueue", b"x")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.bus = Bus(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._stop_timeout: float | None = None

    @property
    def local(self) -> NodeId:
        return self.bus.local

    def register(self, channel: str, handler: BusHandler) -> None:
        if self._loop is None:
            self.bus.register(channel, handler)
        else:
            self._call(lambda: self.bus.register(channel, handler))

    def add_listener(self, callback: Callable[[DmqEvent], object]) -> None:
        """``callback(event)`` runs in the bus thread."""
        if self._loop is None:
            self.bus.add_listener(callback)
        else:
            self._call(lambda: self.bus.add_listener(callback))

    def start(self, timeout: float = 10.0) -> BusThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._run, name=f"pymqueue-dmq {self.bus.config.server_address}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DmqTimeout(f"the bus thread did not start within {timeout}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.bus.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.bus.stop(self._stop_timeout)

        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - main() catches the start errors
            log.exception("dmq bus thread crashed")
            self._error = exc
            self._ready.set()

    def _submit(self, coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise DmqError("the bus thread is not running")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        done, _ = concurrent.futures.wait([fut], timeout)
        if not done:
            fut.cancel()
            raise DmqTimeout(f"no result within {timeout}s")
        return fut.result()

    def _call(self, func: Callable[[], _T], timeout: float | None = 10.0) -> _T:
        async def run() -> _T:
            return func()

        return self._submit(run(), timeout)

    def broadcast(
        self,
        channel: str,
        body: bytes | str,
        content_type: str | None = "text/plain",
        timeout: float | None = None,
    ) -> dict[NodeId, Result]:
        return self._submit(self.bus.broadcast(channel, body, content_type), timeout)

    def send(
        self,
        channel: str,
        node: NodeRef,
        body: bytes | str,
        content_type: str | None = "text/plain",
        timeout: float | None = None,
    ) -> PeerReply:
        return self._submit(self.bus.send(channel, node, body, content_type), timeout)

    def nodes(self) -> list[NodeInfo]:
        return self._call(self.bus.nodes)

    def status(self, node: NodeRef) -> NodeStatus | None:
        return self._call(lambda: self.bus.status(node))

    def remove_node(self, node: NodeRef) -> None:
        self._call(lambda: self.bus.remove_node(node))

    def wait_status(
        self,
        node: NodeRef,
        status: NodeStatus | Iterable[NodeStatus | None] | None,
        timeout: float | None = None,
    ) -> NodeStatus | None:
        return self._submit(self.bus.wait_status(node, status, timeout), None)

    def wait_joined(self, timeout: float | None = None) -> None:
        self._submit(self.bus.wait_joined(timeout), None)

    def stop(self, timeout: float | None = None) -> None:
        """Leave, wait for pending transactions (see :meth:`Bus.stop`), stop the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        self._stop_timeout = timeout
        if loop is not None and stop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    def __enter__(self) -> BusThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<pymqueue.dmq.BusThread {self.bus!r}>"
