"""Run the REAL Kamailio (5.6.3 from Debian) on 127.0.0.1 for differential tests.

Fixtures:
* ``kamailio_bin`` (session) -> ``str``: path of the binary (skip, or FAIL under CI=true).
* ``kamailio`` (function) -> :class:`KamailioFactory`: ``kamailio.start(cfg_text, ...)``
  writes the config into a private temp dir, starts ``kamailio -DD -E -f cfg`` in its own
  process group and waits (deadline, no fixed sleep) until the ctl socket answers; every
  instance still running at the end of the test is stopped by PID.
  ``kamailio.run(cfg_text)`` runs a config that is expected NOT to start and returns
  ``(exit status, log)``.

Config text: use :func:`base_config` for the boilerplate (listeners, 1 SIP worker, ctl,
jsonrpcs over HTTP/FIFO/datagram, xhttp event route), or write your own. These tokens are
replaced before the file is written: ``@SIP_PORT@`` (UDP), ``@TCP_PORT@`` (TCP: SIP and HTTP),
``@CTL@`` (``unix:/…/ctl.sock``), ``@DIR@`` (the instance's temp dir), ``@RUNDIR@``,
``@MPATH@`` (module dir), ``@JSONRPC_FIFO@``, ``@JSONRPC_DGRAM@``.

An instance (:class:`Kamailio`) offers ``kamcmd(cmd, *args)``, ``jsonrpc(method, *params)``
(HTTP), ``jsonrpc_dgram`` / ``jsonrpc_fifo`` (same call over the jsonrpcs unix transports),
``sip_request(method, headers, body)`` (one UDP request, parsed reply), ``log()`` and
``stop()`` -> :class:`KamailioExit`.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fix_postgres import free_port, missing, server_env

MODULE_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
RPC_TIMEOUT = 10.0


class KamailioError(RuntimeError):
    """Kamailio did not start / stop / answer as expected (message carries the log)."""


def find_kamailio() -> tuple[str, str] | None:
    """(kamailio binary, kamcmd binary) or None."""
    kam = os.environ.get("KAMAILIO_BIN") or shutil.which("kamailio") or "/usr/sbin/kamailio"
    kcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
    if os.access(kam, os.X_OK) and os.access(kcmd, os.X_OK):
        return kam, kcmd
    return None


def module_dir() -> str:
    return os.environ.get("KAMAILIO_MPATH", MODULE_DIR)


def base_config(
    body: str = "",
    *,
    modules: Sequence[str] = (),
    modparams: Sequence[str] = (),
    globals_: Sequence[str] = (),
    request_route: str | None = None,
    debug: int = 2,
) -> str:
    """A complete config: boilerplate + ``modules``/``modparams`` lines + ``body``.

    ``modules`` are bare names (``"mqueue"``); ``modparams`` are complete lines. ``body`` is
    inserted after them (routes, more params). ``request_route`` defaults to a 404 reply
    unless ``body`` defines its own ``request_route``.
    """
    lines = [
        "#!KAMAILIO",
        f"debug={debug}",
        "log_stderror=yes",
        "fork=yes",
        "children=1",
        "tcp_children=1",
        "auto_aliases=no",
        "dns=no",
        "rev_dns=no",
        "tcp_accept_no_cl=yes",
        "listen=udp:127.0.0.1:@SIP_PORT@",
        "listen=tcp:127.0.0.1:@TCP_PORT@",
        'mpath="@MPATH@"',
        *globals_,
        'loadmodule "sl.so"',
        'loadmodule "pv.so"',
        'loadmodule "xhttp.so"',
        'loadmodule "jsonrpcs.so"',
        'loadmodule "ctl.so"',
        'modparam("ctl", "binrpc", "@CTL@")',
        'modparam("jsonrpcs", "transport", 0)',
        'modparam("jsonrpcs", "pretty_format", 0)',
        'modparam("jsonrpcs", "fifo_name", "@JSONRPC_FIFO@")',
        'modparam("jsonrpcs", "fifo_reply_dir", "@RUNDIR@/")',
        'modparam("jsonrpcs", "dgram_socket", "@JSONRPC_DGRAM@")',
    ]
    lines += [f'loadmodule "{m}.so"' for m in modules]
    lines += list(modparams)
    lines.append(body)
    if request_route is not None:
        lines.append(f"request_route {{\n{request_route}\n}}")
    elif "request_route" not in body:
        lines.append('request_route {\n\tsl_send_reply("404", "Not here");\n\texit;\n}')
    lines.append(
        "event_route[xhttp:request] {\n"
        '\tif ($hu =~ "^/RPC") {\n\t\tjsonrpc_dispatch();\n\t} else {\n'
        '\t\txhttp_reply("404", "Not Found", "text/plain", "no such page\\n");\n'
        "\t}\n\treturn;\n}"
    )
    return "\n".join(lines) + "\n"


@dataclass
class KamailioExit:
    """How an instance ended: ``returncode`` as Popen reports it (-11 = SIGSEGV)."""

    returncode: int
    log: str


@dataclass
class SipReply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name`` (case-insensitive)."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class RpcError(Exception):
    """A JSON-RPC error object (``code``, ``message``) returned by Kamailio."""

    code: int
    message: str

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


@dataclass
class Kamailio:
    """One running (or finished) Kamailio process."""

    workdir: Path
    cfg_path: Path
    sip_port: int
    tcp_port: int
    ctl_path: Path
    fifo_path: Path
    dgram_path: Path
    kamcmd_bin: str
    proc: subprocess.Popen[bytes]
    logfile: Path
    result: KamailioExit | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ctl(self) -> str:
        return f"unix:{self.ctl_path}"

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll the ctl socket (``core.uptime``) until it answers, the process dies, or the
        deadline passes (then raise :class:`KamailioError` with the log)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise KamailioError(
                    f"kamailio exited with {self.proc.returncode} during startup\n"
                    f"--- config {self.cfg_path} ---\n{self.cfg_path.read_text()}\n"
                    f"--- log ---\n{self.log()}"
                )
            if self.ctl_path.exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p = subprocess.run(
                        [self.kamcmd_bin, "-s", self.ctl, "core.uptime"],
                        capture_output=True, text=True, timeout=2, check=False, env=server_env(),
                    )  # fmt: skip
                    if p.returncode == 0 and "uptime" in p.stdout:
                        return
            if time.monotonic() > deadline:
                self.stop()
                raise KamailioError(
                    f"kamailio not ready after {timeout}s\n--- log ---\n{self.log()}"
                )
            # polling interval of a readiness probe with a deadline (not a synchronisation)
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> KamailioExit:
        """SIGTERM the main process, wait, SIGKILL the group after ``timeout``."""
        if self.result is not None:
            return self.result
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # children left behind (they normally exit with the main process)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.result = KamailioExit(int(self.proc.returncode), self.log())
        return self.result

    # -- RPC -------------------------------------------------------------------------------

    def kamcmd(self, cmd: str, *args: str | int, timeout: float = RPC_TIMEOUT) -> str:
        """Run ``kamcmd -s unix:… cmd args…``; returns stdout (kamcmd exits 0 even for RPC
        errors, which print ``error: <code> - <text>``)."""
        p = subprocess.run(
            [self.kamcmd_bin, "-s", self.ctl, cmd, *map(str, args)],
            capture_output=True, text=True, timeout=timeout, check=False, env=server_env(),
        )  # fmt: skip
        if p.returncode != 0:
            raise KamailioError(
                f"kamcmd {cmd} failed ({p.returncode}): {p.stdout}{p.stderr}\n{self.log()}"
            )
        return p.stdout

    def _request(
        self, method: str, params: Sequence[Any] | Mapping[str, Any] | None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            doc["params"] = params
        return doc

    def jsonrpc_raw(
        self,
        method: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        timeout: float = RPC_TIMEOUT,
    ) -> dict[str, Any]:
        """POST a JSON-RPC request to http://127.0.0.1:<tcp_port>/RPC; the whole response."""
        body = json.dumps(self._request(method, params)).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.tcp_port, timeout=timeout)
        try:
            conn.request("POST", "/RPC", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return _decode(data)

    def jsonrpc(self, method: str, *params: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """JSON-RPC over HTTP; returns ``result`` or raises :class:`RpcError`."""
        return _result(self.jsonrpc_raw(method, list(params) if params else None, timeout))

    def jsonrpc_dgram(self, method: str, *params: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """Same as :meth:`jsonrpc` over the jsonrpcs unix datagram socket."""
        body = json.dumps(self._request(method, list(params) if params else None)).encode()
        me = self.workdir / f"c{secrets.token_hex(4)}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(me))
            try:
                s.settimeout(timeout)
                s.sendto(body, str(self.dgram_path))
                data = s.recv(1 << 20)
            finally:
                me.unlink(missing_ok=True)
        return _result(_decode(data))

    def jsonrpc_fifo(self, method: str, *params: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """Same as :meth:`jsonrpc` over the jsonrpcs FIFO (reply FIFO in the run dir)."""
        name = f"reply{secrets.token_hex(4)}"  # no "." or "/": forbidden by jsonrpcs
        reply = self.fifo_path.parent / name
        os.mkfifo(reply, 0o600)
        try:
            doc = self._request(method, list(params) if params else None)
            doc["reply_name"] = name
            # open the reply end first (non-blocking) so the writer never sees ENXIO
            rfd = os.open(reply, os.O_RDONLY | os.O_NONBLOCK)
            try:
                with open(self.fifo_path, "wb") as w:
                    w.write(json.dumps(doc).encode() + b"\n")
                data = _read_fd(rfd, timeout)
            finally:
                os.close(rfd)
        finally:
            reply.unlink(missing_ok=True)
        return _result(_decode(data))

    # -- SIP -------------------------------------------------------------------------------

    def sip_request(
        self,
        method: str,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        body: bytes | str = b"",
        *,
        ruri: str | None = None,
        timeout: float = 5.0,
    ) -> SipReply:
        """Send one SIP request over UDP and return the first final (>=200) reply."""
        return sip_request(
            ("127.0.0.1", self.sip_port), method, headers, body, ruri=ruri, timeout=timeout,
            log=self.log,
        )  # fmt: skip


def _read_fd(fd: int, timeout: float) -> bytes:
    import select  # noqa: PLC0415 - only the FIFO transport needs it

    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply on the jsonrpcs reply FIFO")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        data = os.read(fd, 65536)
        if data:
            chunks.append(data)
            with contextlib.suppress(ValueError):
                json.loads(b"".join(chunks))
                return b"".join(chunks)
        elif chunks:  # writer closed
            return b"".join(chunks)
        else:  # no writer yet: wait for one (poll interval, bounded by the deadline)
            time.sleep(0.01)


def _decode(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise KamailioError(f"unexpected JSON-RPC response: {data!r}")
    return doc


def _result(doc: dict[str, Any]) -> Any:
    if "error" in doc:
        err = doc["error"]
        raise RpcError(int(err.get("code", 0)), str(err.get("message", "")))
    return doc.get("result")


def sip_request(
    addr: tuple[str, int],
    method: str,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    body: bytes | str = b"",
    *,
    ruri: str | None = None,
    timeout: float = 5.0,
    log: Any = None,
) -> SipReply:
    """Send one SIP request over UDP from an ephemeral 127.0.0.1 port, wait for a final
    reply with a matching branch (provisional replies are skipped)."""
    if isinstance(body, str):
        body = body.encode()
    host, port = addr
    hdrs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lport = s.getsockname()[1]
        branch = "z9hG4bK" + secrets.token_hex(8)
        call_id = secrets.token_hex(10) + "@127.0.0.1"
        uri = ruri or f"sip:driver@{host}:{port}"
        head = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:test@127.0.0.1>;tag={secrets.token_hex(4)}",
            f"To: <{uri}>",
            f"Call-ID: {call_id}",
            f"CSeq: 1 {method}",
        ]
        head += [f"{k}: {v}" for k, v in hdrs]
        head.append(f"Content-Length: {len(body)}")
        msg = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        s.sendto(msg, addr)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                extra = f"\n--- kamailio log ---\n{log()}" if log else ""
                raise TimeoutError(f"no SIP reply to {method} within {timeout}s{extra}")
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except TimeoutError:
                continue
            reply = parse_sip_reply(data)
            vias = reply.header_all("Via") + reply.header_all("v")
            if reply.status >= 200 and any(branch in v for v in vias):
                return reply


def parse_sip_reply(data: bytes) -> SipReply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2 or not first[0].startswith("SIP/"):
        raise ValueError(f"not a SIP reply: {data[:200]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    return SipReply(int(first[1]), first[2] if len(first) > 2 else "", headers, body, data)


class KamailioFactory:
    """Starts Kamailio instances for one test and stops them all afterwards."""

    def __init__(self, kamailio_bin: str, kamcmd_bin: str) -> None:
        self.kamailio_bin = kamailio_bin
        self.kamcmd_bin = kamcmd_bin
        self.instances: list[Kamailio] = []
        self._dirs: list[Path] = []

    def _prepare(self, cfg_text: str) -> tuple[Path, Path, dict[str, str]]:
        # short path: unix socket names are limited to 107 bytes
        workdir = Path(tempfile.mkdtemp(prefix="pmq-k-"))
        self._dirs.append(workdir)
        rundir = workdir / "run"
        rundir.mkdir()
        tokens = {
            "@SIP_PORT@": str(_free_udp_tcp_port()),
            "@TCP_PORT@": str(free_port()),
            "@CTL@": f"unix:{rundir / 'ctl.sock'}",
            "@DIR@": str(workdir),
            "@RUNDIR@": str(rundir),
            "@MPATH@": module_dir(),
            "@JSONRPC_FIFO@": str(rundir / "jsonrpc.fifo"),
            "@JSONRPC_DGRAM@": str(rundir / "jsonrpc.sock"),
        }
        for k, v in tokens.items():
            cfg_text = cfg_text.replace(k, v)
        cfg = workdir / "kamailio.cfg"
        cfg.write_text(cfg_text)
        return workdir, cfg, tokens

    def _spawn(
        self, workdir: Path, cfg: Path, children: int, extra_args: Sequence[str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        logfile = workdir / "kamailio.log"
        argv = [
            self.kamailio_bin, "-DD", "-E", "-f", str(cfg), "-n", str(children),
            "-N", str(children), "-Y", str(workdir / "run"), "-w", str(workdir),
            "-m", "32", "-M", "8", "-L", module_dir(), *extra_args,
        ]  # fmt: skip
        with open(logfile, "wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=workdir, start_new_session=True, env=server_env(),
            )  # fmt: skip
        return proc, logfile

    def start(
        self,
        cfg_text: str,
        *,
        children: int = 1,
        extra_args: Sequence[str] = (),
        timeout: float = START_TIMEOUT,
    ) -> Kamailio:
        """Start Kamailio with ``cfg_text`` (tokens replaced) and wait until it is ready.

        Readiness is the ctl socket (``@CTL@``) answering ``core.uptime``, so the config must
        load ``ctl`` with ``modparam("ctl", "binrpc", "@CTL@")`` (base_config does)."""
        workdir, cfg, tokens = self._prepare(cfg_text)
        proc, logfile = self._spawn(workdir, cfg, children, extra_args)
        rundir = Path(tokens["@RUNDIR@"])
        inst = Kamailio(
            workdir=workdir, cfg_path=cfg, sip_port=int(tokens["@SIP_PORT@"]),
            tcp_port=int(tokens["@TCP_PORT@"]), ctl_path=rundir / "ctl.sock",
            fifo_path=rundir / "jsonrpc.fifo", dgram_path=rundir / "jsonrpc.sock",
            kamcmd_bin=self.kamcmd_bin, proc=proc, logfile=logfile,
        )  # fmt: skip
        self.instances.append(inst)
        try:
            inst.wait_ready(timeout)
        except KamailioError as e:
            inst.stop()
            pytest.fail(str(e), pytrace=False)
        return inst

    def run(
        self,
        cfg_text: str,
        *,
        children: int = 1,
        extra_args: Sequence[str] = (),
        timeout: float = START_TIMEOUT,
    ) -> KamailioExit:
        """Run a config that is expected to refuse to start; returns its exit status and log.
        If it is still running after ``timeout`` it is stopped and the test fails."""
        workdir, cfg, _ = self._prepare(cfg_text)
        proc, logfile = self._spawn(workdir, cfg, children, extra_args)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            pytest.fail(
                f"kamailio was expected to exit but ran for {timeout}s\n"
                + logfile.read_text(errors="replace"),
                pytrace=False,
            )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return KamailioExit(rc, logfile.read_text(errors="replace"))

    def check(self, cfg_text: str, timeout: float = START_TIMEOUT) -> KamailioExit:
        """``kamailio -c`` (config check only)."""
        workdir, cfg, _ = self._prepare(cfg_text)
        p = subprocess.run(
            [self.kamailio_bin, "-c", "-f", str(cfg), "-L", module_dir(), "-Y",
             str(workdir / "run")],
            capture_output=True, timeout=timeout, check=False, cwd=workdir, env=server_env(),
        )  # fmt: skip
        return KamailioExit(p.returncode, (p.stdout + p.stderr).decode(errors="replace"))

    def close(self) -> None:
        for inst in self.instances:
            inst.stop()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


def _free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both protocols in
    some configs)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise KamailioError("no free UDP+TCP port found")


@pytest.fixture(scope="session")
def kamailio_bin() -> str:
    found = find_kamailio()
    if found is None:
        missing("kamailio/kamcmd binaries not found (scripts/install-test-deps.sh)")
        raise AssertionError("unreachable")
    if not Path(module_dir(), "mqueue.so").exists():
        missing(f"Kamailio modules not found in {module_dir()}")
    return found[0]


@pytest.fixture
def kamailio(kamailio_bin: str) -> Iterator[KamailioFactory]:
    """Factory for real Kamailio instances; everything started is stopped after the test."""
    found = find_kamailio()
    assert found is not None
    fac = KamailioFactory(found[0], found[1])
    try:
        yield fac
    finally:
        fac.close()


@pytest.fixture
def kamailio_mq(kamailio: KamailioFactory) -> Callable[..., Any]:
    """``kamailio_mq(queue_lines, debug=2) -> kamailio_mq.KamailioMq``: start the mqueue
    driver config (tests/data/kamailio/mq-driver.cfg) with the given module lines."""
    from kamailio_mq import KamailioMq, driver_config  # noqa: PLC0415 - avoids a cycle

    def start(queues: str | Sequence[str], *, debug: int = 2) -> KamailioMq:
        return KamailioMq(kamailio.start(driver_config(queues, debug=debug)))

    return start
