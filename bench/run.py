"""`make bench`: issue 19's targets, each a ratio against a ceiling doing the same work, in one run.

    python -m bench.run [--quick] [--big-mb N] [--only SECTION ...] [--no-docs]

Sections (issue 19, in this order): publisher, files, vs-base, raw, mllp-ratio, odbc-ratio,
memory, flip. Each measurement and its ceiling run in separate child processes, interleaved
where there are rounds, medians; every child is bounded by a timeout, and a failing one
leaves "error: <reason>" in its row instead of ending the run (a module another change has
not brought yet: "not measured: ... missing"). The older sections (legacy-mllp,
legacy-translate, legacy-x12, legacy-csv, legacy-odbc, ack: absolute targets from before issue
19) run only when named with --only.

Results go to bench/out/results-<date>.json (merged with an earlier file of the same day when
--only is used). docs/benchmarks.md: the head (machine, "Results against the targets") and
the sections this run measured are rewritten; every other section (written by other benches:
sync_cost, workers_scaling, translate_vs_base, fast_ingest, site maps...) is kept verbatim.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    PY,
    REPO,
    VENV_BIN,
    Child,
    calibration_seconds,
    ficus_config,
    free_port,
    machine,
    median,
    nats_server,
    run_json,
    wait_http,
)

OUT = REPO / "bench" / "out"
SECTIONS = ["publisher", "files", "vs-base", "raw", "mllp-ratio", "odbc-ratio", "memory", "flip"]
"""Issue 19's sections, run by default."""
LEGACY = ["legacy-translate", "legacy-mllp", "legacy-x12", "legacy-csv", "legacy-odbc", "ack"]
"""The sections of the targets before issue 19: only with --only."""

FULL = {"reps": 3, "publish_seconds": 4.0, "files_csv_mb": 16, "files_x12_mb": 16, "vs_base_rounds": 5,
        "raw_mb": 1024, "mllp_ratio_seconds": 4.0, "odbc_ratio_rows": 200_000, "big_mb": 1024, "flips": 5,
        # the legacy sections
        "mllp_seconds": 4.0, "warmup": 1.0, "sustain_seconds": 60.0, "rate_seconds": 5.0,
        "profile_seconds": 6.0, "translate_seconds": 1.0, "x12_mb": 16, "x12_small_mb": 2, "csv_mb": 16,
        "csv_pipeline_mb": 8, "odbc_rows": 1_000_000, "odbc_e2e_rows": 200_000, "ack_mb": 50}
QUICK = {"reps": 3, "publish_seconds": 1.5, "files_csv_mb": 4, "files_x12_mb": 4, "vs_base_rounds": 3,
         "raw_mb": 64, "mllp_ratio_seconds": 2.0, "odbc_ratio_rows": 30_000, "big_mb": 16, "flips": 3,
         "mllp_seconds": 2.0, "warmup": 0.5, "sustain_seconds": 15.0, "rate_seconds": 2.0,
         "profile_seconds": 3.0, "translate_seconds": 0.3, "x12_mb": 8, "x12_small_mb": 1, "csv_mb": 8,
         "csv_pipeline_mb": 2, "odbc_rows": 100_000, "odbc_e2e_rows": 50_000, "ack_mb": 10}

TARGETS = {"publisher_of_ceiling": 0.80, "file_e2e_of_translation": 0.75, "translation_vs_base": 2.0,
           "raw_mb_per_s": 50.0, "mllp_of_loop": 0.90, "mllp_p99_of_loop": 1.5, "odbc_e2e_of_map": 0.70,
           "file_rss_mib": 256.0, "flip_ms": 1000.0}
"""Issue 19's targets (bench/report.py states each row)."""
OLD_TARGETS = {"mllp_msgs_per_s": 10_000, "mllp_p99_ms": 5.0, "mllp_half_rate": 5_000, "mllp_vs_loop": 0.85,
               "translate_per_core": 30_000, "file_mb_per_s": 50.0, "file_rss_mib": 256.0,
               "odbc_rows_per_s": 30_000, "flip_ms": 1000.0}
