"""Ficus's MLLP path against the minimal loop doing the same JetStream writes (issue 19).

    python -m bench.mllp_ratio --kind adt|dft [--seconds S] [--connections N] [--rounds R] [--json]

Closed loop first: `ficus run` (modern route, embedded nats-server, bench.common.ficus_config)
and `bench.ceilings same-writes` (on a nats-server configured as the embedded one, streams as
Ficus's) are each started fresh and driven by bench.mllp_load the same way, interleaved
(ficus, loop, loop, ficus, ...) for R rounds; the medians give the throughput ratio. Then both
are driven at a fixed rate of half Ficus's closed-loop median, interleaved again, and the
medians of their ACK p99 give the latency ratio. Each run also notes the CPU seconds of the
server's Python process per message (/proc/PID/stat), which the shared machine's other load
does not inflate as much as wall time. Prints one JSON object (indented without --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.common import PY, Child, free_port, median, nats_server
from bench.run import TMP, ficus, load

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def log(msg: str) -> None:
    print(f"[mllp_ratio {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def server(variant: str, kind: str) -> Iterator[tuple[int, int]]:
    """(MLLP port, PID of the Python process answering) of a fresh Ficus or same-writes loop."""
    if variant == "ficus":
        with ficus() as f:
            yield f["port"], f["child"].pid
    else:
        port = free_port()
        with nats_server() as url, Child([PY, "-m", "bench.ceilings", "same-writes", str(port), url, "--kind", kind],
                                         log=TMP / "ficus-bench-ceilings.log", ready_port=port) as child:
            yield port, child.pid


def measure(variant: str, kind: str, conns: int, seconds: float, warmup: float,
            rate: float | None = None) -> dict[str, Any]:
    with server(variant, kind) as (port, pid):
        cpu0 = cpu_seconds(pid) if pid else 0.0
        result = load(port, kind, conns, seconds, warmup, rate=rate)
        cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    sent = result["messages"] * (seconds + warmup) / max(seconds, 1e-9)  # warm-up included in the CPU
    result["cpu_us_per_msg"] = round(1e6 * cpu / sent, 1) if pid and sent else None
    log(f"{variant:5} {kind} rate={rate or 'closed'}: {result['msgs_per_s']} msg/s, p99 {result['p99_ms']} ms, "
        f"{result['cpu_us_per_msg']} us CPU/msg")
    return result


def interleaved(rounds: int, run: Callable[[str], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """ficus, loop, loop, ficus, ...: each variant's runs, alternating which goes first."""
    out: dict[str, list[dict[str, Any]]] = {"ficus": [], "loop": []}
    for r in range(rounds):
        for variant in (("ficus", "loop") if r % 2 == 0 else ("loop", "ficus")):
            out[variant].append(run(variant))
    return out


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("msgs_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_msg", "codes")}


def ratio(kind: str, conns: int, seconds: float, rounds: int, warmup: float) -> dict[str, Any]:
    closed = interleaved(rounds, lambda v: measure(v, kind, conns, seconds, warmup))
    ficus_rate = median([r["msgs_per_s"] for r in closed["ficus"]])
    loop_rate = median([r["msgs_per_s"] for r in closed["loop"]])
    half = max(100.0, round(ficus_rate / 2, -1))
    fixed = interleaved(rounds, lambda v: measure(v, kind, conns, seconds, warmup, rate=half))
    ficus_p99 = median([r["p99_ms"] for r in fixed["ficus"]])
    loop_p99 = median([r["p99_ms"] for r in fixed["loop"]])
    return {
        "kind": kind, "connections": conns,
        "ficus_msgs_per_s": round(ficus_rate), "loop_msgs_per_s": round(loop_rate),
        "ratio": round(ficus_rate / loop_rate, 3) if loop_rate else None,
        "half_rate": half, "ficus_p99_ms": ficus_p99, "loop_p99_ms": loop_p99,
        "p99_ratio": round(ficus_p99 / loop_p99, 3) if loop_p99 else None,
        "ficus_cpu_us_per_msg": median([r["cpu_us_per_msg"] or 0 for r in closed["ficus"]]),
        "loop_cpu_us_per_msg": median([r["cpu_us_per_msg"] or 0 for r in closed["loop"]]),
        "runs": {f"{phase}|{v}": [_slim(r) for r in runs[v]]
                 for phase, runs in (("closed", closed), ("half_rate", fixed)) for v in ("ficus", "loop")},
        "seconds": seconds, "warmup": warmup, "rounds": rounds,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kind", choices=("adt", "dft"), required=True)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant per phase")
    parser.add_argument("--json", action="store_true", help="one JSON line (else indented)")
    args = parser.parse_args()
    result = ratio(args.kind, args.connections, args.seconds, args.rounds, args.warmup)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
