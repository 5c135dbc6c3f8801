"""Markdown report of a pytest-benchmark JSON written by ``bench/``.

    python -m pytest bench/ --benchmark-json=bench.json && python bench/report.py bench.json

Prints machine info, one table per workload (implementations x items/s with ratios to
posix_ipc, faster-fifo and the floor probe), the add-cost table and the targets.
Throughput is ``items per round / median round time``; "spread" is the slowest and fastest
round, so a wide spread means a noisy machine.

Hand-off latency and idle CPU (``bench/bench_handoff.py``, issue 9):

    python -m pytest bench/bench_handoff.py --benchmark-json=handoff.json -p no:cacheprovider \
        && python bench/report.py handoff.json

prints one round-trip table per pinning (median, p90, p99, mean; ratios to the best peer's
median and to the best peer's p99, each taken separately) and the idle-CPU table.

Both at once (throughput W1-W4 without the add-cost table, and hand-off), one JSON:

    python -m pytest bench/bench_queue.py bench/bench_handoff.py -k "not add_cost" \
        --benchmark-json=all.json -p no:cacheprovider && python bench/report.py all.json

Targets, each printed met / MISSED (or NOT MEASURED) with the two figures it divides:
issue 10 against cloudtoid-interprocess in the same run (W1 >= 0.5x; W2 64 B, W2 4 KiB,
W3 >= 0.8x; W4 >= 2x, for add_many + fetch_many and for add_many + fetch_batch().values()),
the facade >= 80 % of "floor + bytes out" (W1, and W2 64 B where the probe is the consumer),
W4 >= 50 % of the raw C batch floor (both W4 forms); the earlier posix_ipc / faster-fifo
targets; issue 9's hand-off targets (pymqueue's median <= 0.2x and p99 <= 0.5x the best
peer's, per pinning) and idle CPU < 5 % of a core.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

COMMAND = (
    "python -m pytest bench/ --benchmark-json=bench.json -p no:cacheprovider "
    "&& python bench/report.py bench.json"
)
WORKLOADS = {
    "W1": "W1: one process, add one item then fetch it (key 16 B, value 64 B)",
    "W2 64 B": "W2: 1 producer process -> 1 consumer process, value 64 B",
    "W2 4 KiB": "W2: 1 producer process -> 1 consumer process, value 4 KiB",
    "W3": "W3: 4 producer processes -> 1 consumer process, value 64 B",
    "W4": "W4: one process, 256 items per call (add_many, then fetch_many)",
}
POSIX = "posix_ipc"
FLOOR = "floor (raw cffi)"
FACADE = "pymqueue"
FACADE_BLOCK = "pymqueue (block, 16 MiB)"
FACADE_BATCH = "pymqueue fetch_batch().values()"


def ff_ref(workload: str) -> str:
    return "faster-fifo put_many/get_many" if workload == "W4" else "faster-fifo"


def facade_row(workload: str) -> str:
    return FACADE_BLOCK if workload in ("W2 64 B", "W2 4 KiB", "W3") else FACADE


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    return f"{x / 1e3:.0f} k"


def fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def load(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def rates(data: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """workload -> impl -> {median, slow, fast, rounds, items}."""
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("workload") not in WORKLOADS:
            continue
        st = b["stats"]
        items = info["items"]
        out[info["workload"]][info["impl"]] = {
            "median": items / st["median"],
            "slow": items / st["max"],
            "fast": items / st["min"],
            "rounds": st["rounds"],
            "items": items,
        }
    return out


def machine(data: dict[str, Any]) -> list[str]:
    mi = data.get("machine_info", {})
    extra = mi.get("pymqueue_bench", {})
    cpu = extra.get("cpu_model") or mi.get("cpu", {}).get("brand_raw", "?")
    lines = [
        f"- CPU: {cpu}, {extra.get('cpus_online', '?')} CPUs online",
        f"- Kernel: Linux {extra.get('kernel', mi.get('release', '?'))}; "
        f"Python {extra.get('python', mi.get('python_version', '?'))} "
        f"({mi.get('python_implementation', '?')})",
        f"- pymqueue {extra.get('pymqueue', '?')} (cffi {extra.get('cffi', '?')}); "
        f"faster-fifo {extra.get('faster-fifo', '?')}; posix_ipc {extra.get('posix_ipc', '?')}; "
        f"cloudtoid-interprocess {extra.get('cloudtoid-interprocess', '?')}; "
        f"redis-server {extra.get('redis-server', '?')} (redis-py {extra.get('redis-py', '?')}); "
        f"pytest-benchmark {extra.get('pytest-benchmark', '?')}",
        f"- POSIX mqueue limits: msg_max {extra.get('mqueue_msg_max', '?')}, "
        f"msgsize_max {extra.get('mqueue_msgsize_max', '?')} (posix_ipc depth = msg_max)",
        f"- Run: {data.get('datetime', '?')}; load average at the end "
        f"{extra.get('loadavg_at_end', '?')}",
    ]
    return lines


def workload_table(workload: str, rows: dict[str, dict[str, float]]) -> list[str]:
    posix = rows.get(POSIX, {}).get("median")
    ff = rows.get(ff_ref(workload), {}).get("median")
    floor = rows.get(FLOOR, {}).get("median")
    lines = [
        f"#### {WORKLOADS[workload]}",
        "",
        "| implementation | items/s (median) | spread (slowest-fastest round) | rounds x items "
        "| x posix_ipc | x faster-fifo | of floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for impl, r in sorted(rows.items(), key=lambda kv: -kv[1]["median"]):
        m = r["median"]
        lines.append(
            f"| {impl} | {fmt_rate(m)} | {fmt_rate(r['slow'])}-{fmt_rate(r['fast'])} "
            f"| {int(r['rounds'])} x {int(r['items'])} "
            f"| {fmt_ratio(m / posix if posix else None)} "
            f"| {fmt_ratio(m / ff if ff else None)} "
            f"| {f'{m / floor:.0%}' if floor else ''} |"
        )
    lines.append("")
    return lines


def add_table(data: dict[str, Any]) -> list[str]:
    cells: dict[str, dict[int, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("workload") != "ADD":
            continue
        cells[info["impl"]][info["length"]] = b["stats"]["median"] / info["items"] * 1e9
    if not cells:
        return []
    lines = [
        "#### Cost of one add against the queue's length (facade `Queue.add`, value 64 B)",
        "",
        "`new`: a key not queued, then one `fetch()` to keep the length (the figure includes "
        "that fetch); `dup`: a key already queued (mode 1 ignores the add, mode 2 removes the "
        "old item and appends).",
        "",
        "| addmode / case | 10 items queued | 100 000 items queued | ratio |",
        "|---|---:|---:|---:|",
    ]
    for impl in sorted(cells):
        c = cells[impl]
        a, b = c.get(10), c.get(100_000)
        ratio = f"{b / a:.2f}" if a and b else ""
        lines.append(
            f"| {impl} | {a:.0f} ns | {b:.0f} ns | {ratio} |" if a and b else f"| {impl} | | | |"
        )
    lines.append("")
    return lines


CLOUDTOID = "cloudtoid-interprocess"
FLOOR_BYTES = "floor + bytes out"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def targets(r: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Issue 10's targets (against cloudtoid-interprocess and the floor probes, same run),
    then the earlier targets against posix_ipc and faster-fifo (kept for comparison with the
    older runs in ``docs/benchmarks.md``). Every line gives both figures it divides."""

    def get(w: str, impl: str) -> float | None:
        return r.get(w, {}).get(impl, {}).get("median")

    lines = [
        "#### Targets of issue 10 (this run)",
        "",
        "| target | figure | verdict |",
        "|---|---:|---|",
    ]

    def check(
        name: str, w: str, ours: str, ref: str, want: float, *, pct: bool = False, missing: str = ""
    ) -> None:
        a, b = get(w, ours), get(w, ref)
        if a is None or b is None:
            lines.append(
                f"| {name} | n/a ({missing or f'no {ours!r} or {ref!r} row in {w}'})"
                " | NOT MEASURED |"
            )
            return
        ratio = a / b
        fig = f"{ratio:.0%}" if pct else f"{ratio:.2f}x"
        lines.append(
            f"| {name} | {fig} ({fmt_rate(a)} / {fmt_rate(b)}) | {_verdict(ratio >= want)} |"
        )

    for w, ours, want in (
        ("W1", FACADE, 0.5),
        ("W2 64 B", FACADE_BLOCK, 0.8),
        ("W2 4 KiB", FACADE_BLOCK, 0.8),
        ("W3", FACADE_BLOCK, 0.8),
        ("W4", FACADE, 2.0),
    ):
        check(f"{w}: {ours} >= {want:g}x {CLOUDTOID}", w, ours, CLOUDTOID, want)
    check(f"W4: {FACADE_BATCH} >= 2x {CLOUDTOID}", "W4", FACADE_BATCH, CLOUDTOID, 2.0)
    for w, ours in (("W1", FACADE), ("W2 64 B", FACADE_BLOCK)):
        missing = ""
        if get(w, FLOOR_BYTES) is None:
            a, f = get(w, ours), get(w, FLOOR)
            bound = (f"; {ours} / raw floor = {a / f:.0%}, a lower bound"
                     if a is not None and f is not None else "")
            missing = f"no '{FLOOR_BYTES}' row in {w} (test not run?){bound}"
        check(f"{w}: {ours} >= 80% of '{FLOOR_BYTES}'", w, ours, FLOOR_BYTES, 0.8, pct=True,
              missing=missing)
    for ours in (FACADE, FACADE_BATCH):
        check(f"W4: {ours} within 50% of the raw C batch floor (>= 50% of {FLOOR})",
              "W4", ours, FLOOR, 0.5, pct=True)
    lines.append("")

    lines += [
        "#### Earlier targets (before issue 10; against posix_ipc and faster-fifo)",
        "",
        "| target | figure | verdict |",
        "|---|---:|---|",
    ]
    for w, ours, ref, want in (
        ("W1", FACADE, POSIX, 2.0),
        ("W1", FACADE, "faster-fifo", 6.0),
        ("W2 64 B", FACADE_BLOCK, POSIX, 1.3),
        ("W2 4 KiB", FACADE_BLOCK, POSIX, 1.0),
        ("W3", FACADE_BLOCK, POSIX, 2.0),
        ("W4", FACADE, "faster-fifo put_many/get_many", 5.0),
    ):
        check(f"{w}: {ours} >= {want:g}x {ref}", w, ours, ref, want)
    lines.append("")
    return lines


