"""The leak check sees a process that outlives its test: such a process can create a segment
after the session's last look (how a leftover escaped the check before)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

INNER = """
import subprocess, sys

CHILD = (
    "import sys, pymqueue\\n"
    "sys.stdin.read()\\n"  # until the test session closes its end of the pipe
    "pymqueue.Queue(sys.argv[1]).close()\\n"  # then a segment nobody unlinks
)
KEEP = []


def test_leaves_a_worker_behind():
    KEEP.append(subprocess.Popen([sys.executable, "-c", CHILD, "{name}"], stdin=subprocess.PIPE))
"""


def test_a_straggler_fails_the_session_and_creates_nothing(tmp_path: Path) -> None:
    name = f"late{os.getpid()}"
    (tmp_path / "test_inner.py").write_text(INNER.format(name=name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    env.pop("PYMQUEUE_NAMESPACE", None)  # the inner session makes its own
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "fix_shm", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "1 passed" in out.stdout, out.stdout + out.stderr
    assert out.returncode != 0, out.stdout
    assert "processes that outlived the session" in out.stdout
    assert f'"{name}"' in out.stdout or name in out.stdout  # its command line is shown
    leftovers = [p for p in os.listdir("/dev/shm") if p.endswith(f".{name}")]
    assert leftovers == []
