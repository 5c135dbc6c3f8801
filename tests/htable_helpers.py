"""Kamailio 5.6.3 nodes replicating htables over DMQ, for the htable tests and benchmarks.

:func:`ht_config` is a complete config: ``htable`` with ``enable_dmq`` and ``dmq_init_sync``,
tables ``t`` (no expiry) and ``tx`` (``autoexpire`` 60), both ``dmqreplicate=1``, and a script
that changes ``t`` on a SIP MESSAGE, so script-level operations can be driven from a test
(:func:`script`): ``set``/``seti`` (``$sht``), ``null`` (``$sht = $null``), ``rmre``/``rmvre``
(``sht_rm_name_re``/``sht_rm_value_re``), ``rmsw``/``rmvsw`` (``sht_rm_name``/``sht_rm_value``
with ``sw``), ``fill`` (``X-N`` cells ``<X-P><i>`` = ``v<i>`` in a script loop, replicated like
any script write).

Kamailio's state is only observable through its RPC, so :func:`wait_rpc` polls it until a
deadline (a readiness probe, as the fixtures do).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fix_kamailio import Kamailio, KamailioFactory, RpcError, base_config

HT_SCRIPT = """
max_while_loops=1000000
modparam("tm", "fr_timer", @FR@)
modparam("htable", "enable_dmq", 1)
modparam("htable", "dmq_init_sync", 1)
modparam("htable", "htable", "t=>size=8;dmqreplicate=1;")
modparam("htable", "htable", "tx=>size=4;autoexpire=60;dmqreplicate=1;")
modparam("dmq", "server_address", "sip:127.0.0.1:@SIP_PORT@")
@NOTIFY@
modparam("dmq", "num_workers", 1)
modparam("dmq", "ping_interval", 5)

request_route {
    if ($rm == "KDMQ") {
        dmq_handle_message();
        exit;
    }
    if ($rm == "MESSAGE") {
        if ($rU == "set") { $sht(t=>$hdr(X-K)) = $rb; }
        else if ($rU == "seti") { $sht(t=>$hdr(X-K)) = $(rb{s.int}); }
        else if ($rU == "null") { $sht(t=>$hdr(X-K)) = $null; }
        else if ($rU == "rmre") { sht_rm_name_re("t=>$rb"); }
        else if ($rU == "rmvre") { sht_rm_value_re("t=>$rb"); }
        else if ($rU == "rmsw") { sht_rm_name("t", "sw", "$rb"); }
        else if ($rU == "rmvsw") { sht_rm_value("t", "sw", "$rb"); }
        else if ($rU == "fill") {
            $var(i) = 0;
            $var(n) = $(hdr(X-N){s.int});
            while ($var(i) < $var(n)) {
                $sht(t=>$hdr(X-P)$var(i)) = "v" + $var(i);
                $var(i) = $var(i) + 1;
            }
        }
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("404", "Not here");
    exit;
}
"""


def ht_config(notify: str | None = None, fr_timer_ms: int = 5000) -> str:
    line = f'modparam("dmq", "notification_address", "{notify}")' if notify else ""
    return base_config(
        HT_SCRIPT.replace("@NOTIFY@", line).replace("@FR@", str(fr_timer_ms)),
        modules=["tm", "dmq", "htable"],
    )


def start_ht(kamailio: KamailioFactory, notify: str | None = None, **kw: Any) -> Kamailio:
    """A Kamailio htable node (128 MB shared memory: room for 100 000 cells and more)."""
    return kamailio.start(ht_config(notify, **kw), extra_args=["-m", "128", "-M", "32"])


def kuri(kam: Kamailio) -> str:
    return f"sip:127.0.0.1:{kam.sip_port}"


def script(kam: Kamailio, op: str, body: str = "", **headers: str) -> None:
    """Run script operation ``op`` (see the module docstring) on ``kam``."""
    hdrs = [(f"X-{k.upper()}", v) for k, v in headers.items()]
    reply = kam.sip_request("MESSAGE", hdrs, body, ruri=f"sip:{op}@127.0.0.1:{kam.sip_port}")
    assert reply.status == 200, reply


def ht_get(kam: Kamailio, table: str, key: str) -> dict[str, Any] | None:
    """``htable.get``'s item, None for a missing key (500 "Key name doesn't exist")."""
    try:
        return kam.jsonrpc("htable.get", table, key)["item"]  # type: ignore[no-any-return]
    except RpcError as exc:
        if exc.code == 500 and "doesn't exist" in exc.message:
            return None
        raise


def ht_count(kam: Kamailio, table: str) -> int:
    for row in kam.jsonrpc("htable.stats"):
        if row["name"] == table:
            return int(row["all"])
    raise AssertionError(f"no table {table!r} on {kuri(kam)}")


def wait_rpc(
    probe: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 15.0, what: str = ""
) -> Any:
    """Poll ``probe()`` until ``ok(result)``; AssertionError with the last result after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met in {timeout}s: last {got!r}")
        time.sleep(0.05)  # polling interval of an RPC probe with a deadline


def wait_listed(kam: Kamailio, node_uri: str, status: str = "active", timeout: float = 15) -> None:
    port = node_uri.rsplit(":", 1)[1]

    def probe() -> str | None:
        return {n["port"]: n["status"] for n in kam.jsonrpc("dmq.list_nodes")}.get(port)

    wait_rpc(probe, lambda s: s == status, timeout, f"{node_uri} {status} on {kuri(kam)}")
