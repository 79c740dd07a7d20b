"""bench/report.py's issue 19 page (pure rendering, nothing measured): the results table states
each target with its figure, ceiling, ratio and met / NOT MET (or why there is no figure), and
`write` rewrites only the head and its own sections, keeping those other benches wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.run import TARGETS


def results(**sections: Any) -> dict[str, Any]:
    return {"date": "2026-12-01T01:00:00", "quick": False, "config": {"reps": 3}, "targets": TARGETS,
            "machine": {"nproc_cmd": 2, "load_at_start": [1.0, 1.0, 1.0]}, "load_at_end": [1.5, 1.2, 1.1],
            "sections": sections}


def runs(**figures: float) -> dict[str, Any]:
    return {**figures, "runs": [figures]}


GOOD: dict[str, dict[str, Any]] = {
    "publisher": {"variants": {"ceiling": runs(msgs_per_s=100_000), "fast-ingest": runs(msgs_per_s=85_000)}},
    "files": {"csv_mb": 16, "x12_mb": 16, "variants": {
        "csv|translate": runs(mb_per_s=4.0), "csv|e2e": runs(mb_per_s_decimal=2.0),  # 50 %: not met
        "835|translate": runs(mb_per_s=2.0), "835|e2e": runs(mb_per_s_decimal=1.6)}},  # 80 %: met
    "vs-base": {"base": "5c2625f", "kinds": {"adt": {"base": 1000, "current": 2500, "ratio": 2.5},
                                             "dft": {"base": 1000, "current": 1900, "ratio": 1.9}}},
    "raw": {"mb": 1024, "seconds": 10.0, "mb_per_s": 102.4, "peak_rss_mib": 40.0},
    "mllp-ratio": {"kinds": {
        "adt": {"ficus_msgs_per_s": 950, "loop_msgs_per_s": 1000, "ratio": 0.95, "half_rate": 475,
                "ficus_p99_ms": 3.0, "loop_p99_ms": 2.5, "p99_ratio": 1.2},
        "dft": {"ficus_msgs_per_s": 800, "loop_msgs_per_s": 1000, "ratio": 0.80, "half_rate": 400,
                "ficus_p99_ms": 4.0, "loop_p99_ms": 2.0, "p99_ratio": 2.0}}},
    "odbc-ratio": {"rows": 200_000, "variants": {"map": runs(steady_rows_per_s=40_000),
                                                 "ficus": runs(steady_rows_per_s=30_000)}},
    "memory": {"mb": 1024, "csv": {"peak_rss_mib": 120.0}, "835": {"peak_rss_mib": 300.0}},
    "flip": {"median_ms": 12.0, "max_ms": 20.0, "flips": 10},
}


def table(res: dict[str, Any]) -> list[list[str]]:
    lines = report.head(res)
    at = lines.index("## Results against the targets")
    rows = [line for line in lines[at:] if line.startswith("| ") and not line.startswith("| # ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def verdicts(res: dict[str, Any]) -> list[tuple[str, str]]:
    return [(row[0], row[-1]) for row in table(res)]


def test_each_target_has_its_row_with_met_or_not_met() -> None:
    got = verdicts(results(**GOOD))
    assert got == [
        ("1", "met"),  # 85 % of the ceiling
        ("2", "**NOT MET**"), ("2", "met"),  # CSV 50 %, 835 80 %
        ("3", "met"), ("3", "**NOT MET**"),  # ADT 2.5x, DFT 1.9x
        ("4", "met"),  # 102 MB/s
        ("5", "met"), ("5", "met"), ("5", "**NOT MET**"), ("5", "**NOT MET**"),  # DFT 80 %, p99 2.0x
        ("6", "met"),  # 75 %
        ("7", "met"), ("7", "**NOT MET**"),  # 835 at 300 MiB
        ("8", "met"),
    ]
    rows = table(results(**GOOD))
    assert rows[0][3:6] == ["85,000 msgs/s", "100,000 msgs/s", "85%"]
    assert rows[1][5] == "50%" and rows[10][5] == "75%"
    assert "1 GB" in rows[11][1] and "not 1 GB" not in rows[11][1]
    text = "\n".join(report.head(results(**GOOD)))
    assert "**9 met, 5 not met**" in text


def test_ratio_at_the_target_is_met() -> None:
    edge = dict(GOOD, **{"publisher": {"variants": {"ceiling": runs(msgs_per_s=1000),
                                                    "fast-ingest": runs(msgs_per_s=800)}}})
    assert verdicts(results(**edge))[0] == ("1", "met")
    under = dict(GOOD, **{"publisher": {"variants": {"ceiling": runs(msgs_per_s=1000),
                                                     "fast-ingest": runs(msgs_per_s=799)}}})
    assert verdicts(results(**under))[0] == ("1", "**NOT MET**")


def test_errors_missing_modules_and_sections_not_run_show_in_their_rows() -> None:
    res = results(**{
        "publisher": {"variants": {"ceiling": runs(msgs_per_s=1000), "fast-ingest": {"error": "timed out after 60 s"}}},
        "raw": {"missing": "not measured: bench.raw_archive missing"},
        "mllp-ratio": {"error": "CalledProcessError: boom"},
        "memory": {"mb": 16, "csv": {"peak_rss_mib": 50.0}, "835": {"error": "x"}},
    })
    got = dict((row[1], row[-1]) for row in table(res))
    rows = table(res)
    assert rows[0][-1] == "error: timed out after 60 s"
    assert [r[-1] for r in rows if r[0] == "4"] == ["not measured: bench.raw_archive missing"]
    assert [r[-1] for r in rows if r[0] == "5"] == ["error: CalledProcessError: boom"] * 4
    assert [r[-1] for r in rows if r[0] == "6"] == ["not measured: section not run"]
    memory = [r for r in rows if r[0] == "7"]
    assert memory[0][-1] == "met" and "16 MB file (**not 1 GB**" in memory[0][1]
    assert memory[1][-1] == "error: x"
    assert len(got) == len(rows)


def test_write_keeps_the_sections_other_benches_wrote(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# Benchmarks\n\nold intro\n\n## Machine\n\nold machine\n\n## Results against the targets\n\n"
        "| 1 | MLLP ingest | >= 10,000 msgs/s | 2,392 msgs/s | 0.24 | **MISS** |\n\n"
        "## 5. ODBC (PostgreSQL on loopback, psqlODBC)\n\nodbc text, kept\n\n"
        "## Site maps: translation under a 10-field field map\n\nsite maps, kept\n\n"
        "## 13. Fast-ingest batches and pipelined commits\n\n| a | b |\n\n### sub\n\nkept too\n")
    report.write(results(**GOOD), page)
    first = page.read_text()
    assert "old intro" not in first and "old machine" not in first and "**MISS**" not in first
    for kept in ("odbc text, kept", "site maps, kept", "## 13. Fast-ingest", "### sub", "kept too"):
        assert kept in first
    assert first.count("## Results against the targets") == 1 and first.count(report.DETAILS_TITLE) == 1
    assert first.index("## Results against the targets") < first.index("## 5. ODBC") < first.index("## 13.")
    assert "| 1 | Publisher" in first

    # Again, with the publisher failing: one table, one details section, the others unchanged.
    report.write(results(**dict(GOOD, publisher={"error": "boom"})), page)
    second = page.read_text()
    assert second.count("## Results against the targets") == 1 and second.count(report.DETAILS_TITLE) == 1
    assert "error: boom" in second
    assert second.split("## 5. ODBC")[1].split(report.DETAILS_TITLE)[0] == \
        first.split("## 5. ODBC")[1].split(report.DETAILS_TITLE)[0]


def test_write_on_the_real_page_keeps_every_foreign_section(tmp_path: Path) -> None:
    real = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    page = tmp_path / "benchmarks.md"
    page.write_text(real.read_text())
    report.write(results(**GOOD), page)
    before = [t for t, _ in report._split(real.read_text()) if t is not None and t not in report.HEAD_TITLES]
    after = [t for t, _ in report._split(page.read_text()) if t is not None and t not in report.HEAD_TITLES]
    assert [t for t in after if t != report.DETAILS_TITLE] == [t for t in before if t != report.DETAILS_TITLE]
    for title, lines in report._split(real.read_text()):
        if title is not None and title not in report.HEAD_TITLES and title != report.DETAILS_TITLE:
            assert "\n".join(lines).strip() in page.read_text()


def test_a_failing_child_or_a_missing_module_gives_a_reason_not_an_abort() -> None:
    from bench import run

    def fails() -> dict[str, Any]:
        raise RuntimeError("-m bench.flip failed (1): Traceback (most recent call last):\n  File x\nValueError: boom")

    assert run._tried("flip", fails) == {"error": "RuntimeError: -m bench.flip failed (1): Traceback (most recent "
                                                  "call last): ... ValueError: boom"}
    assert run._missing("bench.no_such_bench") == "not measured: bench.no_such_bench missing"
    assert run._missing("bench.flip") is None
    medians = run._medians([{"x": 1.0}, {"error": "timed out after 60 s"}, {"x": 3.0}])
    assert medians["x"] == 2.0 and medians["errors"] == ["timed out after 60 s"]
    assert run._medians([{"error": "e"}])["error"] == "e"
