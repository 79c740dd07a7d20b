"""Ficus's MLLP path against the minimal loop doing the same JetStream writes (issue 19).

    python -m bench.mllp_ratio --kind adt|dft [--seconds S] [--connections N] [--rounds R] [--json]

Closed loop first: `ficus run` (modern route, embedded nats-server, bench.common.ficus_config)
and `bench.ceilings same-writes` (on a nats-server configured as the embedded one, streams as
Ficus's) are each started fresh and driven by bench.mllp_load the same way, interleaved
(ficus, loop, loop, ficus, ...) for R rounds; the medians give the throughput ratio. Then both
are driven at a fixed rate of half Ficus's closed-loop median, interleaved again, and the
medians of their ACK p99 give the latency ratio. Each run also notes the CPU seconds per
message of the server's Python process and of its nats-server (/proc/PID/stat), which the
shared machine's other load does not inflate as much as wall time: `cpu_ratio` is messages
per server-side CPU second, Ficus's over the loop's. `--two-trips` adds `loop2`, the same
writes with the raw copy acknowledged before the rest (as Ficus must: its events carry the
raw copy's sequence). Prints one JSON object (indented without --json).
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


def nats_pid(parent: int) -> int:
    """The nats-server child of ``parent`` (Ficus's embedded one, or this process's), 0 if none."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
            name, ppid = stat[stat.index("(") + 1: stat.rindex(")")], int(stat.rsplit(")", 1)[1].split()[1])
            if name == "nats-server" and ppid == parent:
                return int(pid)
    return 0


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
        extra = ["--two-trips"] if variant == "loop2" else []
        with nats_server() as url, Child([PY, "-m", "bench.ceilings", "same-writes", str(port), url, "--kind", kind,
                                          *extra],
                                         log=TMP / "ficus-bench-ceilings.log", ready_port=port) as child:
            yield port, child.pid


def measure(variant: str, kind: str, conns: int, seconds: float, warmup: float,
            rate: float | None = None) -> dict[str, Any]:
    with server(variant, kind) as (port, pid):
        nats = nats_pid(pid if variant == "ficus" else os.getpid())
        cpu0, ncpu0 = cpu_seconds(pid), cpu_seconds(nats) if nats else 0.0
        result = load(port, kind, conns, seconds, warmup, rate=rate)
        cpu, ncpu = cpu_seconds(pid) - cpu0, (cpu_seconds(nats) - ncpu0 if nats else 0.0)
    sent = result["messages"] * (seconds + warmup) / max(seconds, 1e-9)  # warm-up included in the CPU
    result["cpu_us_per_msg"] = round(1e6 * cpu / sent, 1) if sent else None
    result["nats_cpu_us_per_msg"] = round(1e6 * ncpu / sent, 1) if nats and sent else None
    log(f"{variant:5} {kind} rate={rate or 'closed'}: {result['msgs_per_s']} msg/s, p99 {result['p99_ms']} ms, "
        f"{result['cpu_us_per_msg']} us CPU/msg (+ nats-server {result['nats_cpu_us_per_msg']})")
    return result


def interleaved(rounds: int, run: Callable[[str], dict[str, Any]], variants: tuple[str, ...] = ("ficus", "loop"),
                ) -> dict[str, list[dict[str, Any]]]:
    """ficus, loop, loop, ficus, ...: each variant's runs, the order reversed every other round."""
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(rounds):
        for variant in (variants if r % 2 == 0 else variants[::-1]):
            out[variant].append(run(variant))
    return out


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("msgs_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_msg", "nats_cpu_us_per_msg",
                                  "codes")}


def ratio(kind: str, conns: int, seconds: float, rounds: int, warmup: float, two_trips: bool = False,
          ) -> dict[str, Any]:
    variants = ("ficus", "loop", "loop2") if two_trips else ("ficus", "loop")
    closed = interleaved(rounds, lambda v: measure(v, kind, conns, seconds, warmup), variants)
    ficus_rate = median([r["msgs_per_s"] for r in closed["ficus"]])
    loop_rate = median([r["msgs_per_s"] for r in closed["loop"]])
    half = max(100.0, round(ficus_rate / 2, -1))
    fixed = interleaved(rounds, lambda v: measure(v, kind, conns, seconds, warmup, rate=half), variants)
    ficus_p99 = median([r["p99_ms"] for r in fixed["ficus"]])
    loop_p99 = median([r["p99_ms"] for r in fixed["loop"]])
    out: dict[str, Any] = {
        "kind": kind, "connections": conns,
        "ficus_msgs_per_s": round(ficus_rate), "loop_msgs_per_s": round(loop_rate),
        "ratio": round(ficus_rate / loop_rate, 3) if loop_rate else None,
        "half_rate": half, "ficus_p99_ms": ficus_p99, "loop_p99_ms": loop_p99,
        "p99_ratio": round(ficus_p99 / loop_p99, 3) if loop_p99 else None,
        # CPU per message of the server side (its Python process; nats-server apart), closed loop:
        # steadier than wall-clock rates on a shared machine.
        "ficus_cpu_us_per_msg": median([r["cpu_us_per_msg"] or 0 for r in closed["ficus"]]),
        "loop_cpu_us_per_msg": median([r["cpu_us_per_msg"] or 0 for r in closed["loop"]]),
        "ficus_nats_cpu_us_per_msg": median([r["nats_cpu_us_per_msg"] or 0 for r in closed["ficus"]]),
        "loop_nats_cpu_us_per_msg": median([r["nats_cpu_us_per_msg"] or 0 for r in closed["loop"]]),
        "runs": {f"{phase}|{v}": [_slim(r) for r in runs[v]]
                 for phase, runs in (("closed", closed), ("half_rate", fixed)) for v in variants},
        "seconds": seconds, "warmup": warmup, "rounds": rounds,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    ficus_cpu = out["ficus_cpu_us_per_msg"] + out["ficus_nats_cpu_us_per_msg"]
    loop_cpu = out["loop_cpu_us_per_msg"] + out["loop_nats_cpu_us_per_msg"]
    # Messages per server-side CPU second (Python process + nats-server), Ficus's over the loop's.
    out["cpu_ratio"] = round(loop_cpu / ficus_cpu, 3) if ficus_cpu else None
    if two_trips:
        # The same writes with the raw copy acknowledged first, as Ficus must: the structural share.
        out["loop2_msgs_per_s"] = round(median([r["msgs_per_s"] for r in closed["loop2"]]))
        out["loop2_p99_ms"] = median([r["p99_ms"] for r in fixed["loop2"]])
        out["loop2_cpu_us_per_msg"] = median([r["cpu_us_per_msg"] or 0 for r in closed["loop2"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kind", choices=("adt", "dft"), required=True)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant per phase")
    parser.add_argument("--json", action="store_true", help="one JSON line (else indented)")
    parser.add_argument("--two-trips", action="store_true",
                        help="also the loop with the raw copy acknowledged before the other writes (loop2)")
    args = parser.parse_args()
    result = ratio(args.kind, args.connections, args.seconds, args.rounds, args.warmup, args.two_trips)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
