"""Benchmark configuration (``python -m pytest bench/``; never part of the default run).

* ``bench_*.py`` files are collected here (pyproject's ``testpaths`` stays ``["tests"]`` and
  its ``python_files`` default stays ``test_*.py``, so ``pytest`` alone never runs them).
* ``PYMQUEUE_NAMESPACE`` is set when pytest configures itself, before any benchmark imports
  the engine, to ``b<pid><6 random>``; every queue made here (and by the forked children)
  lives in it. Whatever is left in that namespace at the end is unlinked and reported.
* ``redis_server`` starts a private ``redis-server`` on a Unix socket (no TCP port, no
  persistence) and stops it by PID; the Redis peer is skipped if the binary is missing.
* Machine info for ``report.py`` (kernel, cores, peer versions) goes into the JSON.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

ENV_VAR = "PYMQUEUE_NAMESPACE"
SHM_DIR = Path("/dev/shm")
_state: dict[str, Any] = {}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's python plugin collects it
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config: pytest.Config) -> None:
    alnum = string.ascii_lowercase + string.digits
    ns = "b{}{}".format(os.getpid(), "".join(secrets.choice(alnum) for _ in range(6)))
    _state["namespace"] = ns
    _state["old_env"] = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ns


def _leftovers(ns: str) -> list[Path]:
    return [p for p in SHM_DIR.glob(f"pmq.{ns}.*")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ns = _state.get("namespace")
    if not ns:
        return
    left = _leftovers(ns)
    for p in left:
        p.unlink(missing_ok=True)
    _state["leaked"] = [p.name for p in left]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    leaked = _state.get("leaked")
    if leaked:
        terminalreporter.write_line(f"bench: unlinked leftover segments: {leaked}", red=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    old = _state.get("old_env")
    if old is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = old


@pytest.fixture(scope="session")
def namespace() -> str:
    return str(_state["namespace"])


# ---- machine info ----------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _redis_version() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return out.stdout.strip()


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    machine_info["pymqueue_bench"] = {
        "cpu_model": _cpu_model(),
        "cpus_online": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pymqueue": _version("pymqueue"),
        "cffi": _version("cffi"),
        "faster-fifo": _version("faster-fifo"),
        "posix_ipc": _version("posix_ipc"),
        "cloudtoid-interprocess": _version("cloudtoid-interprocess"),
        "redis-py": _version("redis"),
        "redis-server": _redis_version(),
        "pytest-benchmark": _version("pytest-benchmark"),
        "loadavg_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "mqueue_msg_max": _read_int("/proc/sys/fs/mqueue/msg_max"),
        "mqueue_msgsize_max": _read_int("/proc/sys/fs/mqueue/msgsize_max"),
    }


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


# ---- a private Redis -------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """Path of the Unix socket of a private redis-server (skip if it is not installed)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="pmq-bench-redis-")
    sock = os.path.join(tmp, "redis.sock")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            "0",
            "--unixsocket",
            sock,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(proc, sock, deadline=time.monotonic() + 10.0)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], sock: str, deadline: float) -> None:
    """Until the server answers PING on its socket (the socket itself is the readiness
    signal: connect attempts are bounded by the deadline, no fixed sleep)."""
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {err}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(max(deadline - time.monotonic(), 0.01))
                s.connect(sock)
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not come up within 10 s") from None
            # The socket is not there yet: block on the child for a moment (bounded wait on
            # the process, not a sleep used as synchronisation).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.01)
