"""pymqueue.instance.Instance and ``pymqueue serve`` (a real process).

Also the behavioural half of T33/T35: the queues a config defines really have the
capacity and addmode Kamailio would give them.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymqueue import ConfigError, Queue, QueueClosed, QueueNotFound, list_queues
from pymqueue.config import InstanceConfig, config_from_dict
from pymqueue.instance import Instance
from pymqueue.kamailio import ScriptApi
from pymqueue.kamailio.modparam import parse_mqueue


def make(namespace: str, *defs: str) -> Instance:
    return Instance(
        InstanceConfig(queues=tuple(parse_mqueue(d) for d in defs)), namespace=namespace
    )


def test_start_creates_queues_in_registry_order(namespace: str) -> None:
    inst = make(namespace, "name=r1", "name=r2;size=2", "name=r3")
    with pytest.raises(QueueClosed):
        inst.queue("r1")
    assert not inst.started
    with inst:
        assert inst.started
        assert list(inst.queues) == ["r3", "r2", "r1"]  # newest definition first
        assert inst.queue("r2").max_items == 2
        assert inst.queue(b"r2") is inst.queues["r2"]
        assert inst.attached == frozenset()
        assert sorted(list_queues(namespace)) >= ["r1", "r2", "r3"]
        with pytest.raises(QueueNotFound):
            inst.queue("R1")
        with pytest.raises(QueueNotFound):
            inst.definition("nope")
        assert inst.definition("r2").size == 2
        assert inst.start() is inst  # idempotent
    assert not inst.started
    assert inst.queues == {}
    for name in ("r1", "r2", "r3"):
        with pytest.raises(QueueNotFound):
            Queue(name, create=False, namespace=namespace)
    inst.stop()  # idempotent


def test_restart_after_stop(namespace: str) -> None:
    inst = make(namespace, "name=again")
    inst.start()
    inst.queue("again").add("k", "v")
    inst.stop()
    inst.start()
    assert inst.queue("again").size() == 0  # it was unlinked: a fresh queue
    inst.stop()


def test_attach_to_existing_queue_and_leave_it(namespace: str) -> None:
    pre = Queue("shared", create=True, size=5, namespace=namespace)
    try:
        pre.add("k", "v")
        with make(namespace, "name=shared;size=5", "name=own") as inst:
            assert inst.attached == frozenset({b"shared"})
            assert inst.queue("shared").size() == 1
        # the attached queue survives the instance, the created one does not
        assert Queue("shared", create=False, namespace=namespace).size() == 1
        with pytest.raises(QueueNotFound):
            Queue("own", create=False, namespace=namespace)
    finally:
        pre.unlink()
        pre.close()


def test_attach_with_other_settings_fails_cleanly(namespace: str) -> None:
    pre = Queue("clash", create=True, size=5, namespace=namespace)
    try:
        inst = make(namespace, "name=first", "name=clash;size=3")
        with pytest.raises(ConfigError, match="clash"):
            inst.start()
        assert not inst.started
        with pytest.raises(QueueNotFound):  # the one created before the failure is gone
            Queue("first", create=False, namespace=namespace)
    finally:
        pre.unlink()
        pre.close()


def test_exit_with_exception_stops_and_keeps_exception(namespace: str) -> None:
    inst = make(namespace, "name=boom")
    with pytest.raises(RuntimeError, match="inner"), inst:
        raise RuntimeError("inner")
    assert not inst.started


@pytest.mark.parametrize(
    ("definition", "capacity"),
    [
        ("name=t;size=0", None),  # T33: unbounded
        ("name=t", None),
        ("name=t;size=+4", 4),
        ("name=t;size= 5", 5),
        ("name=t;size=3", 3),
    ],
)
def test_t33_sizes_behave(namespace: str, definition: str, capacity: int | None) -> None:
    with make(namespace, definition) as inst:
        api = ScriptApi(inst)
        for i in range(12):
            assert api.mq_add("t", f"k{i}", "v") == 1
        assert api.mq_size("t") == (12 if capacity is None else capacity)


def test_t35_modparam_order_behaves(namespace: str) -> None:
    cfg = config_from_dict(
        {
            "modparam": [
                ["mqueue_name", "n1"],
                ["mqueue_size", 2],
                ["mqueue_addmode", 1],
                ["mqueue_name", "n2"],
            ]
        }
    )
    with Instance(cfg, namespace=namespace) as inst:
        api = ScriptApi(inst)
        for q in ("n1", "n2"):
            for k, v in (("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")):
                assert api.mq_add(q, k, v) == 1
        assert api.mq_size("n1") == 4
        drained = []
        while api.mq_fetch("n2") > 0:
            drained.append((api.pv_mqk("n2"), api.pv_mqv("n2")))
        assert drained == [(b"b", b"2"), (b"c", b"4")]


def test_dbmode_round_trip_through_sqlite(namespace: str, tmp_path: Path) -> None:
    db = tmp_path / "mq.sqlite"
    cfg = config_from_dict(
        {"db_url": f"sqlite:///{db}", "queue": [{"mqueue": "name=dq1;dbmode=1"}]}
    )
    with Instance(cfg, namespace=namespace) as inst:
        inst.queue("dq1").add("k1", "v1")
        inst.queue("dq1").add("k2", "v2")
    rows = (
        sqlite3.connect(db)
        .execute("select cast(key as text), cast(val as text) from dq1 order by id")
        .fetchall()
    )
    assert rows == [("k1", "v1"), ("k2", "v2")]
    with Instance(cfg, namespace=namespace) as inst:
        q = inst.queue("dq1")
        assert q.fetch() == (b"k1", b"v1")
        assert q.size() == 1


def test_rpc_server_started_and_stopped(namespace: str) -> None:
    cfg = config_from_dict({"queue": [{"name": "r1"}, {"name": "r2"}], "rpc": {"port": 0}})
    inst = Instance(cfg, namespace=namespace)
    with inst:
        assert inst.rpc is not None
        assert inst.rpc.http_address is not None
        inst.queue("r1").add("key0", "val 0")
        assert inst.rpc.call("mqueue.get_sizes") == [
            {"name": "r2", "size": 0},
            {"name": "r1", "size": 1},
        ]
        assert inst.rpc.call("mqueue.fetch", ["r1"]) == {"key": "key0", "val": "val 0"}
    assert inst.rpc is None


# --- pymqueue serve ---------------------------------------------------------------------


class Served:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def readline(self, deadline: float) -> str:
        assert self.proc.stdout is not None
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError("no line from pymqueue serve before the deadline")
        return self.proc.stdout.readline()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], Served]]:
    procs: list[subprocess.Popen[str]] = []

    def start(toml: str) -> Served:
        path = tmp_path / "serve.toml"
        path.write_text(toml)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pymqueue", "serve", "-c", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        procs.append(proc)
        return Served(proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_ready_then_stops_cleanly(
    serve: Callable[[str], Served], namespace: str, sig: int
) -> None:
    served = serve(
        'modparam = [["mqueue", "name=sv1;size=3"], ["mqueue_name", "sv2"]]\n[rpc]\nport = 0\n'
    )
    line = served.readline(time.monotonic() + 30)
    assert line.startswith("pymqueue: ready: pid "), line
    assert "2 queue(s) (sv2, sv1)" in line
    assert "rpc http://127.0.0.1:" in line
    q = Queue("sv1", create=False, namespace=namespace)
    assert q.max_items == 3
    q.add("k", "v")
    q.close()
    served.proc.send_signal(sig)
    assert served.proc.wait(30) == 0
    assert served.proc.stdout is not None
    assert served.proc.stdout.read().strip() == "pymqueue: stopped"
    with pytest.raises(QueueNotFound):
        Queue("sv1", create=False, namespace=namespace)


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('modparam = [["mqueue", "name=a;size=abc"]]', "modparam[0]: mqueue 'size'"),
        ("[[queue]]\nsize = 3", "queue[0].name"),
        ("this is not toml", "invalid TOML"),
    ],
)
def test_serve_bad_config(serve: Callable[[str], Served], toml: str, fragment: str) -> None:
    served = serve(toml)
    assert served.proc.wait(30) == 1
    assert served.proc.stderr is not None
    err = served.proc.stderr.read()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pymqueue: error: ")
    assert "serve.toml" in lines[0]
    assert fragment in lines[0]


def test_serve_missing_file(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "pymqueue", "serve", "-c", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1
    assert p.stderr.startswith("pymqueue: error: ")
    assert "cannot read" in p.stderr
