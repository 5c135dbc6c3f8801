"""Atheris harness for the KDMQ codec, the node-list parser and DmqCore.receive_datagram.

Run (not part of pytest), with a scratch corpus directory FIRST (libFuzzer writes new inputs
into the first directory; never let it write into tests/data/dmq):

    mkdir -p /tmp/dmq-corpus
    python tests/fuzz/fuzz_dmq.py /tmp/dmq-corpus tests/data/dmq -atheris_runs=200000

The seed corpus is the Kamailio 5.6.3 vectors. Any exception other than DmqProtocolError
escaping the parsers, or any exception from the core, is a finding.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from pymqueue.dmq import DmqConfig, DmqCore, PeerReply, parse_message, parse_node_list
    from pymqueue.errors import DmqProtocolError

CORE = DmqCore(DmqConfig("sip:127.0.0.1:5091", notification_addresses=("sip:127.0.0.1:5092",)))
CORE.register_peer("mqueue", lambda r: PeerReply())
CORE.start(0.0)
NOW = [0.0]


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(DmqProtocolError):
        parse_message(data)
    with contextlib.suppress(DmqProtocolError):
        parse_node_list(data)
    NOW[0] += 0.1
    CORE.receive_datagram(data, ("127.0.0.1", 5092), NOW[0])
    CORE.handle_timer(NOW[0])
    for out, _ in CORE.datagrams_to_send(NOW[0]):
        parse_message(out)
    while CORE.next_event() is not None:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
