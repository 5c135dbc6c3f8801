"""Shared-memory hygiene: one namespace per test session, leak detection, cleanup.

* ``PYMQUEUE_NAMESPACE`` is set when pytest configures itself (before any test module is
  imported), so every ``Queue`` created by a test, and by any child process a test starts,
  lands in a namespace unique to this run: ``t<pid><random>`` (letters and digits only).
* The ``namespace`` fixture (session scope) returns that string.
* Leak check: segments of the namespace (``/dev/shm/pmq.<namespace>.*``) that still exist
  once every fixture of a module has been torn down are unlinked and reported as a teardown
  error of the last test of that module, naming the test during which each one appeared.
  A test that deliberately leaves segments behind for a later test of the same module is
  fine: the check only runs when the module is done. Mark a module/test with
  ``@pytest.mark.shm_leak_ok`` to turn the error into a warning.
* At session end anything left (e.g. by a process that outlived its test) is unlinked and
  reported in the terminal summary, and the session exit status is made non-zero.
* Before that last look, child processes of the session that are still alive (a worker a
  failed test did not stop, a server that ignored its signal) are reported the same way and
  killed by PID: such a process can create or re-create a segment *after* the check, which is
  how a leftover in /dev/shm escaped it.
"""

from __future__ import annotations

import os
import secrets
import signal
import string
import warnings
from collections.abc import Generator
from pathlib import Path

import pytest

SHM_DIR = Path("/dev/shm")
SEGMENT_PREFIX = "pmq."
ENV_VAR = "PYMQUEUE_NAMESPACE"

_ALNUM = string.ascii_lowercase + string.digits


class ShmLeakWarning(pytest.PytestWarning):
    """A test left shared-memory segments of the test namespace behind."""


def make_namespace() -> str:
    """A fresh session namespace: ``t<pid><6 random letters/digits>``."""
    return "t{}{}".format(os.getpid(), "".join(secrets.choice(_ALNUM) for _ in range(6)))


def segment_files(namespace: str) -> set[str]:
    """File names in /dev/shm that belong to ``namespace`` (``pmq.<namespace>.*``)."""
    prefix = f"{SEGMENT_PREFIX}{namespace}."
    try:
        return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix)}
    except FileNotFoundError:  # pragma: no cover - no /dev/shm
        return set()


def unlink_segments(names: set[str]) -> None:
    for name in names:
        (SHM_DIR / name).unlink(missing_ok=True)


_state: dict[str, object] = {}
_before_key = pytest.StashKey[set[str]]()
_creators: dict[str, str] = {}  # segment file -> nodeid of the test during which it appeared
_session_leaks: list[str] = []
_stragglers: list[str] = []

# children that multiprocessing keeps for the life of the session on purpose
_SERVICE_PROCESSES = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def live_children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live (not zombie) children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        found.append((int(entry), cmd))
    return found


def stop_stragglers() -> list[str]:
    """Kill (by PID) the session's children that outlived their tests; describe them."""
    out = []
    for pid, cmd in live_children(os.getpid()):
        if any(s in cmd for s in _SERVICE_PROCESSES):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        out.append(f"pid {pid}: {cmd[:200]}")
    return out


def _ns() -> str:
    ns = _state.get("namespace")
    assert isinstance(ns, str)
    return ns


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shm_leak_ok: leaked shared-memory segments only warn, not error"
    )
    ns = make_namespace()
    _state["namespace"] = ns
    _state["old_env"] = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ns


def pytest_unconfigure(config: pytest.Config) -> None:
    old = _state.get("old_env")
    if isinstance(old, str):
        os.environ[ENV_VAR] = old
    else:
        os.environ.pop(ENV_VAR, None)


@pytest.fixture(scope="session")
def namespace() -> str:
    """The session's shared-memory namespace (also in env ``PYMQUEUE_NAMESPACE``)."""
    return _ns()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_before_key] = segment_files(_ns())
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    result = yield
    now = segment_files(_ns())
    before = item.stash.get(_before_key, set())
    for seg in now - before:
        _creators.setdefault(seg, item.nodeid)
    module_done = nextitem is None or getattr(nextitem, "module", None) is not getattr(
        item, "module", None
    )
    if module_done and now:
        unlink_segments(now)
        desc = ", ".join(f"{s} (appeared during {_creators.get(s, '?')})" for s in sorted(now))
        msg = f"shared-memory segments leaked and removed: {desc}"
        for s in now:
            _creators.pop(s, None)
        if item.get_closest_marker("shm_leak_ok") is not None:
            warnings.warn(msg, ShmLeakWarning, stacklevel=1)
        else:
            pytest.fail(msg, pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ns = _state.get("namespace")
    if not isinstance(ns, str):
        return
    stragglers = stop_stragglers()
    if stragglers:
        _stragglers.extend(stragglers)
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    left = segment_files(ns)
    if left:
        unlink_segments(left)
        _session_leaks.extend(sorted(left))
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _stragglers:
        terminalreporter.section("processes that outlived the session", sep="=", red=True)
        for s in _stragglers:
            terminalreporter.line(f"killed {s}")
    if _session_leaks:
        terminalreporter.section("shared-memory leaks", sep="=", red=True)
        for s in _session_leaks:
            terminalreporter.line(f"removed leftover /dev/shm/{s}")
