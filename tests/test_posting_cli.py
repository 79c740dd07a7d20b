"""`ficus post` as a process, on the JSONL `ficus translate` writes: finance posting yesterday's events offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from canonical.posting.engine import post
from canonical.posting.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "fixtures" / "posting" / "rules.toml"
INPUTS = [ROOT / "fixtures/x12/balanced_2claims_plb.835", ROOT / "fixtures/x12/reversal_pair.835",
          ROOT / "fixtures/hl7/dft_p03_charge_and_credit.hl7", ROOT / "fixtures/hl7/adt_a01.hl7"]


def ficus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, cwd=ROOT,
                          timeout=timeout, check=False)


def translated(tmp_path: Path, *extra: Path) -> Path:
    """Events as `ficus translate` writes them (stdout), to a file."""
    proc = ficus("translate", *map(str, [*INPUTS, *extra]))
    assert proc.returncode == 0, proc.stderr.decode()
    path = tmp_path / "yesterday.jsonl"
    path.write_bytes(proc.stdout)
    return path


def test_post_reads_ficus_translate_output_and_writes_the_engines_bytes(tmp_path: Path) -> None:
    events = translated(tmp_path)
    out, rejects = tmp_path / "entries.jsonl", tmp_path / "rejects.jsonl"
    proc = ficus("post", "--rules", str(RULES), str(events), "--out", str(out), "--rejects", str(rejects))
    assert proc.returncode == 0, proc.stderr.decode()
    assert rejects.read_bytes() == b""
    rules = load_rules(RULES)
    lines = events.read_bytes().splitlines()
    expected = b"".join(e.to_json() + b"\n" for raw in lines for e in post(json.loads(raw), rules).entries)
    assert out.read_bytes() == expected and expected
    entries = [json.loads(line) for line in out.read_bytes().splitlines()]
    debits = sum(Decimal(ln["debit"]) for e in entries for ln in e["data"]["lines"])
    skipped = sum(1 for raw in lines if post(json.loads(raw), rules).skipped)
    summary = proc.stderr.decode().strip().splitlines()[-1]
    assert summary == (f"ficus: post: {len(lines)} events, {len(entries)} entries, {skipped} skipped, 0 refused, "
                       f"money at risk 0, debits {debits} = credits {debits} (rules 2026.11-1)")
    # Same file, same rules: the same bytes again (on stdout this time).
    again = ficus("post", "--rules", str(RULES), str(events))
    assert again.returncode == 0 and again.stdout == out.read_bytes()


def test_refusals_go_to_rejects_with_money_at_risk_and_exit_1(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(RULES.parent, rules_dir)
    cost_centers = rules_dir / "cost_centers.csv"
    cost_centers.write_text(cost_centers.read_text(encoding="utf-8").replace("*,LAB,CC-LAB\n", ""), encoding="utf-8")
    events = translated(tmp_path)
    with events.open("ab") as f:
        f.write(b"not json\n")
    rejects = tmp_path / "rejects.jsonl"
    proc = ficus("post", "--rules", str(rules_dir / "rules.toml"), str(events), "--out", str(tmp_path / "e.jsonl"),
                 "--rejects", str(rejects))
    assert proc.returncode == 1, proc.stderr.decode()
    refusals = [json.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["reason"], r["money_at_risk"]) for r in refusals] == [
        ("rule charge-posted: unmapped cost center: NORTH/LAB is not in table cost_centers (account 4000)", "125.50"),
        ("not a JSON object (a canonical event per line expected)", "0"),
    ]
    first = refusals[0]
    assert first["event_type"] == "org.ficus.revenue.charge.posted.v1" and first["interface"] == "offline"
    assert first["source"] == str(events) and first["line"] > 1 and first["event_id"]
    assert ", 2 refused, money at risk 125.50, " in proc.stderr.decode().splitlines()[-1]


def test_bad_rules_or_arguments_exit_2(tmp_path: Path) -> None:
    events = translated(tmp_path)
    bad = tmp_path / "rules.toml"
    bad.write_text('version = "1"\n', encoding="utf-8")
    proc = ficus("post", "--rules", str(bad), str(events))
    assert proc.returncode == 2 and proc.stdout == b""
    err = proc.stderr.decode()
    assert f"ficus: post: {bad}: currency must be a non-empty string" in err
    assert f"ficus: post: {bad}: no [[rules]]" in err
    proc = ficus("post", "--rules", str(RULES), str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and "missing.jsonl: no such file" in proc.stderr.decode()
    proc = ficus("post", str(events))
    assert proc.returncode == 2 and "--rules" in proc.stderr.decode()
