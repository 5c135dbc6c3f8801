"""``dmq = "owner"`` and ``owner`` on ``[[queue]]``: both forms accepted, every bad value a
ConfigError naming its key, a distributed queue without a ``[dmq]`` table refused; a file
through ``pymqueue serve`` refuses to start with the same message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pymqueue.config import config_from_dict
from pymqueue.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DMQ = {"server_address": "sip:127.0.0.1:5090"}


def queues(*tables: dict[str, Any], dmq: bool = True) -> dict[str, Any]:
    return {"queue": list(tables), **({"dmq": DMQ} if dmq else {})}


def test_both_forms() -> None:
    cfg = config_from_dict(queues(
        {"name": "jobs", "dmq": "owner", "owner": "sip:127.0.0.1:5091"},
        {"mqueue": "name=other;size=10", "dmq": "owner"},
        {"name": "local"},
    ))  # fmt: skip
    by_name = {q.name: q for q in cfg.queues}
    assert (by_name[b"jobs"].dmq, by_name[b"jobs"].owner) == ("owner", "sip:127.0.0.1:5091")
    assert (by_name[b"other"].dmq, by_name[b"other"].owner, by_name[b"other"].size) == (
        "owner", None, 10)  # fmt: skip
    assert (by_name[b"local"].dmq, by_name[b"local"].owner) == (None, None)


@pytest.mark.parametrize(
    ("table", "dmq", "message"),
    [
        ({"name": "j", "dmq": "owner"}, False, "queue[0].dmq: needs a [dmq] table"),
        ({"mqueue": "name=j", "dmq": "owner"}, False, "queue[0].dmq: needs a [dmq] table"),
        ({"name": "j", "dmq": "mirror"}, True, "queue[0].dmq: unknown value 'mirror'"),
        ({"name": "j", "dmq": "OWNER"}, True, "queue[0].dmq: unknown value"),
        ({"name": "j", "dmq": True}, True, "queue[0].dmq: unknown value"),
        ({"name": "j", "owner": "sip:127.0.0.1:1"}, True, "queue[0].owner: is only meaningful"),
        ({"name": "j", "dmq": "owner", "owner": 5091}, True, "queue[0].owner: must be a node"),
        ({"name": "j", "dmq": "owner", "owner": "sip:h.example:1"}, True, "queue[0].owner: bad"),
        ({"name": "j", "dmq": "owner", "owner": "sip:u@127.0.0.1:1"}, True, "queue[0].owner"),
        ({"name": "j", "dmq": "owner", "owner": "127.0.0.1:1"}, True, "queue[0].owner: bad"),
        ({"name": "j", "dmq": "owner", "owner": "sip:127.0.0.1"}, True, "with a port"),
        ({"name": "j", "dmq": "owner", "owner": "sip:127.0.0.1:1;transport=tcp"}, True, "UDP"),
    ],
)
def test_errors_name_the_key(table: dict[str, Any], dmq: bool, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(queues(table, dmq=dmq))
    assert message in str(info.value)


def test_serve_refuses(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('[[queue]]\nname = "jobs"\ndmq = "owner"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "pymqueue", "serve", "-c", str(conf)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "queue[0].dmq: needs a [dmq] table" in out.stderr