"""The legacy sections' absolute targets (their text in docs/benchmarks.md still names them)."""

TMP = Path(tempfile.gettempdir())


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- profiles --------------------------------------------------------------------------------

def top_functions(prof: Path, n: int = 12) -> list[dict[str, Any]]:
    """Top functions by tottime from a cProfile dump."""
    stats = pstats.Stats(str(prof))
    total = stats.total_tt or 1e-9  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, calls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = file.replace(str(REPO) + "/", "").replace(str(Path(sys.prefix)) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        rows.append({"function": f"{short}:{line}({func})", "calls": calls, "tottime_s": round(tt, 3),
                     "cumtime_s": round(ct, 3), "pct": round(100 * tt / total, 1)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:n]


def profile_cmd(args: list[str], timeout: float = 300) -> list[dict[str, Any]]:
    """Runs `python -m cProfile -o ... <args>` and returns its top functions."""
    prof = TMP / f"ficus-bench-{time.time_ns()}.prof"
    subprocess.run([PY, "-m", "cProfile", "-o", str(prof), *args], cwd=REPO, capture_output=True, timeout=timeout,
                   check=True, env={"PYTHONPATH": str(REPO), "PATH": str(VENV_BIN) + ":/usr/bin:/bin"})
    try:
        return top_functions(prof)
    finally:
        prof.unlink(missing_ok=True)


# -- MLLP ------------------------------------------------------------------------------------

@contextmanager
def ficus(sync_always: bool = False, profile: Path | None = None) -> Iterator[dict[str, Any]]:
    """`ficus run` with one modern hl7-mllp interface on an embedded nats-server."""
    work = Path(tempfile.mkdtemp(prefix="ficus-bench-run-"))
    mllp, api, nats_port = free_port(), free_port(), free_port()
    cfg = ficus_config(work, route="modern", mllp_port=mllp, api_port=api, nats_port=nats_port,
                       sync_always=sync_always)
    argv = [str(VENV_BIN / "ficus"), "run", "-c", str(cfg)]
    if profile is not None:
        argv = [PY, "-m", "cProfile", "-o", str(profile), "-m", "router.cli", "run", "-c", str(cfg)]
    child = Child(argv, log=work / "ficus.log", ready_port=mllp)
    try:
        with child:
            wait_http(f"http://127.0.0.1:{api}/readyz", 30)
            info: dict[str, Any] = {"port": mllp, "nats": f"nats://127.0.0.1:{nats_port}", "child": child}
            yield info
            info["peak_rss_mib"] = child.peak_rss_mib()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(port: int, kind: str, conns: int, seconds: float, warmup: float, *, rate: float | None = None,
         backlog: str | None = None) -> dict[str, Any]:
    args = ["-m", "bench.mllp_load", str(port), "--kind", kind, "--connections", str(conns),
            "--seconds", str(seconds), "--warmup", str(warmup)]
    if rate:
        args += ["--rate", str(rate)]
    if backlog:
        args += ["--backlog", backlog]
    return run_json(args, timeout=seconds + warmup + 120)


@contextmanager
def ceiling_server(name: str, *extra: str) -> Iterator[int]:
    port = free_port()
    with Child([PY, "-m", "bench.ceilings", name, str(port), *extra], log=TMP / "ficus-bench-ceilings.log",
               ready_port=port):
        yield port


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the repeated runs of one variant."""
    keys = ("msgs_per_s", "p50_ms", "p99_ms", "p999_ms", "peak_rss_mib")
    out: dict[str, Any] = {k: round(median([r[k] for r in runs if k in r]), 3) for k in keys
                           if any(k in r for r in runs)}
    out["runs"] = [r.get("msgs_per_s") for r in runs]
    codes: dict[str, int] = defaultdict(int)
    for r in runs:
        for code, n in r.get("codes", {}).items():
            codes[code] += n
    if codes:
        out["codes"] = dict(codes)
    if runs and "bytes_per_msg" in runs[0]:
        out["bytes_per_msg"] = runs[0]["bytes_per_msg"]
    return out


def section_mllp(c: dict[str, Any]) -> dict[str, Any]:
    s, w, reps = c["mllp_seconds"], c["warmup"], c["reps"]
    kinds = ("adt", "dft")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(key: str, result: dict[str, Any], rss: float | None = None) -> None:
        if rss is not None:
            result["peak_rss_mib"] = rss
        runs[key].append(result)

    for rep in range(reps):
        log(f"mllp: round {rep + 1}/{reps}")
        with ficus() as f:
            rs = [(f"ficus|{k}|{n}", load(f["port"], k, n, s, w)) for k in kinds for n in (8, 1)]
            rss = f["child"].peak_rss_mib()
        for key, r in rs:
            add(key, r, rss)
        with nats_server() as url, ceiling_server("min-loop", url) as port:
            for k, n in (("adt", 8), ("dft", 8), ("dft", 1)):
                add(f"min-loop|{k}|{n}", load(port, k, n, s, w))
        with nats_server() as url, ceiling_server("min-loop", url, "--fast") as port:
            for k, n in (("adt", 8), ("dft", 8)):
                add(f"min-loop-fast|{k}|{n}", load(port, k, n, s, w))
        with ficus(sync_always=True) as f:
            rs = [(f"ficus-sync|{k}|8", load(f["port"], k, 8, s, w)) for k in kinds]
            rss = f["child"].peak_rss_mib()
        for key, r in rs:
            add(key, r, rss)
        with nats_server(sync_always=True) as url, ceiling_server("min-loop", url) as port:
            add("min-loop-sync|dft|8", load(port, "dft", 8, s, w))
        with ceiling_server("hl7-server") as port:
            add("hl7-server|dft|8", load(port, "dft", 8, s, w))
        with ceiling_server("template-server") as port:
            for k in kinds:
                add(f"template-server|{k}|8", load(port, k, 8, s, w))
        with nats_server() as url:
            for k in kinds:
                add(f"js-publish|{k}|1", run_json(["-m", "bench.ceilings", "js-publish", url, "--kind", k,
                                                    "--seconds", str(s)], timeout=s + 60))
                add(f"js-publish-fast|{k}|1", run_json(["-m", "bench.ceilings", "js-publish", url, "--kind", k,
                                                         "--seconds", str(s), "--fast"], timeout=s + 60))
    summary = {key: summarize(v) for key, v in runs.items()}

    # p99 at a fixed rate: half the target rate, and half of what Ficus reached.
    rate_runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rep in range(reps):
        log(f"mllp: fixed-rate round {rep + 1}/{reps}")
        with ficus() as f:
            for k in kinds:
                half_measured = max(100, round(summary[f"ficus|{k}|8"]["msgs_per_s"] / 2, -1))
                for label, rate in (("half-target", OLD_TARGETS["mllp_half_rate"]), ("half-measured", half_measured)):
                    r = load(f["port"], k, 8, c["rate_seconds"], w, rate=rate)
                    rate_runs[f"{label}|{k}"].append(r)
    fixed = {}
    for key, v in rate_runs.items():
        fixed[key] = summarize(v)
        fixed[key]["rate_target"] = v[0]["rate_target"]

    log(f"mllp: sustained {c['sustain_seconds']:.0f} s with backlog sampling")
    with ficus() as f:
        sustained = load(f["port"], "dft", 8, c["sustain_seconds"], w, backlog=f["nats"])
        sustained["peak_rss_mib"] = f["child"].peak_rss_mib()

    profile: list[dict[str, Any]] = []
    prof = TMP / f"ficus-bench-mllp-{time.time_ns()}.prof"
    log("mllp: cProfile of the Ficus process (DFT, 8 connections)")
    try:
        with ficus(profile=prof) as f:
            profiled = load(f["port"], "dft", 8, c["profile_seconds"], w)
        profile = top_functions(prof, 18)
    except Exception:  # noqa: BLE001 - a missing profile must not lose the figures
        log("mllp: profile failed: " + traceback.format_exc(limit=2))
        profiled = {}
    finally:
        prof.unlink(missing_ok=True)
    return {"variants": summary, "fixed_rate": fixed, "sustained": sustained, "profile": profile,
            "profiled_run": {k: profiled.get(k) for k in ("msgs_per_s", "p99_ms")}}


# -- translation -----------------------------------------------------------------------------

def section_translate(c: dict[str, Any]) -> dict[str, Any]:
    runs = [run_json(["-m", "bench.translate_hl7", "--json", str(c["translate_seconds"])], timeout=300)
            for _ in range(c["reps"])]
    rates = {k: round(median([r[k] for r in runs])) for k in runs[0]}
    log("translate: differential test")
    t0 = time.perf_counter()
    test = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_hl7_differential.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    diff = {"passed": test.returncode == 0, "summary": (test.stdout.strip().splitlines() or [""])[-1],
            "seconds": round(time.perf_counter() - t0, 1)}
    out: dict[str, Any] = {"rates": rates, "runs": runs, "differential_test": diff}
    log("translate: against the base commit, side by side (bench/translate_vs_base.py)")
    try:  # issue 19's target: >= 2x the base commit's rate, same run, same feeds
        out["vs_base"] = run_json(["bench/translate_vs_base.py", "--json", "--rounds", str(max(3, c["reps"] + 2))],
                                  timeout=600)
    except Exception:  # noqa: BLE001 - no git or no base commit must not lose the other figures
        log("translate: vs base failed: " + traceback.format_exc(limit=2))
    if min(rates["adt_translate"], rates["dft_translate"]) < OLD_TARGETS["translate_per_core"]:
        log("translate: cProfile")
        out["profile"] = profile_cmd(["-m", "bench.translate_hl7", "--only", "dft"])
    return out


# -- files -----------------------------------------------------------------------------------

def section_x12(c: dict[str, Any]) -> dict[str, Any]:
    big, small = TMP / "ficus-bench-big.835", TMP / "ficus-bench-small.835"
    try:
        for path, mb in ((big, c["x12_mb"]), (small, c["x12_small_mb"])):
            subprocess.run([PY, "-m", "bench.x12_835", "--size", str(mb), "--path", str(path), "--generate-only"],
                           cwd=REPO, check=True, capture_output=True, env={"PYTHONPATH": str(REPO)})
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rep in range(c["reps"]):
            log(f"x12: round {rep + 1}/{c['reps']}")
            for mode in ("ficus", "tokenize"):
                runs[f"{mode}|big"].append(run_json(["-m", "bench.x12_835", "--path", str(big), "--mode", mode], 900))
            runs["ficus|small"].append(run_json(["-m", "bench.x12_835", "--path", str(small), "--mode", "ficus"], 300))
            if rep == 0 or c["x12_small_mb"] <= 2:
                runs["pyx12|small"].append(run_json(["-m", "bench.x12_835", "--path", str(small), "--mode", "pyx12"],
                                                    900))
        out: dict[str, Any] = {"variants": {k: _median_dicts(v) for k, v in runs.items()}}
        if out["variants"]["ficus|big"]["mb_per_s"] < OLD_TARGETS["file_mb_per_s"]:
            log("x12: cProfile")
            out["profile"] = profile_cmd(["-m", "bench.x12_835", "--path", str(small), "--mode", "ficus"])
        return out
    finally:
        big.unlink(missing_ok=True)
        small.unlink(missing_ok=True)


def section_csv(c: dict[str, Any]) -> dict[str, Any]:
    path = TMP / "ficus-bench-billing.csv"
    try:
        subprocess.run([PY, "-m", "bench.flat_csv", "--size", str(c["csv_mb"]), "--path", str(path),
                        "--generate-only"], cwd=REPO, check=True, capture_output=True, env={"PYTHONPATH": str(REPO)})
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rep in range(c["reps"]):
            log(f"csv: round {rep + 1}/{c['reps']}")
            for mode in ("ficus", "read", "csv"):
                runs[mode].append(run_json(["-m", "bench.flat_csv", "--path", str(path), "--mode", mode], 900))
            # The whole folder interface: service, raw copy, events published and acknowledged, manifest.
            runs["pipeline"].append(run_json(["-m", "bench.file_pipeline", "--size", str(c["csv_pipeline_mb"])], 900))
        out: dict[str, Any] = {"variants": {k: _median_dicts(v) for k, v in runs.items()}}
        if out["variants"]["ficus"]["mb_per_s"] < OLD_TARGETS["file_mb_per_s"]:
            log("csv: cProfile")
            small = TMP / "ficus-bench-billing-small.csv"
            subprocess.run([PY, "-m", "bench.flat_csv", "--size", "4", "--path", str(small), "--generate-only"],
                           cwd=REPO, check=True, capture_output=True, env={"PYTHONPATH": str(REPO)})
            try:
                out["profile"] = profile_cmd(["-m", "bench.flat_csv", "--path", str(small), "--mode", "ficus"])
            finally:
                small.unlink(missing_ok=True)
        return out
    finally:
        path.unlink(missing_ok=True)


def _median_dicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = round(median([r[k] for r in runs]), 2)
    out["repeats"] = len(runs)
    return out


# -- ODBC ------------------------------------------------------------------------------------

def section_odbc(c: dict[str, Any]) -> dict[str, Any]:
    stamp = time.time_ns() % 10**9
    big, small = f"ficus_bench_{stamp}_big", f"ficus_bench_{stamp}_small"
    odbc = ["-m", "bench.odbc_poll"]
    try:
        fill = run_json([*odbc, "--table", big, "--fill", "--rows", str(c["odbc_rows"])], 900)
        run_json([*odbc, "--table", small, "--fill", "--rows", str(c["odbc_e2e_rows"])], 900)
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rep in range(c["reps"]):
            log(f"odbc: round {rep + 1}/{c['reps']}")
            runs["fetch|big"].append(run_json([*odbc, "--table", big, "--measure", "fetch"], 900))
            runs["poll|big"].append(run_json([*odbc, "--table", big, "--measure", "poll"], 900))
            runs["poll|small"].append(run_json([*odbc, "--table", small, "--measure", "poll"], 900))
            with nats_server() as url:
                runs["jetstream|small"].append(run_json([*odbc, "--table", small, "--measure", "jetstream",
                                                         "--nats", url], 1800))
        out: dict[str, Any] = {"fill": fill, "rows_big": c["odbc_rows"], "rows_small": c["odbc_e2e_rows"],
                               "variants": {k: _median_dicts(v) for k, v in runs.items()}}
        if out["variants"]["jetstream|small"]["rows_per_s"] < OLD_TARGETS["odbc_rows_per_s"]:
            log("odbc: cProfile of the end-to-end path")
            tiny = f"ficus_bench_{stamp}_tiny"
            try:
                run_json([*odbc, "--table", tiny, "--fill", "--rows", "30000"], 300)
                with nats_server() as url:
                    out["profile"] = profile_cmd([*odbc, "--table", tiny, "--measure", "jetstream", "--nats", url])
            finally:
                run_json([*odbc, "--table", tiny, "--drop"], 120)
        return out
    finally:
        for table in (big, small):
            try:
                run_json([*odbc, "--table", table, "--drop"], 120)
            except Exception:  # noqa: BLE001
                log(f"odbc: could not drop {table}")


# -- MLLP ACKs while a large 835 is ingested ---------------------------------------------------

def section_ack(c: dict[str, Any]) -> dict[str, Any]:
    """bench/ack_under_ingest.py with translation off the loop, then on it (the old path)."""
    args = ["-m", "bench.ack_under_ingest", "--megabytes", str(c["ack_mb"])]
    log("ack: translation off the loop")
    off = run_json(args, 3600)
    log("ack: translation on the loop")
    on = run_json([*args, "--on-loop"], 3600)
    return {"off": off, "on": on, "date": dt.datetime.now().isoformat(timespec="seconds")}


# -- issue 19 --------------------------------------------------------------------------------

def _missing(module: str) -> str | None:
    """Why a bench module cannot run here (another change brings it), else None."""
    if importlib.util.find_spec(module) is None:
        return f"not measured: {module} missing"
    return None


def _tried(what: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One child's figures, or {"error": reason}: one failing measurement must not lose the others."""
    try:
        return work()
    except subprocess.TimeoutExpired as exc:
        log(f"{what}: timed out")
        return {"error": f"timed out after {exc.timeout:.0f} s"}
    except Exception as exc:  # noqa: BLE001 - reported in its row
        log(f"{what} failed: {traceback.format_exc(limit=3)}")
        return {"error": _reason(exc)}


def _reason(exc: BaseException) -> str:
    """One line for a row: a child's command and the last line of its stderr (the exception)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0][:100] + (f" ... {lines[-1]}" if len(lines) > 1 else "") if lines else ""
    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        text = (tail.strip().splitlines() or [text])[-1]
    return f"{type(exc).__name__}: {text}"[:240]


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures of the good runs; ``runs`` keeps every run, ``errors`` the bad."""
    good = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    if not good:
        return {"error": errors[0] if errors else "no run", "runs": runs}
    out = _median_dicts(good)
    out["runs"] = good
    if errors:
        out["errors"] = errors
    return out


def _rounds(c: dict[str, Any], what: str, children: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """``reps`` rounds of each child in turn (A B C, A B C...), then medians per child."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rep in range(c["reps"]):
        log(f"{what}: round {rep + 1}/{c['reps']}")
        for name, work in children.items():
            runs[name].append(_tried(f"{what} {name}", work))
    return {name: _medians(v) for name, v in runs.items()}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def section_publisher(c: dict[str, Any]) -> dict[str, Any]:
    """Fast-ingest against the pre-encoded one-ack-per-message ceiling, rounds on one nats-server."""
    load = [_load()]
    with nats_server() as url:
        def who(name: str) -> Callable[[], dict[str, Any]]:
            return lambda: run_json(["-m", "bench.fast_ingest", "publish", url, "--who", name,
                                     "--seconds", str(c["publish_seconds"])], timeout=c["publish_seconds"] + 240)
        variants = _rounds(c, "publisher", {"ceiling": who("ceiling"), "fast-ingest": who("fast-ingest")})
    load.append(_load())
    return {"variants": variants, "seconds": c["publish_seconds"], "load": load}


def _generate(module: str, path: Path, mb: int, timeout: float = 1800) -> None:
    subprocess.run([PY, "-m", module, "--size", str(mb), "--path", str(path), "--generate-only"], cwd=REPO,
                   check=True, capture_output=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def section_files(c: dict[str, Any]) -> dict[str, Any]:
    """CSV and 835 end to end (folder interface, fast ingest on) against translation alone of the
    same file, interleaved rounds."""
    load = [_load()]
    with tempfile.TemporaryDirectory(prefix="ficus-bench-files-") as tmp:
        csv, x12 = Path(tmp) / "export.csv", Path(tmp) / "export.835"
        _generate("bench.flat_csv", csv, c["files_csv_mb"])
        _generate("bench.x12_835", x12, c["files_x12_mb"])

        def child(args: list[str]) -> Callable[[], dict[str, Any]]:
            return lambda: run_json(args, 1800)

        variants = _rounds(c, "files", {
            "csv|translate": child(["-m", "bench.flat_csv", "--path", str(csv), "--mode", "ficus"]),
            "csv|e2e": child(["-m", "bench.file_pipeline", "--path", str(csv), "--format", "csv",
                              "--fast-ingest", "on"]),
            "835|translate": child(["-m", "bench.x12_835", "--path", str(x12), "--mode", "ficus"]),
            "835|e2e": child(["-m", "bench.file_pipeline", "--path", str(x12), "--format", "x12-835",
                              "--fast-ingest", "on"]),
            # The same with the interface's translate_process: chunks translated in a child process.
            "csv|e2e-child": child(["-m", "bench.file_pipeline", "--path", str(csv), "--format", "csv",
                                    "--fast-ingest", "on", "--translate-process", "on"]),
            "835|e2e-child": child(["-m", "bench.file_pipeline", "--path", str(x12), "--format", "x12-835",
                                    "--fast-ingest", "on", "--translate-process", "on"]),
        })
    load.append(_load())
    return {"variants": variants, "csv_mb": c["files_csv_mb"], "x12_mb": c["files_x12_mb"], "load": load}


def section_vs_base(c: dict[str, Any]) -> dict[str, Any]:
    """bench/translate_vs_base.py: this checkout's translation against the base commit's, side by side."""
    load = [_load()]
    out = _tried("vs-base", lambda: run_json(["bench/translate_vs_base.py", "--json", "--rounds",
                                              str(c["vs_base_rounds"])], 1800))
    load.append(_load())
    return {**out, "load": load}


def section_raw(c: dict[str, Any]) -> dict[str, Any]:
    """bench/raw_archive.py: a file's raw copy into the object store, MB/s."""
    missing = _missing("bench.raw_archive")
    if missing:
        return {"missing": missing}
    load = [_load()]
    out = _tried("raw", lambda: run_json(["-m", "bench.raw_archive", "--mb", str(c["raw_mb"]), "--json"], 1800))
    load.append(_load())
    return {**out, "load": load}


def section_mllp_ratio(c: dict[str, Any]) -> dict[str, Any]:
    """bench/mllp_ratio.py per kind: Ficus against the same-writes minimal loop, rate and p99 at half rate."""
    missing = _missing("bench.mllp_ratio")
    if missing:
        return {"missing": missing}
    load = [_load()]
    kinds: dict[str, dict[str, Any]] = {}
    def one(kind: str) -> Callable[[], dict[str, Any]]:
        return lambda: run_json(["-m", "bench.mllp_ratio", "--kind", kind, "--seconds",
                                 str(c["mllp_ratio_seconds"]), "--json"], c["mllp_ratio_seconds"] * 60 + 600)

    for kind in ("adt", "dft"):
        log(f"mllp-ratio: {kind}")
        kinds[kind] = _tried(f"mllp-ratio {kind}", one(kind))
    load.append(_load())
    return {"kinds": kinds, "load": load}


def section_odbc_ratio(c: dict[str, Any]) -> dict[str, Any]:
    """bench/odbc_poll.py on PostgreSQL: the odbc interface of a Service end to end (its own
    nats-server per run) against poll + map of the same table without publishing, interleaved."""
    table = f"ficus_bench_{time.time_ns() % 10**9}_ratio"
    odbc = ["-m", "bench.odbc_poll", "--table", table]
    load = [_load()]
    try:
        fill = run_json([*odbc, "--fill", "--rows", str(c["odbc_ratio_rows"])], 900)

        def ficus() -> dict[str, Any]:
            with nats_server() as url:
                return run_json([*odbc, "--measure", "ficus", "--nats", url], 1800)

        variants = _rounds(c, "odbc-ratio", {"map": lambda: run_json([*odbc, "--measure", "map"], 1800),
                                             "ficus": ficus})
    finally:
        try:
            run_json([*odbc, "--drop"], 120)
        except Exception:  # noqa: BLE001
            log(f"odbc-ratio: could not drop {table}")
    load.append(_load())
    return {"variants": variants, "rows": c["odbc_ratio_rows"], "fill": fill, "load": load}


def section_memory(c: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of a CSV and an 835 of ``big_mb`` MB through a folder interface end to end."""
    mb = c["big_mb"]
    load = [_load()]
    out: dict[str, Any] = {"mb": mb}
    with tempfile.TemporaryDirectory(prefix="ficus-bench-memory-") as tmp:
        timeout = max(1800.0, mb * 3.0)  # ~15 minutes a GB end to end here; twice that before giving up
        log(f"memory: CSV, {mb} MB")
        out["csv"] = _tried("memory csv", lambda: run_json(["-m", "bench.file_pipeline", "--size", str(mb)], timeout))
        x12 = Path(tmp) / "big.835"

        def x12_run() -> dict[str, Any]:
            _generate("bench.x12_835", x12, mb, timeout)
            return run_json(["-m", "bench.file_pipeline", "--path", str(x12), "--format", "x12-835"], timeout)

        log(f"memory: 835, {mb} MB")
        out["835"] = _tried("memory 835", x12_run)
    load.append(_load())
    return {**out, "load": load}


def section_flip(c: dict[str, Any]) -> dict[str, Any]:
    load = [_load()]
    out = _tried("flip", lambda: run_json(["-m", "bench.flip", "--flips", str(c["flips"])], 600))
    return {**out, "load": [*load, _load()]}


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "publisher": section_publisher, "files": section_files, "vs-base": section_vs_base, "raw": section_raw,
    "mllp-ratio": section_mllp_ratio, "odbc-ratio": section_odbc_ratio, "memory": section_memory,
    "flip": section_flip,
    "legacy-translate": section_translate, "legacy-mllp": section_mllp, "legacy-x12": section_x12,
    "legacy-csv": section_csv, "legacy-odbc": section_odbc, "ack": section_ack,
}
RESULT_KEYS = {"legacy-translate": "translate", "legacy-mllp": "mllp", "legacy-x12": "x12", "legacy-csv": "csv",
               "legacy-odbc": "odbc"}
"""Where a legacy section's figures go in the results (bench/report.py's old names)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs and smaller files (a smoke run)")
    parser.add_argument("--only", choices=SECTIONS + LEGACY, action="append", help="run only this section (repeatable)")
    parser.add_argument("--big-mb", type=int, help="MB of the memory section's files (default 1024; --quick: 16)")
    parser.add_argument("--render", type=Path, help="only rewrite docs/benchmarks.md from this results JSON")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    page = REPO / "docs" / "benchmarks.md"
    if args.render:
        report.write(json.loads(args.render.read_text()), page)
        return
    config = dict(QUICK if args.quick else FULL)
    if args.big_mb:
        config["big_mb"] = args.big_mb
    path = OUT / f"results-{dt.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if args.only and path.exists() else {"sections": {}}
    results.update({"machine": machine(), "quick": args.quick, "config": config, "targets": TARGETS,
                    "old_targets": OLD_TARGETS, "date": dt.datetime.now().isoformat(timespec="seconds")})
    started = time.perf_counter()
    ran: list[str] = []
    for name in args.only or SECTIONS:
        log(f"== {name}")
        t0 = time.perf_counter()
        try:
            section = RUNNERS[name](config)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other sections
            log(f"{name} failed: {traceback.format_exc()}")
            section = {"error": _reason(exc)}
        section["section_seconds"] = round(time.perf_counter() - t0, 1)
        section["quick"] = args.quick
        results["sections"][RESULT_KEYS.get(name, name)] = section
        ran.append(RESULT_KEYS.get(name, name))
        path.write_text(json.dumps(results, indent=1))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["load_at_end"] = list(os.getloadavg())
    results["calibration_s_at_end"] = calibration_seconds()
    results["ran"] = ran
    path.write_text(json.dumps(results, indent=1))
    log(f"results: {path} ({results['total_seconds']:.0f} s)")
    if args.no_docs:
        return
    report.write(results, page)
    log("docs/benchmarks.md: head and the sections of this run rewritten, the others kept as they were")


if __name__ == "__main__":
    main()
