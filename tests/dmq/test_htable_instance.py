"""``[[dmq.htable]]`` in an instance: config checks, Kamailio's ``htable.*`` RPC answered as a
real Kamailio 5.6.3 answers it (differential, same calls on both), the CLI, and a Kamailio
node that joins the instance's bus getting the instance's cells (``dmq_init_sync``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dmq_helpers import udp_port, uri
from fix_kamailio import Kamailio, KamailioFactory
from fix_kamailio import RpcError as KamRpcError
from fix_postgres import free_port
from htable_helpers import ht_get, start_ht, wait_rpc

from pymqueue.config import config_from_dict
from pymqueue.errors import ConfigError, RpcError
from pymqueue.instance import Instance

ROOT = Path(__file__).resolve().parents[2]


def instance_config(port: int, server: str) -> dict[str, Any]:
    return {
        "rpc": {"port": port},
        "dmq": {
            "server_address": server,
            "ping_interval": 5,
            "fr_timer": 5,
            "htable": [{"name": "t", "size": 8}, {"name": "tx", "autoexpire": 60, "size": 4}],
        },
    }


@pytest.mark.parametrize(
    ("htable", "message"),
    [
        ([{"autoexpire": 5}], "name: is required"),
        ([{"name": "t", "ttl": 5}], "unknown key"),
        ([{"name": "t", "autoexpire": "5"}], "must be a int"),
        ([{"name": "t"}, {"name": "t"}], "defined twice"),
        ([{"name": ""}], "must not be empty"),
        ({"name": "t"}, "array of tables"),
    ],
)
def test_config_errors(htable: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"dmq": {"server_address": "sip:127.0.0.1:5099", "htable": htable}})


def call_ours(inst: Instance, method: str, *params: Any) -> Any:
    assert inst.rpc is not None
    try:
        return ("ok", inst.rpc.call(method, list(params)))
    except RpcError as exc:
        return ("error", exc.code, exc.message)


def call_theirs(kam: Kamailio, method: str, *params: Any) -> Any:
    try:
        return ("ok", kam.jsonrpc(method, *params))
    except KamRpcError as exc:
        return ("error", exc.code, exc.message)


def cells_of(dump: Any) -> list[dict[str, Any]]:
    assert dump[0] == "ok"
    return sorted((c for slot in dump[1] for c in slot["slot"]), key=lambda c: c["name"])


@pytest.mark.kamailio
def test_rpc_answers_like_kamailio_and_cli(kamailio: KamailioFactory) -> None:
    kam = start_ht(kamailio)
    port = free_port()
    inst = Instance(config_from_dict(instance_config(port, uri(udp_port()))))
    with inst:
        calls: list[tuple[Any, ...]] = [
            ("htable.sets", "t", "a", "x"),
            ("htable.get", "t", "a"),
            ("htable.seti", "t", "n", 5),
            ("htable.get", "t", "n"),
            ("htable.sets", "t", "u", "h\u00e9\U0001f600"),
            ("htable.get", "t", "u"),
            ("htable.get", "t", "missing"),
            ("htable.delete", "t", "missing"),
            ("htable.delete", "t", "n"),
            ("htable.get", "nosuch", "a"),
            ("htable.delete", "nosuch", "a"),
            ("htable.sets", "nosuch", "a", "b"),
            ("htable.setex", "t", "a", 100),
            ("htable.get", "t", "a"),
            ("htable.setex", "tx", "nokey", 100),
            ("htable.sets", "t"),
            ("htable.get", "t"),
            ("htable.dump",),
            ("htable.dump", "nosuch"),
            ("htable.listTables",),
        ]
        for call in calls:
            assert call_ours(inst, *call) == call_theirs(kam, *call), call
        assert cells_of(call_ours(inst, "htable.dump", "t")) == cells_of(
            call_theirs(kam, "htable.dump", "t")
        )
        ours = {r["name"]: r["all"] for r in call_ours(inst, "htable.stats")[1]}
        theirs = {r["name"]: r["all"] for r in call_theirs(kam, "htable.stats")[1]}
        assert ours == theirs == {"t": 2, "tx": 0}
        # an autoexpire cell: the expire is a date in both (values differ by the clock)
        for call in [("htable.sets", "tx", "e", "y"), ("htable.get", "tx", "e")]:
            a, b = call_ours(inst, *call), call_theirs(kam, *call)
            if call[0] == "htable.get":
                assert a[1]["item"]["expire"][:4] == b[1]["item"]["expire"][:4] != "NEVE"
                a[1]["item"]["expire"] = b[1]["item"]["expire"] = None
            assert a == b

        # the CLI, over the instance's RPC
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "pymqueue", "htable", *args, "--http", f"127.0.0.1:{port}"],
                capture_output=True, text=True, env=env, timeout=30, check=False,
            )  # fmt: skip

        assert cli("set", "t", "c", "42", "--int").returncode == 0
        out = cli("get", "t", "c")
        assert out.returncode == 0
        assert out.stdout.split() == ["{", "name:", "c", "value:", "42", "flags:", "0",
                                      "expire:", "NEVER", "}"]  # fmt: skip
        assert inst.htables["t"]["c"] == 42
        dumped = json.loads(cli("dump", "t", "--json").stdout)
        assert sorted(c["name"] for s in dumped for c in s["slot"]) == ["a", "c", "u"]
        missing = cli("delete", "t", "nope")
        assert (missing.returncode, missing.stderr) == (
            1,
            "error: 404 - Key not found in htable.\n",
        )

        # a Kamailio joining the instance's bus gets the instance's cells
        assert inst.dmq is not None
        k2 = start_ht(kamailio, str(inst.dmq.local))
        wait_rpc(lambda: ht_get(k2, "t", "c"), bool, 15, "instance cells on a joining Kamailio")
        assert (ht_get(k2, "t", "u") or {}).get("value") == "h\u00e9\U0001f600"
        # and a write through the instance's RPC reaches it
        call_ours(inst, "htable.sets", "t", "late", "w")
        wait_rpc(lambda: ht_get(k2, "t", "late"), bool, 15, "replicated RPC write")
