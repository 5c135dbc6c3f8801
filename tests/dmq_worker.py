"""A pymqueue DMQ node in its own process, driven over stdin/stdout (JSON lines).

``python tests/dmq_worker.py '{"server": "sip:127.0.0.1:P", "notify": [...], "ping": 5,
"fr": 1.0}'`` runs a :class:`pymqueue.dmq.Bus` with two channels:

* ``echo``: answers ``200 OK`` with body ``<own uri>|<request body>``;
* ``record``: answers ``200 OK`` and reports the request on stdout.

Output lines: ``{"ev": "ready"}``, ``{"ev": "up"|"down", "node": uri}``, ``{"ev": "recv",
"channel", "body", "from"}`` and one answer per command. Commands (stdin): ``nodes``,
``broadcast`` (channel, body), ``send`` (channel, node, body), ``flood`` (channel, node, body,
count: that many sends at once, answered with the count of each outcome), ``wait_status`` (node,
statuses, timeout; a status ``null`` = absent), ``leave`` (then exit). EOF on stdin = leave.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pymqueue.dmq import Bus, IncomingRequest, NodeDown, NodeStatus, NodeUp, PeerReply
from pymqueue.errors import DmqError, DmqTimeout


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(conf: dict[str, Any]) -> None:
    bus = Bus(
        conf["server"],
        conf.get("notify") or None,
        ping_interval=conf.get("ping", 5.0),
        fr_timer=conf.get("fr", 1.0),
        secret=conf.get("secret"),
    )
    me = conf["server"]

    def echo(req: IncomingRequest) -> PeerReply:
        return PeerReply(200, "OK", me.encode() + b"|" + req.body, "text/plain")

    def record(req: IncomingRequest) -> None:
        out(
            {"ev": "recv", "channel": req.channel, "body": req.body.decode(), "from": str(req.node)}
        )

    bus.register("echo", echo)
    bus.register("record", record)

    def on_event(ev: object) -> None:
        if isinstance(ev, NodeUp):
            out({"ev": "up", "node": str(ev.node)})
        elif isinstance(ev, NodeDown):
            out({"ev": "down", "node": str(ev.node)})

    bus.add_listener(on_event)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await bus.start()
    out({"ev": "ready"})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        name = cmd["cmd"]
        if name == "leave":
            break
        try:
            if name == "nodes":
                out({"ev": "nodes", "nodes": {str(n.node): str(n.status) for n in bus.nodes()}})
            elif name == "broadcast":
                res = await bus.broadcast(cmd["channel"], cmd["body"].encode())
                out(
                    {
                        "ev": "broadcast",
                        "results": {
                            str(n): "timeout"
                            if isinstance(r, DmqTimeout)
                            else [r.code, r.body.decode()]
                            for n, r in res.items()
                        },
                    }
                )
            elif name == "send":
                rep = await bus.send(cmd["channel"], cmd["node"], cmd["body"].encode())
                out({"ev": "send", "code": rep.code, "body": rep.body.decode()})
            elif name == "flood":

                async def one(c: dict[str, Any] = cmd) -> str:
                    try:
                        r = await bus.send(c["channel"], c["node"], c["body"].encode())
                    except DmqTimeout:
                        return "timeout"
                    return str(r.code)

                codes = await asyncio.gather(*(one() for _ in range(cmd["count"])))
                out({"ev": "flood", "codes": {c: codes.count(c) for c in set(codes)}})
            elif name == "wait_status":
                want = [None if s is None else NodeStatus(s) for s in cmd["statuses"]]
                st = await bus.wait_status(cmd["node"], want, cmd.get("timeout", 20.0))
                out(
                    {"ev": "status", "node": cmd["node"], "status": None if st is None else str(st)}
                )
            else:
                out({"ev": "error", "error": f"unknown command {name}"})
        except DmqError as exc:
            out({"ev": "error", "error": f"{type(exc).__name__}: {exc}"})
    await bus.stop()
    out({"ev": "left", "pending": bus.core.pending_transactions})


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
