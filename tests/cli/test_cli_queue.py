"""The ``pymqueue`` command's queue subcommands, as real processes (the demo: test_cli_demo.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from queue_helpers import fresh_queue, unique_name


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pymqueue", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ls_stats_unlink() -> None:
    with fresh_queue(size=10) as q:
        q.add("k", "value")
        out = run("ls")
        assert out.returncode == 0
        assert any(line.split()[:3] == [q.name, "1", "10"] for line in out.stdout.splitlines())
        rows = json.loads(run("ls", "--json").stdout)
        assert {"name": q.name, "items": 1, "size": 10, "bytes": 6} in rows
        stats = json.loads(run("stats", q.name, "--json").stdout)
        assert stats["items"] == 1
        assert stats["added"] == 1
        assert "added: 1" in run("stats", q.name).stdout
        assert run("unlink", q.name).returncode == 0
        gone = run("unlink", q.name)
        assert gone.returncode == 1
        assert "no queue" in gone.stderr


def test_stats_of_missing_queue_fails_cleanly() -> None:
    out = run("stats", unique_name("nope"))
    assert out.returncode == 1
    assert out.stderr.startswith("pymqueue: error: no queue")
