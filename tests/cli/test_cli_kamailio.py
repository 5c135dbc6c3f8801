"""``pymqueue get_size`` / ``get_sizes`` / ``fetch`` as real subprocesses.

Text output is kamcmd's, byte for byte (spec §6.1); ``--json`` gives the JSON-RPC result.
Unlike kamcmd, errors exit with status 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymqueue import Queue


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pymqueue", *args],
        capture_output=True,
        timeout=60,
        check=False,
        env=os.environ.copy(),
    )


@pytest.fixture
def queues(namespace: str) -> Iterator[dict[str, Queue]]:
    """r1 (3 items), r2 (empty), r3 (1 item) — created in that order."""
    made = {n: Queue(n, create=True, namespace=namespace) for n in ("r1", "r2", "r3")}
    for i in range(3):
        made["r1"].add(f"key{i}", f"val {i}")
    made["r3"].add("k", "v")
    yield made
    for q in made.values():
        q.unlink()
        q.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(
        'modparam = [["mqueue", "name=r1"], ["mqueue", "name=r2"], ["mqueue", "name=r3"]]\n'
    )
    return path


def test_get_size_kamcmd_format(queues: dict[str, Queue]) -> None:
    p = run("get_size", "r1")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"{\n\tname: r1\n\tsize: 3\n}\n"
    assert run("get_size", "r2").stdout == b"{\n\tname: r2\n\tsize: 0\n}\n"


def test_get_size_json(queues: dict[str, Queue]) -> None:
    p = run("get_size", "r1", "--json")
    assert p.returncode == 0
    assert json.loads(p.stdout) == {"name": "r1", "size": 3}


def test_get_sizes_with_config_in_registry_order(queues: dict[str, Queue], config: Path) -> None:
    p = run("get_sizes", "-c", str(config))
    assert p.returncode == 0, p.stderr
    assert p.stdout == (
        b"{\n\tname: r3\n\tsize: 1\n}\n{\n\tname: r2\n\tsize: 0\n}\n{\n\tname: r1\n\tsize: 3\n}\n"
    )
    p = run("get_sizes", "-c", str(config), "--json")
    assert json.loads(p.stdout) == [
        {"name": "r3", "size": 1},
        {"name": "r2", "size": 0},
        {"name": "r1", "size": 3},
    ]


def test_get_sizes_without_config_lists_the_namespace(queues: dict[str, Queue]) -> None:
    p = run("get_sizes", "--json")
    assert p.returncode == 0, p.stderr
    got = {d["name"]: d["size"] for d in json.loads(p.stdout)}
    assert {k: got[k] for k in ("r1", "r2", "r3")} == {"r1": 3, "r2": 0, "r3": 1}
    names = [d["name"] for d in json.loads(p.stdout)]
    assert names == sorted(names)


def test_get_sizes_empty_namespace(tmp_path: Path) -> None:
    p = run("get_sizes", "--namespace", "emptyns0cli")
    assert (p.returncode, p.stdout) == (0, b"")
    assert json.loads(run("get_sizes", "--namespace", "emptyns0cli", "--json").stdout) == []


def test_fetch_kamcmd_format_and_consumes(queues: dict[str, Queue]) -> None:
    p = run("fetch", "r1")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"{\n\tkey: key0\n\tval: val 0\n}\n"
    assert queues["r1"].size() == 2
    p = run("fetch", "r1", "--json")
    assert json.loads(p.stdout) == {"key": "key1", "val": "val 1"}


def test_fetch_raw_bytes(queues: dict[str, Queue]) -> None:
    queues["r2"].add(b'k\tq"\\', b"v\xff\x00w")
    p = run("fetch", "r2")
    assert p.stdout == b'{\n\tkey: k\tq"\\\n\tval: v\xff\x00w\n}\n'  # raw, like kamcmd (R16)
    queues["r2"].add(b"k", b"v\xff")
    p = run("fetch", "r2", "--json")
    assert json.loads(p.stdout) == {"key": "k", "val": "v\ufffd", "val_b64": "dv8="}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("get_size", "nope"), 404, "No such queue"),
        (("get_size", ""), 400, "Invalid queue name"),
        (("get_size", "R1"), 404, "No such queue"),
        (("fetch", "nope"), 500, "No such queue"),
        (("fetch", ""), 500, "Invalid queue name"),
        (("fetch", "r2"), 404, "Empty queue"),
    ],
)
def test_errors(queues: dict[str, Queue], args: tuple[str, ...], code: int, message: str) -> None:
    p = run(*args)
    assert p.returncode == 1
    assert p.stdout == b""
    assert p.stderr.decode() == f"error: {code} - {message}\n"
    p = run(*args, "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout) == {"error": {"code": code, "message": message}}


def test_config_limits_the_queues(queues: dict[str, Queue], tmp_path: Path) -> None:
    cfg = tmp_path / "only.toml"
    cfg.write_text('[[queue]]\nname = "r2"\n')
    assert run("get_size", "r2", "-c", str(cfg)).returncode == 0
    p = run("get_size", "r1", "-c", str(cfg))
    assert (p.returncode, p.stderr) == (1, b"error: 404 - No such queue\n")
    p = run("fetch", "r1", "-c", str(cfg))
    assert (p.returncode, p.stderr) == (1, b"error: 500 - No such queue\n")


def test_config_queue_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "down.toml"
    cfg.write_text('[[queue]]\nname = "notrunning"\n')
    p = run("get_sizes", "-c", str(cfg))
    assert (p.returncode, p.stderr) == (1, b"error: 404 - No such queue\n")


def test_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[queue]]\nmqueue = "name=a,b"\n')
    p = run("get_sizes", "-c", str(cfg))
    assert p.returncode == 1
    err = p.stderr.decode()
    assert err.startswith(f"pymqueue: error: {cfg}: queue[0].mqueue: ")
    assert len(err.splitlines()) == 1
