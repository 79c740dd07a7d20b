"""Translation rate of this checkout against a base commit, side by side in one run (not a test).

    PYTHONPATH=. .venv/bin/python bench/translate_vs_base.py [--base 5c2625f] [--rounds 7] [--seconds 0.5]

The base commit's ``canonical`` package is extracted with ``git archive`` into a temporary
directory; two worker processes (this script with ``--worker``) translate the same feeds, one
importing the base code (PYTHONPATH=<tmp>), one this checkout's. Rounds alternate between them
(base, current, base, current...) so both see the same load, and each rate is units per second
of the worker's own CPU time (``time.process_time``): on a shared machine the wall clock would
count the time spent waiting for a core. The best round of each side is kept.

Feeds (what a unit is): ``adt`` ADT^A01 messages and ``dft`` DFT^P03 with three FT1 (the
``bench.messages`` traffic, 1-2 KB each), ``csv`` rows of the billing export
(fixtures/flat/billing_export.toml, one charge each), ``835`` claims of a generated 835
(one service line, two adjustments per claim). Each unit is translated and every event
serialised with ``to_json``, as the router does before publishing.

``--dump KIND OUT`` (with ``--worker``'s feed directory) writes every event's JSON bytes and
every refusal (class, reason, attributes) of a feed or of the public corpus: the golden
differential test (tests/test_translate_golden.py) compares the base's dump with this code's.

The worker imports only ``canonical`` and the standard library (and pydantic), so it runs
against any commit whose ``canonical`` keeps these entry points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("adt", "dft", "csv", "835")
UNIT_NAMES = {"adt": "msg", "dft": "msg", "csv": "row", "835": "claim"}
RECEIVED = datetime(2024, 10, 16, 12, 0, tzinfo=UTC)


# --- feeds (made by the parent, with this checkout's bench.messages) --------------------------


def make_feeds(directory: Path, units: int) -> None:
    """Write the four feeds of about ``units`` units each into ``directory``."""
    if str(ROOT) not in sys.path:  # run as a script: the checkout's bench package makes the feeds
        sys.path.insert(0, str(ROOT))
    from bench.flat_csv import FIXTURES as FLAT
    from bench.messages import Feed
    from bench.x12_835 import transaction

    for kind in ("adt", "dft"):
        feed = Feed(kind, 1)
        msgs = [feed.get(0, i) for i in range(units)]
        assert not any(b"\n" in m for m in msgs)
        (directory / f"{kind}.hl7").write_bytes(b"\n".join(msgs) + b"\n")
    header = (FLAT / "billing_export.csv").read_bytes().splitlines(keepends=True)[0]
    rows = []
    for n in range(1, units + 1):
        amount = f"-{n % 900}.25" if n % 20 == 0 else f"{n % 900}.50"
        rows.append(f"T-{n:010d},CG,01/05/2024,01/06/2024,ACC-{n % 99991:05d},ENC-{n % 77777:05d},"
                    f"99213,99213,1,{amount},CLINIC,NORTH\n")
    (directory / "billing.csv").write_bytes(header + "".join(rows).encode("ascii"))
    shutil.copy(FLAT / "billing_export.toml", directory / "billing.toml")
    isa = "ISA*00*          *00*          *ZZ*BENCHPAYER     *ZZ*BENCHHOSP      *241015*1200*^*00501*000000001*0*P*:~\n"
    per_tx = 100
    txs = [transaction(st, per_tx) for st in range(1, max(1, units // per_tx) + 1)]
    body = isa + "GS*HP*BENCHPAYER*BENCHHOSP*20241015*1200*1*X*005010X221A1~\n" + "".join(txs)
    body += f"GE*{len(txs)}*1~\nIEA*1*000000001~\n"
    (directory / "remit.835").write_text(body, encoding="ascii")


# --- the worker: imports canonical from its PYTHONPATH ----------------------------------------


class Workload:
    """The feeds loaded once; ``run(kind, sink)`` translates one pass, returns its unit count."""

    def __init__(self, directory: Path) -> None:
        import tomllib

        from canonical.context import TranslationContext
        from canonical.flat import FlatSpec

        self.ctx = TranslationContext("bench", "live", "raw.bench/1", RECEIVED, "America/Chicago")
        self.hl7 = {kind: (directory / f"{kind}.hl7").read_bytes().split(b"\n")[:-1] for kind in ("adt", "dft")}
        self.csv = (directory / "billing.csv").read_bytes()
        self.spec = FlatSpec.model_validate(tomllib.loads((directory / "billing.toml").read_text(encoding="utf-8")))
        self.remit = (directory / "remit.835").read_bytes()

    def run(self, kind: str, sink: Callable[[Any], None], serialise: bool = True) -> int:
        if kind in ("adt", "dft"):
            return hl7_pass(self.hl7[kind], self.ctx, sink, serialise)
        if kind == "csv":
            return csv_pass(self.csv, self.spec, self.ctx, sink, serialise)
        return remit_pass(self.remit, "remit.835", self.ctx, sink, serialise)


def _json(event: Any) -> bytes:
    body: bytes = event.to_json()
    return body


def _unserialised(event: Any) -> Any:
    return event


def hl7_pass(messages: list[bytes], ctx: Any, sink: Callable[[Any], None], serialise: bool = True) -> int:
    from canonical.errors import CanonicalError
    from canonical.translate import translate_hl7

    for raw in messages:
        try:
            events = translate_hl7(raw, "hl7v2", ctx).events
        except CanonicalError as exc:
            sink(exc)
            continue
        out = _json if serialise else _unserialised
        for event in events:
            sink(out(event))
    return len(messages)


def csv_pass(data: bytes, spec: Any, ctx: Any, sink: Callable[[Any], None], serialise: bool = True) -> int:
    import io

    from canonical.flat import translate_flat

    out = _json if serialise else _unserialised
    rows = 0
    for outcome in translate_flat(io.BytesIO(data), spec, ctx, unit="sha-bench"):
        rows += 1
        if outcome.error is not None:
            sink(outcome.error)
        for event in outcome.events:
            sink(out(event))
    return rows


def remit_pass(data: bytes, name: str, ctx: Any, sink: Callable[[Any], None], serialise: bool = True) -> int:
    import io

    from canonical.x12.remit835 import translate_835

    out = _json if serialise else _unserialised
    claims = 0
    stream: BinaryIO = io.BytesIO(data)
    for result in translate_835(stream, ctx, source_name=name):
        if result.error is not None:
            sink(result.error)
            continue
        assert result.events is not None
        for event in result.events:
            claims += event.type.startswith("org.ficus.claims.claim.")
            sink(out(event))
    return claims


def _drop(_item: Any) -> None:
    pass


def rate(work: Workload, kind: str, seconds: float, serialise: bool = True) -> float:
    """Units per CPU second of this process over at least ``seconds`` of CPU time (``serialise``
    False: events built but not serialised, the translation without ``to_json``)."""
    units, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        units += work.run(kind, _drop, serialise)
    return units / elapsed


def _refusal(exc: Exception) -> bytes:
    attrs = {k: str(v) for k, v in sorted(vars(exc).items())}
    return b"X " + json.dumps([type(exc).__name__, str(exc), attrs], sort_keys=True).encode() + b"\n"


def dump(work: Workload, kind: str, out: BinaryIO, corpus: Path | None) -> None:
    """Every event's JSON (``E <json>``) and refusal (``X <class, reason, attributes>``) of a feed,
    or with ``kind`` ``corpus``, of every HL7 and X12 file of the public corpus and the fixtures."""

    def sink(item: Any) -> None:
        out.write(_refusal(item) if isinstance(item, Exception) else b"E " + item + b"\n")

    if kind != "corpus":
        work.run(kind, sink)
        return
    from canonical.errors import CanonicalError
    from canonical.flat import FlatSpec
    from canonical.hl7v2.batch import split_batch

    hl7_files = sorted((ROOT / "fixtures" / "hl7").glob("*.hl7"))
    x12_files = sorted((ROOT / "fixtures" / "x12").glob("*"))
    if corpus is not None:
        hl7_files += sorted(p for p in (corpus / "hl7").rglob("*") if p.is_file())
        x12_files += sorted(p for p in (corpus / "x12").rglob("*") if p.is_file())
    for path in hl7_files:
        out.write(b"F " + str(path.relative_to(path.parents[1])).encode() + b"\n")
        try:
            items = [item.raw for item in split_batch(path.read_bytes())]
        except CanonicalError as exc:
            sink(exc)
            continue
        hl7_pass(items, work.ctx, sink)
    for path in x12_files:
        out.write(b"F " + str(path.relative_to(path.parents[1])).encode() + b"\n")
        try:
            remit_pass(path.read_bytes(), path.name, work.ctx, sink)
        except CanonicalError as exc:
            sink(exc)
    import tomllib

    for toml in sorted((ROOT / "fixtures" / "flat").glob("*.toml")):
        spec = FlatSpec.model_validate(tomllib.loads(toml.read_text(encoding="utf-8")))
        for data in sorted(toml.parent.glob(toml.stem + ".*")):
            if data.suffix != ".toml":
                out.write(b"F " + data.name.encode() + b"\n")
                csv_pass(data.read_bytes(), spec, work.ctx, sink)


def worker(directory: Path, code: Path) -> None:
    """Answer ``rate KIND SECONDS`` and ``dump KIND PATH [CORPUS]`` lines on stdin, one JSON line each.

    Exits at once unless ``canonical`` was imported from ``code``: ficus is installed editable, so a
    base checkout missing from PYTHONPATH would silently measure the installed code instead."""
    import canonical

    imported = Path(canonical.__file__ or "").resolve()
    if not imported.is_relative_to(code.resolve()):
        raise SystemExit(f"canonical imported from {imported.parent}, not from {code}")
    work = Workload(directory)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "rate":
            answer: dict[str, Any] = {"rate": rate(work, args[0], float(args[1]), args[2:] != ["nojson"])}
        elif command == "dump":
            with open(args[1], "wb") as out:
                dump(work, args[0], out, Path(args[2]) if len(args) > 2 else None)
            answer = {"done": True}
        else:
            return
        print(json.dumps(answer), flush=True)


# --- the parent -------------------------------------------------------------------------------


def extract(base: str, into: Path) -> None:
    """The base commit's ``canonical`` package under ``into`` (CalledProcessError when unknown)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, "canonical"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


