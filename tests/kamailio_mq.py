"""Drive the REAL Kamailio's mqueue script API over SIP, for differential tests.

``tests/data/kamailio/mq-driver.cfg`` is a request_route that runs one mqueue operation per
``MESSAGE`` request and replies with ``$rc`` and the values of ``$mqk``/``$mqv``/
``$mq_size`` for that queue (hex-encoded, binary safe). Kamailio runs with ONE SIP worker
(``children=1``), so every request is handled by the same process and the per-process
"current item" slot behaves deterministically. RPCs (``rpc``/``kamcmd``) run in other
processes (the HTTP/TCP worker, the ctl process), which have their own slots.

    drv = kamailio_mq('modparam("mqueue", "mqueue", "name=q3;size=3")')   # fixture
    drv.add("q3", "k1", "v1") == 1
    drv.fetch("q3") == 1; drv.mqk("q3") == b"k1"
    drv.rpc("mqueue.get_size", "q3") == {"name": "q3", "size": 0}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fix_kamailio import Kamailio, KamailioError, SipReply, base_config

DRIVER_CFG = Path(__file__).parent / "data" / "kamailio" / "mq-driver.cfg"

Bytes = str | bytes


def driver_config(queues: str | Sequence[str], *, debug: int = 2) -> str:
    """Full config text for the driver with ``queues`` (module lines: modparam("mqueue", …),
    and DB module loads / db_url lines when needed) injected after ``loadmodule mqueue``."""
    lines = queues if isinstance(queues, str) else "\n".join(queues)
    return base_config(DRIVER_CFG.read_text().replace("\n@QUEUES@\n", f"\n{lines}\n"), debug=debug)


def _hex(b: Bytes) -> str:
    if isinstance(b, str):
        b = b.encode()
    return b.hex() if b else "-"


@dataclass(frozen=True)
class MqState:
    """One driver reply: ``rc`` of the operation (None for a pure read), and what the SIP
    worker sees right after it: ``mqk``/``mqv`` (None = ``$null``), ``mq_size`` as printed
    (``"0"``, ``"3"``, or ``""`` when the getter failed, e.g. unknown queue)."""

    rc: int | None
    mqk: bytes | None
    mqv: bytes | None
    mq_size: str
    reply: SipReply = field(repr=False)

    @property
    def mq_size_int(self) -> int | None:
        return int(self.mq_size) if self.mq_size else None


def _pv(reply: SipReply, name: str) -> bytes | None:
    vals = reply.header_all(name)
    if vals == ["null"]:
        return None
    if not vals or not all(v.startswith("h:") for v in vals):
        raise KamailioError(f"bad {name} in driver reply: {reply.raw[:500]!r}")
    return bytes.fromhex("".join(v[2:] for v in vals))


class KamailioMq:
    """Python face of the driver config running in ``instance``."""

    def __init__(self, instance: Kamailio, timeout: float = 5.0) -> None:
        self.instance = instance
        self.timeout = timeout

    def op(self, op: str, q: Bytes, key: Bytes = b"", val: Bytes = b"") -> MqState:
        """Run one operation (add/fetch/size/pvfree/drain/read) and return the state."""
        reply = self.instance.sip_request(
            "MESSAGE",
            [("X-Op", op), ("X-Q", _hex(q)), ("X-Key", _hex(key)), ("X-Val", _hex(val))],
            timeout=self.timeout,
        )
        if reply.status != 200:
            raise KamailioError(f"driver replied {reply.status} {reply.reason}")
        rc_s = reply.header("X-Rc")
        size = reply.header("X-Mq-Size") or ""
        if not (size.startswith("[") and size.endswith("]")):
            raise KamailioError(f"bad X-Mq-Size in driver reply: {reply.raw[:500]!r}")
        return MqState(
            rc=None if rc_s in (None, "none") else int(rc_s),
            mqk=_pv(reply, "X-Mqk"),
            mqv=_pv(reply, "X-Mqv"),
            mq_size=size[1:-1],
            reply=reply,
        )

    def _rc(self, op: str, q: Bytes, key: Bytes = b"", val: Bytes = b"") -> int:
        rc = self.op(op, q, key, val).rc
        assert rc is not None
        return rc

    # -- config functions: return what $rc holds right after the call ------------------
    def add(self, q: Bytes, key: Bytes, val: Bytes) -> int:
        """``mq_add(q, key, val)``."""
        return self._rc("add", q, key, val)

    def fetch(self, q: Bytes) -> int:
        """``mq_fetch(q)``."""
        return self._rc("fetch", q)

    def size(self, q: Bytes) -> int:
        """``mq_size(q)``."""
        return self._rc("size", q)

    def pv_free(self, q: Bytes) -> int:
        """``mq_pv_free(q)``."""
        return self._rc("pvfree", q)

    def drain(self, q: Bytes) -> int:
        """``while (mq_fetch(q)) {n++}``; returns the number of iterations."""
        return self._rc("drain", q)

    # -- pseudo-variables in the SIP worker ----------------------------------------------
    def read(self, q: Bytes) -> MqState:
        return self.op("read", q)

    def mqk(self, q: Bytes) -> bytes | None:
        """``$mqk(q)``; None for ``$null``."""
        return self.read(q).mqk

    def mqv(self, q: Bytes) -> bytes | None:
        """``$mqv(q)``; None for ``$null``."""
        return self.read(q).mqv

    def mq_size_pv(self, q: Bytes) -> int | None:
        """``$mq_size(q)``; None when the getter failed (prints as an empty string)."""
        return self.read(q).mq_size_int

    # -- RPC (runs in another Kamailio process) -------------------------------------------
    def rpc(self, method: str, *params: Any) -> Any:
        """JSON-RPC over HTTP; returns ``result`` or raises ``fix_kamailio.RpcError``."""
        return self.instance.jsonrpc(method, *params)

    def kamcmd(self, cmd: str, *args: str | int) -> str:
        return self.instance.kamcmd(cmd, *args)
