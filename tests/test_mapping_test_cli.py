"""`ficus mapping test IFACE --expect EXPECTED.jsonl` as a site's CI runs it (issue 17 item 3):
a process, exit 0 when the events and dead letters are as expected, 1 with a field-level diff.

Run on the built-in DFT mapping (fixtures) and on an entry point mapping from a wheel
(tests/site_package.py) whose exception is an expected dead letter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import site_package

REPO = Path(__file__).resolve().parent.parent
HL7 = REPO / "fixtures" / "hl7"


def ficus(*args: str, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = [str(site)] if site else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO)])}
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def config(tmp: Path, mapping: str) -> Path:
    path = tmp / "ficus.toml"
    path.write_text(f"""
state_dir = "{tmp / 'state'}"

[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
mapping = "{mapping}"
route = "modern"
""")
    return path


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, entries: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_builtin_mapping_as_expected_then_a_field_level_diff(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    for name in ("dft_p03_charge_and_credit.hl7", "dft_p03_bad_amount.hl7"):
        shutil.copy(HL7 / name, feed / name)
    cfg = config(tmp_path, "hl7v2.dft_p03")
    expect = feed / "expected.jsonl"
    files = [str(feed / "dft_p03_charge_and_credit.hl7"), str(feed / "dft_p03_bad_amount.hl7")]
    made = ficus("mapping", "test", "his-charges", *files, "--expect", str(expect), "-c", str(cfg), "--update")
    assert made.returncode == 0, made.stderr
    written = lines(expect)
    events = [e for e in written if "specversion" in e]
    letters = [e for e in written if "reason" in e]
    assert len(events) >= 2 and len(letters) == 1

    ok = ficus("mapping", "test", "his-charges", *files, "--expect", str(expect), "-c", str(cfg))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"his-charges: ok ({len(written)} expected lines as translated)" in ok.stdout

    # The same test in another checkout: files next to EXPECTED, found from its lines (no FILES).
    ci = tmp_path / "ci"
    shutil.copytree(feed, ci)
    shutil.rmtree(feed)
    moved = ficus("mapping", "test", "his-charges", "--expect", str(ci / "expected.jsonl"), "-c", str(cfg))
    assert moved.returncode == 0, moved.stdout + moved.stderr

    # What a site's CI must catch: a changed amount and department, a changed type, an event
    # no longer produced (here: one more expected), a dead letter with another reason.
    first, second = dict(events[0]), dict(events[1])
    first["data"] = {**first["data"], "amount": "999.99", "department": "OLDDEPT"}  # type: ignore[dict-item]
    second["type"] = "org.ficus.revenue.charge.posted.v2"
    extra = {**first, "subject": "NOPE/FT1[9]"}
    letter = {**letters[0], "reason": "an older reason"}
    write(ci / "expected.jsonl", [first, second, *events[2:], extra, letter])
    diff = ficus("mapping", "test", "his-charges", "--expect", str(ci / "expected.jsonl"), "-c", str(cfg))
    assert diff.returncode == 1, diff.stdout + diff.stderr
    out = diff.stdout
    label = f"event {first['subject']} of {first['ficuscorrelation']} [{first['type']}]:"
    assert label in out
    got = events[0]["data"]
    assert f'  data.amount: expected "999.99", got {json.dumps(got["amount"])}' in out  # type: ignore[index]
    assert f'  data.department: expected "OLDDEPT", got {json.dumps(got["department"])}' in out  # type: ignore[index]
    assert f'  type: expected "org.ficus.revenue.charge.posted.v2", got "{events[1]["type"]}"' in out
    assert f"missing event NOPE/FT1[9] of {first['ficuscorrelation']}" in out
    assert f'  reason: expected "an older reason", got {json.dumps(letters[0]["reason"])}' in out
    assert "ficusraw" not in out  # where the file was read from is never compared
    assert f"his-charges: {len(events) + 1} compared, 3 differing, 1 missing, 0 unexpected" in out

    # --ignore takes a field out of the comparison.
    write(ci / "expected.jsonl", [{**events[0], "time": "2000-01-01T00:00:00+00:00"}, *events[1:], *letters])
    ignored = ficus("mapping", "test", "his-charges", "--expect", str(ci / "expected.jsonl"), "-c", str(cfg),
                    "--ignore", "time")
    assert ignored.returncode == 0, ignored.stdout
    assert ficus("mapping", "test", "his-charges", "--expect", str(ci / "expected.jsonl"),
                 "-c", str(cfg)).returncode == 1


def test_entry_point_mapping_with_an_expected_dead_letter(tmp_path: Path) -> None:
    site = site_package.install(tmp_path / "wheel")
    messages = tmp_path / "zch.hl7"
    messages.write_bytes(site_package.zch("Z1", [("ACC-1", "CARDIO", "R1", "2")])
                         + site_package.zch("Z2", [("ACC-2", "LAB", "R9", "1")]))
    cfg = config(tmp_path, "entrypoint:zcharges")
    expect = tmp_path / "expected.jsonl"
    made = ficus("mapping", "test", "his-charges", str(messages), "--expect", str(expect), "-c", str(cfg),
                 "--update", site=site)
    assert made.returncode == 0, made.stderr
    written = lines(expect)
    assert [e.get("subject") for e in written[:1]] == ["Z1/ZFT[1]"]
    assert str(written[1]["reason"]).startswith("mapping entrypoint:zcharges raised KeyError at charges.py:")
    assert ficus("mapping", "test", "his-charges", "--expect", str(expect), "-c", str(cfg),
                 site=site).returncode == 0

    # The site changes its rate table: the test names the event and the field.
    written[0]["data"] = {**written[0]["data"], "amount": "30.00"}  # type: ignore[dict-item]
    write(expect, written)
    diff = ficus("mapping", "test", "his-charges", "--expect", str(expect), "-c", str(cfg), site=site)
    assert diff.returncode == 1
    assert 'event Z1/ZFT[1] of SITEHIS^NORTH:Z1 [org.ficus.site.zcharge.recorded.v1]:\n' \
           '  data.amount: expected "30.00", got "25.00"\n' in diff.stdout


@pytest.mark.parametrize("args", [
    ("--expect", "/nonexistent/expected.jsonl"),
    ("--expect", "{tmp}/bad.jsonl"),
])
def test_usage_problems_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "bad.jsonl").write_text("not json\n")
    cfg = config(tmp_path, "hl7v2.dft_p03")
    result = ficus("mapping", "test", "his-charges", str(HL7 / "dft_p03_bad_amount.hl7"),
                   *(a.format(tmp=tmp_path) for a in args), "-c", str(cfg))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("ficus: mapping test: ")