class Worker:
    """A ``--worker`` process importing ``canonical`` from ``code``."""

    def __init__(self, code: Path, feeds: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(code)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(feeds), "--code", str(code)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"worker exited ({self.proc.wait()}) on {line!r}")
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def compare(base: str, rounds: int, seconds: float, units: int, kinds: tuple[str, ...], *, serialise: bool = True,
            ) -> dict[str, dict[str, float]]:
    """{kind: {base, current, ratio}}: best rate of each side over alternating rounds."""
    extra = "" if serialise else " nojson"
    with tempfile.TemporaryDirectory(prefix="ficus-vs-base-") as tmp:
        code, feeds = Path(tmp) / "base", Path(tmp) / "feeds"
        code.mkdir()
        feeds.mkdir()
        extract(base, code)
        make_feeds(feeds, units)
        sides = {"base": Worker(code, feeds), "current": Worker(ROOT, feeds)}
        best = {kind: {"base": 0.0, "current": 0.0} for kind in kinds}
        try:
            for kind in kinds:  # one warm-up pass each (caches, first imports)
                for side in sides.values():
                    side.ask(f"rate {kind} 0.05")
            for n in range(rounds):
                order = list(sides.items()) if n % 2 == 0 else list(reversed(sides.items()))
                for kind in kinds:
                    for name, side in order:
                        rate = side.ask(f"rate {kind} {seconds}{extra}")["rate"]
                        best[kind][name] = max(best[kind][name], rate)
        finally:
            for side in sides.values():
                side.close()
    return {kind: {**b, "ratio": b["current"] / b["base"]} for kind, b in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="5c2625f", help="the commit to compare with (default 5c2625f)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="CPU seconds per round and side")
    parser.add_argument("--units", type=int, default=500, help="units per feed")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--no-json", action="store_true", help="build the events without serialising them")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        # This script's directory is not a package root: canonical comes from PYTHONPATH only.
        if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
            del sys.path[0]
        worker(args.worker, args.code)
        return
    kinds = tuple(args.kinds.split(","))
    result = compare(args.base, args.rounds, args.seconds, args.units, kinds, serialise=not args.no_json)
    if args.json:
        print(json.dumps({"base": args.base, "rounds": args.rounds, "seconds": args.seconds, "units": args.units,
                          "serialised": not args.no_json, "kinds": result}))
        return
    load = os.getloadavg()
    what = "events built, not serialised" if args.no_json else "events built and serialised (to_json)"
    print(f"base {args.base} vs this checkout, {what}; best of {args.rounds} alternating rounds of "
          f"{args.seconds} CPU s; Python {sys.version.split()[0]}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    for kind, r in result.items():
        unit = UNIT_NAMES[kind]
        print(f"{kind:>4}: base {r['base']:>9,.0f} {unit}/CPU s  current {r['current']:>9,.0f} {unit}/CPU s  "
              f"ratio {r['ratio']:.2f}x {'(>= 2x)' if r['ratio'] >= 2 else '(< 2x)'}")


if __name__ == "__main__":
    main()
