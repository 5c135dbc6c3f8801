"""``pymqueue top`` in a real terminal (tmux: send-keys, capture-pane) and as a non-TTY
snapshot, while a thread keeps items moving through a queue."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fix_postgres import missing
from queue_helpers import fresh_queue

import pymqueue


@pytest.fixture
def moving() -> Iterator[pymqueue.Queue]:
    """A queue with items going in and out until the test ends."""
    with fresh_queue(size=1000) as q:
        stop = threading.Event()

        def pump() -> None:
            while not stop.is_set():
                q.add_many([("k", "v" * 20)] * 50)
                q.fetch_many(40)
                stop.wait(0.005)  # the pump's tempo

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            yield q
        finally:
            stop.set()
            t.join()


def _row(text: str, name: str) -> list[str]:
    """The cells of ``name``'s row in a plain or rich table."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"\s{2,}|│", line) if c.strip()]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row for {name!r} in:\n{text}")


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_non_tty_snapshot_shows_queue_and_rates(moving: pymqueue.Queue, namespace: str) -> None:
    for plain in (True, False):
        out = subprocess.run(
            [sys.executable, "-m", "pymqueue", "top", "--namespace", namespace,
             "--interval", "0.3", *(["--plain"] if plain else [])],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"namespace {namespace}" in out.stdout
        assert "ADD/S" in out.stdout
        assert "FETCH/S" in out.stdout
        cells = _row(out.stdout, moving.name)
        # NAME ITEMS BYTES SIZE ADD/S FETCH/S DROPPED WAITING HIGH
        assert _num(cells[4]) > 0, cells  # items are being added
        assert _num(cells[5]) > 0, cells  # and fetched
        assert cells[3] == "1,000"


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """A private tmux server (its own socket); killed at the end."""
    if shutil.which("tmux") is None:
        missing("tmux is not installed (scripts/install-test-deps.sh installs it)")
    base = ["tmux", "-S", str(tmp_path / "tmux.sock")]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=30, check=False)


def _capture(tmux: list[str]) -> str:
    return subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True, timeout=30,
        check=True,
    ).stdout  # fmt: skip


def test_top_in_a_terminal_shows_rates_and_quits_on_q(
    moving: pymqueue.Queue, namespace: str, tmux: list[str], tmp_path: Path
) -> None:
    rc_file = tmp_path / "rc"
    env = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in os.environ.items()
        if k in ("PATH", "PYTHONPATH", "HOME", "PYMQUEUE_NAMESPACE")
    )
    command = (
        f"env -u COLUMNS -u LINES {env} TERM=xterm-256color "
        f"{shlex.quote(sys.executable)} -m pymqueue top "
        f"--namespace {namespace} --interval 0.3; echo $? > {shlex.quote(str(rc_file))}"
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "top", "-x", "160", "-y", "40", command],
        check=True, timeout=30,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    screen = ""
    while time.monotonic() < deadline:  # poll the screen until a refresh shows rates
        screen = _capture(tmux)
        if moving.name in screen:
            cells = _row(screen, moving.name)
            if len(cells) >= 6 and cells[4] != "-" and _num(cells[4]) > 0:
                break
        time.sleep(0.05)  # poll interval: the condition is the screen's content
    else:
        raise AssertionError(f"top never showed the queue's rates:\n{screen}")
    assert "q quits" in screen
    assert not rc_file.exists()  # still running
    subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True, timeout=30)
    while time.monotonic() < deadline and not (rc_file.exists() and rc_file.read_text()):
        time.sleep(0.05)  # poll interval: the condition is the exit status file
    assert rc_file.read_text().strip() == "0"
