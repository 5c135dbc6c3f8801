"""Microbenchmark of the KDMQ codec (issue 13): µs per parse and build of the messages a bus
exchanges, less sensitive to other load on the machine than a rate between processes::

    python bench/bench_dmq_codec.py                  # the pymqueue on sys.path
    python bench/bench_dmq_codec.py --ab OLD_TREE    # alternate with the tree at OLD_TREE

Messages: a 64-byte ``echo`` request and its 200 reply as two pymqueue nodes send them, and a
captured Kamailio 5.6.3 request (tests/data/dmq/13-custom-channel-request.sip). Each figure is
the best of ``REPEAT`` timings of ``NUMBER`` calls. ``--ab`` runs this script in a child
process per tree, alternating new/old ``ROUNDS`` times in one sitting, and prints the median
of each with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

NUMBER = 20_000
REPEAT = 5
ROUNDS = 3
VECTOR = Path(__file__).resolve().parent.parent / "tests/data/dmq/13-custom-channel-request.sip"


def measure() -> dict[str, float]:
    from pymqueue.dmq import message as m  # noqa: PLC0415

    a, b = m.parse_uri("sip:127.0.0.1:5099"), m.parse_uri("sip:127.0.0.1:5100")
    body = b"y" * 64

    def build() -> bytes:
        return m.build_request(
            channel="echo", target=b, local=a, body=body, content_type="text/plain"
        )

    req = build()
    parsed = m.parse_message(req)
    assert isinstance(parsed, m.DmqRequest)

    def reply() -> bytes:
        return m.build_response(parsed, 200, "OK", source=("127.0.0.1", 5099))

    rep = reply()
    kam = VECTOR.read_bytes()
    cases = {
        "parse request (pymqueue, 386 B)": lambda: m.parse_message(req),
        "parse 200 reply (pymqueue)": lambda: m.parse_message(rep),
        "parse request (Kamailio capture)": lambda: m.parse_message(kam),
        "build request": build,
        "build 200 reply": reply,
    }
    return {
        name: min(timeit.repeat(f, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e6
        for name, f in cases.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ab", metavar="OLD_TREE", help="alternate with the pymqueue at OLD_TREE")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure()))
        return
    if not args.ab:
        for name, us in measure().items():
            print(f"| {name} | {us:.1f} µs |")
        return
    import pymqueue  # noqa: PLC0415

    trees = {"new": str(Path(pymqueue.__file__).resolve().parent.parent), "old": args.ab}
    runs: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
    for _ in range(ROUNDS):
        for label, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, __file__, "--json"],
                env=env,
                capture_output=True,
                check=True,
                text=True,
            )
            runs[label].append(json.loads(out.stdout))
    print("| µs per call (median of rounds) | old | new | old / new |")
    print("|---|---|---|---|")
    for name in runs["new"][0]:
        old = statistics.median(r[name] for r in runs["old"])
        new = statistics.median(r[name] for r in runs["new"])
        print(f"| {name} | {old:.1f} | {new:.1f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