HANDOFF_COMMAND = (
    "python -m pytest bench/bench_handoff.py --benchmark-json=handoff.json -p no:cacheprovider "
    "&& python bench/report.py handoff.json"
)


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:.2f} us" if ns < 10_000 else f"{ns / 1000:.1f} us"


def fmt_x(x: float) -> str:
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x"


def handoff_rows(data: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    return [
        b["extra_info"]
        for b in data["benchmarks"]
        if b.get("extra_info", {}).get("workload") == workload
    ]


PIN_TITLES = {
    "none": "nothing pinned (the scheduler decides)",
    "same": "both processes pinned to CPU 0",
    "split": "initiator on CPU 0, responder on CPU 1",
}


def handoff_tables(data: dict[str, Any]) -> list[str]:
    rows = handoff_rows(data, "HANDOFF")
    out: list[str] = []
    for pin, title in PIN_TITLES.items():
        mine = [r for r in rows if r.get("pin", "none") == pin]
        if mine:
            out += handoff_table(mine, title)
    return out


def handoff_table(rows: list[dict[str, Any]], title: str) -> list[str]:
    peers = [r for r in rows if r.get("peer")]
    best_med = min(peers, key=lambda r: r["median_ns"]) if peers else None
    best_p99 = min(peers, key=lambda r: r["p99_ns"]) if peers else None
    lines = [
        "#### Hand-off: ping-pong round trip between two processes, blocking with no timeout; "
        + title,
        "",
        f"{int(rows[0]['round_trips'])} timed round trips per row after warm-up; item = key "
        "16 B + value 64 B (peers: one 80 B message; the C reference carries no payload). "
        + (
            f"Best peer: median {best_med['impl']}, p99 {best_p99['impl']}."
            if best_med and best_p99
            else "No peer measured."
        ),
        "",
        "| implementation | median | p90 | p99 | mean | median / best peer's | "
        "p99 / best peer's p99 | load avg (1/5/15 min) at start |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: r["median_ns"]):
        m = fmt_x(r["median_ns"] / best_med["median_ns"]) if best_med else ""
        q = fmt_x(r["p99_ns"] / best_p99["p99_ns"]) if best_p99 else ""
        name = r["impl"] + ("" if r.get("peer") or r.get("reference") else " (ours)")
        lines.append(
            f"| {name} | {fmt_us(r['median_ns'])} | {fmt_us(r['p90_ns'])} "
            f"| {fmt_us(r['p99_ns'])} | {fmt_us(r['mean_ns'])} | {m} | {q} "
            f"| {r.get('loadavg_start', '')} |"
        )
    lines.append("")
    return lines


def idle_table(data: dict[str, Any]) -> list[str]:
    rows = handoff_rows(data, "IDLE")
    if not rows:
        return []
    lines = [
        "#### Idle CPU: one consumer blocked with no timeout on an empty channel",
        "",
        "CPU = user + sys of the consumer process (all its threads, `getrusage`), over the "
        "wall time it waited.",
        "",
        "| implementation | waited | CPU time | % of one core |",
        "|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["cpu_pct"]):
        name = r["impl"] + ("" if r.get("peer") else " (ours)")
        lines.append(
            f"| {name} | {r['wall_s']:.2f} s | {r['cpu_s'] * 1000:.1f} ms | {r['cpu_pct']:.2f}% |"
        )
    lines.append("")
    return lines


def handoff_targets(data: dict[str, Any]) -> list[str]:
    all_rows = handoff_rows(data, "HANDOFF")
    idle = handoff_rows(data, "IDLE")
    if not all_rows and not idle:
        return []
    lines = [
        "#### Targets of issue 9 (this run)",
        "",
        "| target | figure | verdict |",
        "|---|---:|---|",
    ]
    for pin in PIN_TITLES:
        rows = [r for r in all_rows if r.get("pin", "none") == pin]
        peers = [r for r in rows if r.get("peer")]
        mine = {r["impl"]: r for r in rows}.get("pymqueue")
        if not mine or not peers:
            continue
        bm = min(peers, key=lambda r: r["median_ns"])
        bp = min(peers, key=lambda r: r["p99_ns"])
        for label, key, best, want in (
            (f"hand-off median <= 0.2x the best peer's ({pin})", "median_ns", bm, 0.2),
            (f"hand-off p99 <= 0.5x the best peer's p99 ({pin})", "p99_ns", bp, 0.5),
        ):
            ratio = mine[key] / best[key]
            lines.append(
                f"| {label} | {fmt_x(ratio)} ({fmt_us(mine[key])} / {best['impl']} "
                f"{fmt_us(best[key])}) | {_verdict(ratio <= want)} |"
            )
    for r in idle:
        if not r.get("peer"):
            ok = r["cpu_pct"] < 5.0
            lines.append(
                f"| idle CPU < 5% of a core: {r['impl']} | {r['cpu_pct']:.2f}% | {_verdict(ok)} |"
            )
    lines.append("")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data = load(argv[1])
    r = rates(data)
    out = ["### Machine", "", *machine(data), ""]
    if r:
        out += [f"Reproduce: `{COMMAND}`", ""]
    for w in WORKLOADS:
        if w in r:
            out += workload_table(w, r[w])
    out += add_table(data)
    if r:
        out += targets(r)
    if handoff_rows(data, "HANDOFF") or handoff_rows(data, "IDLE"):
        out += [f"Reproduce the hand-off tables alone: `{HANDOFF_COMMAND}`", ""]
        out += handoff_tables(data) + idle_table(data) + handoff_targets(data)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
