"""``pymqueue demo`` as a user runs it: two consumers killed, the survivors carry on, the
counters add up, the leftovers come back from SQLite on the next run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pymqueue.cli import demo

IDENTITY = re.compile(
    r"added ([\d,]+) = fetched ([\d,]+) \+ left ([\d,]+) \+ dropped ([\d,]+): holds"
)


def run_demo(
    *args: str, cwd: Path, kill_waiter: bool = demo.KILL_WAITER
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, demo.KILL_WAITER_ENV: "1" if kill_waiter else "0"}
    return subprocess.run(
        [sys.executable, "-m", "pymqueue", "demo", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def numbers(out: str) -> tuple[int, ...]:
    m = IDENTITY.search(out)
    assert m, out
    return tuple(int(g.replace(",", "")) for g in m.groups())


@pytest.mark.parametrize("plain", [True, False], ids=["plain", "rich"])
def test_demo_kills_consumers_survivors_carry_on_leftovers_come_back(
    tmp_path: Path, plain: bool
) -> None:
    flags = ["--plain"] if plain else []
    first = run_demo("--items", "1500", "--rate", "0", "--leave", "123", *flags, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    added, fetched, left, dropped = numbers(first.stdout)
    assert added == 4500
    assert added == fetched + left + dropped
    # consumer 0 died with the batch it held: the items it had not handled stay unhandled
    assert re.search(r"killed consumer 0 \(pid \d+\) with SIGKILL while it worked", first.stdout)
    if demo.KILL_WAITER:
        assert re.search(r"killed consumer 1 .* while it slept in the queue's wait", first.stdout)
    assert "survivors carried on" in first.stdout
    assert "carried on" in first.stdout.split("Consumers", 1)[1]
    assert left >= 123  # a killed consumer may take its claim on the budget with it
    assert (tmp_path / "pymqueue-demo.db").exists()

    second = run_demo("--items", "1000", "--rate", "0", "--leave", "0", *flags, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"loaded {left:,} items the previous run left in the database" in second.stdout
    added2, fetched2, left2, dropped2 = numbers(second.stdout)
    assert added2 == left + 3000  # the loaded items count as added to the new queue
    assert added2 == fetched2 + left2 + dropped2


def test_demo_refuses_too_few_items(tmp_path: Path) -> None:
    out = run_demo("--items", "100", cwd=tmp_path)
    assert out.returncode == 2
    assert "--leave 1,000 is too large for 100 items" in out.stderr
