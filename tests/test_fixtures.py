"""The test infrastructure itself: shm namespace and the private PostgreSQL cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psycopg
import pytest
from fix_postgres import PgServer
from fix_shm import ENV_VAR, segment_files


def test_namespace_is_unique_alnum_and_exported(namespace: str) -> None:
    assert re.fullmatch(r"t[0-9]+[a-z0-9]+", namespace)
    assert os.environ[ENV_VAR] == namespace
    out = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ['{ENV_VAR}'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert out == namespace


def test_segment_files_sees_only_our_namespace(namespace: str) -> None:
    path = f"/dev/shm/pmq.{namespace}.fixture-check"
    other = f"/dev/shm/pmq.{namespace}x.fixture-check"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    try:
        assert "pmq." + namespace + ".fixture-check" in segment_files(namespace)
        fd = os.open(other, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.close(fd)
        assert all(not s.startswith(f"pmq.{namespace}x.") for s in segment_files(namespace))
    finally:
        os.unlink(path)
        if os.path.exists(other):
            os.unlink(other)
    assert segment_files(namespace) == set()


@pytest.mark.postgres
def test_pg_server_listens_on_loopback(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn) as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
        assert row == ("127.0.0.1",)
        ver = conn.execute("SHOW server_version_num").fetchone()
        assert ver is not None
        assert int(ver[0]) >= 120000
    assert pg_server.dsn.startswith(f"postgresql://{pg_server.user}@127.0.0.1:")


@pytest.mark.postgres
def test_pg_dsn_is_a_fresh_database(pg_dsn: str, pg_server: PgServer) -> None:
    assert re.search(r"/t_[0-9a-f]{12}$", pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE q (id SERIAL PRIMARY KEY, key TEXT, val TEXT)")
        conn.execute("INSERT INTO q (key, val) VALUES ('k', 'v')")
    assert pg_server.psql("SELECT key || '/' || val FROM q", pg_dsn.rsplit("/", 1)[1]) == "k/v\n"


@pytest.mark.postgres
def test_pg_dsn_second_database_is_empty_again(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.q')").fetchone() == (None,)
