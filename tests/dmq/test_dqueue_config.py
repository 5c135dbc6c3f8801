"""``dmq = "owner"``/``"mirror"``, ``owner`` and ``batch_items`` on ``[[queue]]``: both forms
accepted, every bad value a ConfigError naming its key, a distributed queue without a
``[dmq]`` table refused; a file through ``pymqueue serve`` refuses to start with the same
message."""

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


def test_mirror_and_batch_items() -> None:
    cfg = config_from_dict(queues(
        {"name": "fan", "dmq": "mirror", "batch_items": 1},
        {"mqueue": "name=fan2", "dmq": "mirror", "batch_items": 4096},
        {"name": "jobs", "dmq": "owner", "batch_items": 100},
    ))  # fmt: skip
    got = [(q.name, q.dmq, q.owner, q.batch_items) for q in cfg.queues]
    assert got == [(b"fan", "mirror", None, 1), (b"fan2", "mirror", None, 4096),
                   (b"jobs", "owner", None, 100)]  # fmt: skip


@pytest.mark.parametrize(
    ("table", "dmq", "message"),
    [
        ({"name": "j", "dmq": "owner"}, False, "queue[0].dmq: needs a [dmq] table"),
        ({"mqueue": "name=j", "dmq": "owner"}, False, "queue[0].dmq: needs a [dmq] table"),
        ({"name": "j", "dmq": "MIRROR"}, True, "queue[0].dmq: unknown value 'MIRROR'"),
        ({"name": "j", "dmq": "mirror"}, False, "queue[0].dmq: needs a [dmq] table"),
        (
            {"name": "j", "dmq": "mirror", "owner": "sip:127.0.0.1:1"},
            True,
            'queue[0].owner: is only meaningful with dmq = "owner"',
        ),
        ({"name": "j", "batch_items": 10}, True, "queue[0].batch_items: is only meaningful"),
        ({"name": "j", "dmq": "mirror", "batch_items": 0}, True, "queue[0].batch_items: must"),
        ({"name": "j", "dmq": "mirror", "batch_items": 4097}, True, "in 1..4096, got 4097"),
        ({"name": "j", "dmq": "mirror", "batch_items": True}, True, "queue[0].batch_items"),
        ({"name": "j", "dmq": "owner", "batch_items": "10"}, True, "queue[0].batch_items"),
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


def test_instance_rpc_and_accessor(namespace: str) -> None:
    from dmq_helpers import udp_port, uri  # noqa: PLC0415
    from fix_postgres import free_port  # noqa: PLC0415

    from pymqueue.errors import RpcError  # noqa: PLC0415
    from pymqueue.instance import Instance  # noqa: PLC0415

    me = uri(udp_port())
    cfg = config_from_dict({
        "rpc": {"port": free_port()},
        "queue": [{"name": "dq-rpc", "dmq": "owner"}, {"name": "dq-plain"}],
        "dmq": {"server_address": me, "ping_interval": 5, "fr_timer": 1},
    })  # fmt: skip
    with Instance(cfg, namespace=namespace) as inst:
        assert inst.rpc is not None
        assert inst.dqueues is not None
        assert list(inst.dqueue_stats()) == ["dq-rpc"]  # the plain queue is not distributed

        def rows() -> list[dict[str, Any]]:
            assert inst.rpc is not None
            return inst.rpc.call("dmq.queues", [])  # type: ignore[no-any-return]

        # alone on the bus: this node owns the queue once the service runs
        from dqueue_helpers import wait_for  # noqa: PLC0415

        got = wait_for(rows, lambda r: r[0]["owner"] == me, 10, "owner known")
        assert got[0]["queue"] == "dq-rpc"
        assert got[0]["is_owner"] == 1
        assert got[0]["configured_owner"] == ""
        assert inst.rpc.call("dmq.queues", ["dq-rpc"]) == got
        with pytest.raises(RpcError) as info:
            inst.rpc.call("dmq.queues", ["dq-plain"])
        assert info.value.code == 404
    assert inst.dqueue_stats() == {}
