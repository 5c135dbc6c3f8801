"""A private PostgreSQL cluster for the test session, and a fresh database per test.

Fixtures:
* ``pg_server`` (session) -> :class:`PgServer`: initdb into a temporary directory owned by a
  non-root user (``pmqtest``, created as a system user when running as root; falls back to
  ``postgres``), listens on 127.0.0.1 only on a free port, unix socket in the temp dir, trust
  auth. Stopped with ``pg_ctl stop -m fast`` (then by PID if that did not work).
* ``pg_dsn`` (function) -> ``str``: DSN of a new database ``t_<random>`` dropped afterwards.

Binaries are found via env ``PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin``,
else ``PATH``. When they are missing the test is skipped, or FAILS when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def missing(what: str) -> None:
    """Skip the test, or fail it under CI (CI=true), because ``what`` is unavailable."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: not skipping)", pytrace=False)
    pytest.skip(what)


def server_env() -> dict[str, str]:
    """Environment for server processes (PostgreSQL, Kamailio, tools): the test process's
    own, minus sanitizer preloads (scripts/sanitize.sh preloads libasan for Python only)."""
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"):
        env.pop(k, None)
    return env


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free right now for ``kind`` (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bindir() -> Path | None:
    env = os.environ.get("PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []

    def version(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for c in candidates:
        if all((c / b).is_file() for b in ("initdb", "pg_ctl", "pg_isready", "postgres")):
            return c
    return None


def _ensure_user() -> str | None:
    """Name of the non-root user to run the cluster as (None: we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("pmqtest", "postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pmqtest"],
        check=True,
        capture_output=True,
        env=server_env(),
    )
    return "pmqtest"


@dataclass
class PgServer:
    bindir: Path
    basedir: Path
    datadir: Path
    sockdir: Path
    logfile: Path
    host: str
    port: int
    user: str
    runas: str | None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def cmd(self, *argv: str) -> list[str]:
        prefix = ["runuser", "-u", self.runas, "--"] if self.runas else []
        return [*prefix, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        # own process group: on timeout the whole tree (runuser, initdb, postgres -V …) is
        # killed by its group id, not only the direct child
        p = subprocess.Popen(
            self.cmd(*argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.basedir,
            env=server_env(),
            start_new_session=True,
        )
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        if check and p.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({p.returncode}):\n{out}{err}\n--- log ---\n" + self.log()
            )
        return out

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through the psql client (for tests that want the server's own view)."""
        return self.run(
            str(self.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-d", self.dsn_for(dbname), "-c", sql,
        )  # fmt: skip

    def start(self) -> None:
        b = self.bindir
        self.run(
            str(b / "initdb"), "-D", str(self.datadir), "-U", self.user, "--auth=trust",
            "--no-locale", "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockdir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=50 -c shared_buffers=16MB"
        )
        self.run(str(b / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                 "-o", opts, "-W", "start")  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            p = subprocess.run(
                [str(b / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                 "-U", self.user, "-d", "postgres", "-t", "2"],
                capture_output=True, check=False, env=server_env(),
            )  # fmt: skip
            if p.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not ready after {START_TIMEOUT}s:\n{self.log()}")
            pid = self.postmaster_pid()
            if pid is None and "FATAL" in self.log():
                raise RuntimeError(f"PostgreSQL failed to start:\n{self.log()}")
            # pg_isready -t already waited up to 2 s when the server refused; a short pause
            # avoids spinning while the postmaster has not created its socket yet.
            time.sleep(0.05)

    def stop(self) -> None:
        pid = self.postmaster_pid()
        with contextlib.suppress(Exception):
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                     "-w", "-t", str(int(STOP_TIMEOUT)), "stop", check=False,
                     timeout=STOP_TIMEOUT + 10)  # fmt: skip
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A private PostgreSQL cluster on 127.0.0.1 for the whole session."""
    bindir = find_pg_bindir()
    if bindir is None:
        missing("PostgreSQL server binaries (initdb/pg_ctl/postgres) not found")
        raise AssertionError("unreachable")
    runas = _ensure_user()
    user = runas or pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="pmq-pg-"))
    os.chmod(base, 0o755)
    sockdir = base / "sock"
    sockdir.mkdir()
    if runas:
        pw = pwd.getpwnam(runas)
        for p in (base, sockdir):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    srv = PgServer(
        bindir=bindir, basedir=base, datadir=base / "data", sockdir=sockdir,
        logfile=base / "postgres.log", host="127.0.0.1", port=free_port(),
        user=user, runas=runas,
    )  # fmt: skip
    try:
        srv.start()
    except Exception as e:
        srv.stop()
        pytest.fail(f"private PostgreSQL did not start: {e}", pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a brand-new, empty database (dropped after the test)."""
    try:
        psycopg = importlib.import_module("psycopg")
    except ImportError:
        missing("psycopg (psycopg 3) is not installed")
        raise AssertionError("unreachable") from None
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.dsn_for(name)
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
