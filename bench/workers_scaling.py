"""MLLP DFT throughput with `workers = 1` and `workers = 2`, and the CPU each message costs.

For each variant a fresh `ficus run` (embedded nats-server, one hl7-mllp DFT interface in
modern mode, `workers` set); then, from a separate process, bench/mllp_load.py in a closed
loop (`--connections` connections, each sending its next DFT when its ACK came, no warm-up so
every message is counted). Around the load run, the CPU time (utime + stime, /proc/PID/stat)
of every process under `ficus run` is read: the workers (the only process with one worker),
the supervisor, and the embedded nats-server, each apart; CPU seconds per message is what
sizes a bigger machine (one worker per core the Python side needs). Variants alternate over
`--rounds` so a shared machine's drift falls on both. Prints one JSON line; `--page FILE`
also puts section 11 into that page (bench/report.py's splice).

    python -m bench.workers_scaling --rounds 3 --seconds 15 --connections 16 --page docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, Child, free_port, machine, median, run_json, wait_http

TICKS = os.sysconf("SC_CLK_TCK")


def _config(work: Path, workers: int, mllp: int, api: int) -> Path:
    path = work / "ficus.toml"
    path.write_text(f"""
state_dir = "{work / 'state'}"
log_level = "WARNING"
workers = {workers}
[nats]
url = "embedded"
[api]
listen = "127.0.0.1:{api}"
[[interfaces]]
name = "bench"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp}"
mapping = "hl7v2"
route = "modern"
""")
    return path


def _stat(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, CPU seconds, kind) of a live process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    kind = ("nats-server" if os.path.basename(argv[0]).startswith(b"nats-server")
            else "worker" if b"--worker" in argv else "ficus")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, kind


def cpu_under(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of `root` and every process under it, by pid: (kind, seconds)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            table[int(entry)] = found
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out[pid] = (table[pid][2], table[pid][1])
            todo.extend(p for p, (ppid, _, _) in table.items() if ppid == pid)
    return out


def one(workers: int, seconds: float, connections: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"ficus-bench-workers-{workers}-"))
    try:
        mllp, api = free_port(), free_port()
        cfg = _config(work, workers, mllp, api)
        child = Child([str(VENV_BIN / "ficus"), "run", "-c", str(cfg)], log=work / "ficus.log", ready_port=mllp)
        child.start(90)
        try:
            wait_http(f"http://127.0.0.1:{api}/readyz", 60)
            before = cpu_under(child.pid)
            load = run_json(["-m", "bench.mllp_load", str(mllp), "--connections", str(connections),
                             "--seconds", str(seconds), "--kind", "dft", "--warmup", "0"], seconds + 60)
            after = cpu_under(child.pid)
        finally:
            child.stop(60)
        spent: dict[str, float] = {}
        for pid, (kind, cpu) in after.items():
            spent[kind] = spent.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
        messages = max(1, int(load["messages"]))
        python = spent.get("worker", 0.0) + spent.get("ficus", 0.0)
        return {"workers": workers, "msgs_per_s": load["msgs_per_s"], "messages": load["messages"],
                "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"], "codes": load["codes"],
                "seconds": load["seconds"], "cpu_s": {k: round(v, 2) for k, v in spent.items()},
                "python_cpu_ms_per_msg": round(1000 * python / messages, 3),
                "nats_cpu_ms_per_msg": round(1000 * spent.get("nats-server", 0.0) / messages, 3),
                "python_cores_busy": round(python / load["seconds"], 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(rounds: int, seconds: float, connections: int) -> dict[str, Any]:
    info = machine()
    runs = []
    for r in range(rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            runs.append(one(workers, seconds, connections))
    summary = {}
    for workers in (1, 2):
        mine = [x for x in runs if x["workers"] == workers]
        summary[str(workers)] = {key: median([x[key] for x in mine]) for key in (
            "msgs_per_s", "p50_ms", "p99_ms", "python_cpu_ms_per_msg", "nats_cpu_ms_per_msg", "python_cores_busy")}
    return {"bench": "workers_scaling", "machine": info, "load_at_end": os.getloadavg(), "seconds": seconds,
            "connections": connections, "runs": runs, "median": summary}


def section(res: dict[str, Any]) -> list[str]:
    """Section 11 of docs/benchmarks.md from a result of `run`."""
    m, one_, two = res["machine"], res["median"]["1"], res["median"]["2"]
    load0, load1 = m["load_at_start"], res["load_at_end"]
    lines = [
        "## 11. Workers: MLLP from 1 to 2 processes (`workers`)",
        "",
        f"`python -m bench.workers_scaling --rounds {len(res['runs']) // 2} --seconds {res['seconds']:g} "
        f"--connections {res['connections']}` (bench/workers_scaling.py): for each variant a fresh `ficus run` "
        "(embedded nats-server, one hl7-mllp interface, DFT, route modern) with `workers = 1` or `workers = 2`, and "
        f"bench/mllp_load.py in a separate process, closed loop over {res['connections']} connections, every "
        "message counted. CPU: utime + stime from /proc/PID/stat of every process under `ficus run`, read before "
        "and after the load run. Variants alternate so the machine's drift falls on both. "
        f"Machine: {m['cpu']}, {m['nproc']} cores, Python {m['python']}, nats-server {m['nats_server']}; "
        f"**load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end** (a shared machine: other "
        "sessions' work runs beside it). The load generator and the nats-server run on the same two cores.",
        "",
        "| workers | msgs/s | ACK p50 | ACK p99 | Python CPU per message | nats-server CPU per message | "
        "Python cores busy | codes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(f"| {r['workers']} | {r['msgs_per_s']:,} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
                     f"{r['python_cpu_ms_per_msg']:.3f} ms | {r['nats_cpu_ms_per_msg']:.3f} ms | "
                     f"{r['python_cores_busy']:.2f} | {', '.join(f'{k} {v}' for k, v in r['codes'].items())} |")
    for label, s in (("**median, 1 worker**", one_), ("**median, 2 workers**", two)):
        lines.append(f"| {label} | **{s['msgs_per_s']:,.0f}** | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms | "
                     f"**{s['python_cpu_ms_per_msg']:.3f} ms** | {s['nats_cpu_ms_per_msg']:.3f} ms | "
                     f"{s['python_cores_busy']:.2f} | |")
    ratio = two["msgs_per_s"] / one_["msgs_per_s"] if one_["msgs_per_s"] else 0.0
    cost = max(one_["python_cpu_ms_per_msg"], two["python_cpu_ms_per_msg"])
    nats_cost = max(one_["nats_cpu_ms_per_msg"], two["nats_cpu_ms_per_msg"])
    lines += [
        "", f"Scaling 1 -> 2 workers: **{ratio:.2f}x** msgs/s (medians). \"Python cores busy\" is the workers' CPU "
        "seconds over the run's seconds: below 1 per worker when the machine is shared (the workers wait for the "
        "CPU as well as for NATS), so the throughput here says less than the CPU per message, which does not depend "
        "on how long a message waited. **Sizing**: a DFT (3 FT1, 4 acknowledged writes) costs about "
        f"{cost:.2f} ms of Ficus CPU and {nats_cost:.2f} ms of nats-server CPU (the larger median of the two "
        f"variants), so one core of workers carries at most about {1000 / cost:,.0f} DFT/s and one core of "
        f"nats-server about {1000 / nats_cost:,.0f}: for R messages per second, plan R x {cost:.2f} ms of worker "
        f"cores (`workers` = that, rounded up, plus headroom) and R x {nats_cost:.2f} ms for the server, on top "
        "of the senders and the rest of the host. That is arithmetic from two cores, not a measurement on more.",
    ]
    if res.get("note"):
        lines += ["", str(res["note"])]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--page", type=Path, help="put section 11 into this page")
    parser.add_argument("--render", type=Path, help="only render a result file (one JSON line) into --page")
    parser.add_argument("--note", help="a line about this run, shown under the table (what else ran)")
    args = parser.parse_args()
    res = json.loads(args.render.read_text()) if args.render else run(args.rounds, args.seconds, args.connections)
    if args.note:
        res["note"] = args.note
    if args.page is not None:
        from bench.report import splice

        splice(args.page, section(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
