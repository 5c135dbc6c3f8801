"""The ``pymqueue`` command's queue subcommands and the demo, as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from queue_helpers import fresh_queue, unique_name


def run(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pymqueue", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
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


def test_demo_runs_and_its_leftovers_come_back_from_sqlite(tmp_path: Path) -> None:
    first = run("demo", "--items", "2000", "--leave", "123", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "items added         6,000" in first.stdout
    assert "left in the queue   123" in first.stdout
    assert (tmp_path / "pymqueue-demo.db").exists()
    second = run("demo", "--items", "10", "--leave", "0", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "loaded 123 items the previous run left in the database" in second.stdout
    assert "left in the queue   0" in second.stdout
