"""bench/report.py section 7 (MLLP ACKs during a large 835): it replaces only its own section
of docs/benchmarks.md, so `python -m bench.run --only ack` keeps the other sections' figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report


def result(p99: float) -> dict[str, Any]:
    window = {"messages": 100, "msgs_per_s": 200.0, "p50_ms": 1.0, "p99_ms": p99, "max_ms": p99 + 1,
              "over_50ms": 0, "codes": {"AA": 100}}
    return {"rate": 200.0, "megabytes": 50.0, "claims": 1000, "events": 4000, "ingest_seconds": 60.0,
            "ingest_mb_per_s": 0.8, "baseline": window, "during_ingest": window}


def test_splice_replaces_only_its_section(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nRun 2026-11-25.\n\n## 6. Flip latency\n\n| a | 11.5 ms |\n")
    report.splice(page, report.ack_under_ingest({"off": result(12.0), "on": result(250.0)}))
    first = page.read_text()
    assert "Run 2026-11-25." in first and "| a | 11.5 ms |" in first
    assert first.index("## 6. Flip latency") < first.index(report.ACK_TITLE)
    assert "12.00 ms" in first and "250.00 ms" in first

    report.splice(page, report.ack_under_ingest({"off": result(13.0), "on": result(240.0)}))
    second = page.read_text()
    assert second.count(report.ACK_TITLE) == 1
    assert "13.00 ms" in second and "12.00 ms" not in second
    assert "| a | 11.5 ms |" in second


def test_render_adds_the_summary_row() -> None:
    rows = report.ack_under_ingest({"off": result(12.0)})
    assert any("PASS" in row for row in rows)
    assert any("**MISS**" in row for row in report.ack_under_ingest({"off": result(80.0)}))


def test_the_summary_row_is_spliced_into_the_results_table(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Results against the targets\n\n"
                    "| # | what | target | measured | ratio | result |\n|---|---|---|---|---|---|\n"
                    "| 6 | flip | < 1000 ms | 11.5 ms | 0.01 | PASS |\n\n## 1. MLLP\n\nx\n")
    report.splice_summary_row(page, report.ack_summary_row({"off": result(30.5)}))
    first = page.read_text()
    rows = [line for line in first.splitlines() if line.startswith("| 7 |")]
    assert len(rows) == 1 and "30.50 ms" in rows[0] and "PASS" in rows[0]
    assert first.index("| 6 | flip") < first.index("| 7 |") < first.index("## 1. MLLP")

    report.splice_summary_row(page, report.ack_summary_row({"off": result(80.0)}))
    second = page.read_text()
    rows = [line for line in second.splitlines() if line.startswith("| 7 |")]
    assert len(rows) == 1 and "80.00 ms" in rows[0] and "**MISS**" in rows[0]
    assert "| 6 | flip" in second and "x" in second.splitlines()
