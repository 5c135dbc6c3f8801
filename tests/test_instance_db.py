"""The Instance end to end with persistence: a TOML config with dbmode 1/2/3 queues on SQLite
and on PostgreSQL, in-process and as ``pymqueue serve -c`` (a real process)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_db_sync import (  # noqa: F401 (fixtures)
    Db,
    Served,
    batch,
    config,
    db,
    names,
    serve,
)

from pymqueue import Queue, QueueNotFound
from pymqueue.instance import Instance


def instance(tmp_path: Path, toml: str) -> Instance:
    path = tmp_path / "instance.toml"
    path.write_text(toml)
    return Instance.from_file(path)


def gone(name: str) -> bool:
    try:
        Queue(name, create=False).close()
    except QueueNotFound:
        return True
    return False


def test_dbmodes_over_two_starts(db: Db, tmp_path: Path, names: list[str]) -> None:  # noqa: F811
    names += ["InstOne", "InstTwo", "InstThree"]
    inst = instance(tmp_path, config(db, sync=None, InstOne=1, InstTwo=2, InstThree=3))
    x1, x2, x3 = batch("one", 30), batch("two", 20), batch("three", 10)
    with inst:
        assert inst.attached == frozenset()
        inst.queue("InstOne").add_many(x1)
        inst.queue("InstTwo").add_many(x2)
        inst.queue("InstThree").add_many(x3)
    # stop: dbmode 1 and 3 saved (tables named by the folded queue name on PostgreSQL),
    # dbmode 2 not; the queues the instance created are unlinked
    assert db.rows("instone") == x1
    assert db.rows("insttwo") == []
    assert db.rows("instthree") == x3
    assert all(gone(n) for n in names)

    r2 = batch("rows", 5)
    db.insert("insttwo", r2)
    with inst:
        assert inst.queue("InstOne").peek_many(1000) == x1  # dbmode 1: back, in order
        assert inst.queue("InstTwo").peek_many(1000) == r2  # dbmode 2: loaded
        assert inst.queue("InstThree").size() == 0  # dbmode 3: never loaded
        assert db.rows("instone") == []  # loading deletes the rows
        assert db.rows("insttwo") == []
        assert db.rows("instthree") == x3
        y3 = batch("more", 7)
        inst.queue("InstThree").add_many(y3)
        assert inst.queue("InstOne").fetch_many(10) == x1[:10]
    assert db.rows("instone") == x1[10:]
    assert db.rows("insttwo") == []  # dbmode 2 never saves
    assert db.rows("instthree") == x3 + y3  # dbmode 3 accumulates
    assert all(gone(n) for n in names)


def test_existing_segment_is_reattached_not_reloaded(
    db: Db,  # noqa: F811
    tmp_path: Path,
    names: list[str],  # noqa: F811
) -> None:
    """The segment outlived its instance (its items are still there) and the table holds
    rows saved earlier: start must not load them into the queue a second time."""
    names.append("InstRe")
    saved, alive = batch("saved", 20), batch("alive", 15)
    db.insert("instre", saved)
    survivor = Queue("InstRe", create=True)
    survivor.add_many(alive)
    with instance(tmp_path, config(db, sync=None, InstRe=1)) as inst:
        assert inst.attached == frozenset({b"InstRe"})
        assert inst.queue("InstRe").peek_many(1000) == alive
        assert db.rows("instre") == saved
    assert db.rows("instre") == saved + alive  # each item once
    assert survivor.size() == 0  # attached, so left in place; emptied by the save
    survivor.close()


@pytest.mark.slow
def test_serve_sigterm_saves_and_restart_loads(
    db: Db,  # noqa: F811
    serve: Callable[[str], Served],  # noqa: F811
    names: list[str],  # noqa: F811
) -> None:
    names += ["SrvOne", "SrvThree"]
    toml = config(db, sync=None, SrvOne=1, SrvThree=3)
    served = serve(toml)
    one, three = batch("s1-", 100), batch("s3-", 60)
    with Queue("SrvOne", create=False) as q1, Queue("SrvThree", create=False) as q3:
        q1.add_many(one)
        q3.add_many(three)
    served.terminate()
    assert db.rows("srvone") == one
    assert db.rows("srvthree") == three
    assert gone("SrvOne")
    assert gone("SrvThree")

    served = serve(toml)  # "ready" is printed once on_start has loaded
    assert db.rows("srvone") == []
    assert db.rows("srvthree") == three
    with Queue("SrvOne", create=False) as q1, Queue("SrvThree", create=False) as q3:
        assert q1.peek_many(1000) == one
        assert q3.size() == 0
        q3.add_many(three[:5])
    served.terminate()
    assert db.rows("srvone") == one
    assert db.rows("srvthree") == three + three[:5]


@pytest.mark.slow
def test_serve_killed_then_restarted_reattaches(
    db: Db,  # noqa: F811
    serve: Callable[[str], Served],  # noqa: F811
    names: list[str],  # noqa: F811
) -> None:
    """kill -9 of ``pymqueue serve``: nothing is saved, the segment survives; the next serve
    reattaches it (no reload, no duplicates) and its SIGTERM saves every item once."""
    names.append("SrvKill")
    toml = config(db, sync=None, SrvKill=1)
    earlier = batch("earlier", 10)
    db.insert("srvkill", earlier)
    served = serve(toml)
    assert db.rows("srvkill") == []  # loaded
    items = batch("k", 50)
    with Queue("SrvKill", create=False) as q:
        q.add_many(items)
    served.kill9()
    assert db.rows("srvkill") == []

    served = serve(toml)
    with Queue("SrvKill", create=False) as q:
        assert q.peek_many(1000) == earlier + items
    served.terminate()
    assert db.rows("srvkill") == earlier + items


@pytest.mark.slow
def test_serve_loads_after_a_reattached_run(
    db: Db,  # noqa: F811
    serve: Callable[[str], Served],  # noqa: F811
    names: list[str],  # noqa: F811
) -> None:
    """kill -9, restart (reattached), SIGTERM (saved), start again: the items come back."""
    names.append("SrvAfter")
    toml = config(db, sync=None, SrvAfter=1)
    items = batch("a", 20)
    served = serve(toml)
    with Queue("SrvAfter", create=False) as q:
        q.add_many(items)
    served.kill9()
    serve(toml).terminate()
    assert db.rows("srvafter") == items
    served = serve(toml)
    with Queue("SrvAfter", create=False) as q:
        assert q.peek_many(1000) == items
    served.terminate()
