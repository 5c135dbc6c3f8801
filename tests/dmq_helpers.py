"""Helpers for the DMQ bus tests: pymqueue DMQ nodes in child processes (tests/dmq_worker.py).

:class:`Worker` starts one node, reads its JSON output lines in a thread and lets the test
wait for a line matching a predicate with a deadline (no sleeps). :class:`Workers` starts
several and stops every one still running by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fix_postgres import free_port

WORKER = Path(__file__).with_name("dmq_worker.py")
IP = "127.0.0.1"


def udp_port() -> int:
    import socket  # noqa: PLC0415

    return free_port(socket.SOCK_DGRAM)


def uri(port: int) -> str:
    return f"sip:{IP}:{port}"


class Worker:
    def __init__(self, server: str, notify: list[str], *, ping: float = 5.0, fr: float = 1.0,
                 **extra: Any) -> None:  # fmt: skip
        self.server = server
        self.conf = {"server": server, "notify": notify, "ping": ping, "fr": fr, **extra}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(self.conf)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.expect(lambda m: m["ev"] == "ready", 15.0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(raw))
        self.lines.put(None)

    def expect(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Next output line (from now on, or already seen but not consumed) matching ``pred``."""
        for i, m in enumerate(self.seen):
            if pred(m):
                del self.seen[i]
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.server}: no matching output in {timeout}s; "
                    f"seen {self.seen[-20:]}; stderr: {self._stderr()}"
                )
            try:
                m = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if m is None:
                raise AssertionError(f"{self.server} exited: {self._stderr()}")
            if pred(m):
                return m
            self.seen.append(m)

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def command(self, cmd: str, answer: str, wait: float = 20.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return self.expect(lambda m: m["ev"] in (answer, "error"), wait)

    def wait_status(self, node: str, *statuses: str | None, timeout: float = 20.0) -> str | None:
        m = self.command("wait_status", "status", timeout + 5, node=node,
                         statuses=list(statuses), timeout=timeout)  # fmt: skip
        assert m["ev"] == "status", m
        return m["status"]  # type: ignore[no-any-return]

    def leave(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"cmd": "leave"}\n')
        self.proc.stdin.flush()
        m = self.expect(lambda m: m["ev"] == "left", timeout)
        self.proc.wait(timeout)
        return m

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class Workers:
    def __init__(self) -> None:
        self.started: list[Worker] = []

    def start(self, server: str, notify: list[str], **kw: Any) -> Worker:
        w = Worker(server, notify, **kw)
        self.started.append(w)
        return w

    def close(self) -> None:
        for w in self.started:
            w.stop()


@contextlib.contextmanager
def workers() -> Iterator[Workers]:
    ws = Workers()
    try:
        yield ws
    finally:
        ws.close()
