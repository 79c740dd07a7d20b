"""router.progress: a throttled one-line report on a terminal, nothing elsewhere; `ficus translate` uses it."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from router import simulate
from router.progress import Progress
from tests.terminal import run as run_in_terminal
from tests.terminal import screen

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "router/examples/ficus.toml"
ROWS = 30_000
"""CSV records of the end-to-end file: about a second of translation, several redraws at 0.2 s."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal (it has no file descriptor, so 80 columns)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _term(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")


def test_redraws_at_most_once_per_interval_and_not_before_the_first() -> None:
    clock, term = Clock(), Terminal()
    bar = Progress(1050, "records", term, min_interval=0.2, clock=clock)
    assert bar.enabled
    clock.now += 0.1
    bar.advance(10)
    assert term.getvalue() == ""  # quick work shows nothing
    clock.now += 0.15
    bar.advance(10)
    assert term.getvalue().count("\r") == 1
    clock.now += 0.05
    bar.advance(10)
    bar.update(40)
    assert term.getvalue().count("\r") == 1
    clock.now += 0.2
    bar.advance(10)
    assert term.getvalue().count("\r") == 2
    assert screen(term.getvalue()) == "50 / 1,050 records (4%), 100 records/s, 0:10 left"


def test_rate_and_time_left_in_bytes_with_a_label() -> None:
    clock, term = Clock(), Terminal()
    bar = Progress(100 << 20, "bytes", term, label="big.835", clock=clock)
    clock.now += 2.0
    bar.update(25 << 20)
    assert screen(term.getvalue()) == "big.835: 25.0 MiB / 100.0 MiB (25%), 12.5 MiB/s, 0:06 left"
    clock.now += 3600
    bar.update(99 << 20)
    assert screen(term.getvalue()) == "big.835: 99.0 MiB / 100.0 MiB (99%), 28.1 KiB/s, 0:36 left"


def test_unknown_total_shows_count_and_rate_only() -> None:
    clock, term = Clock(), Terminal()
    bar = Progress(None, "messages", term, clock=clock)
    clock.now += 4.0
    bar.advance(1236)
    assert screen(term.getvalue()) == "1,236 messages, 309 messages/s"
    bar.update(5, total=20)  # a total learnt later
    clock.now += 1.0
    bar.advance(0)
    assert screen(term.getvalue()) == "5 / 20 messages (25%), 1.0 messages/s, 0:15 left"


def test_a_shorter_line_leaves_nothing_of_the_longer_one() -> None:
    clock, term = Clock(), Terminal()
    bar = Progress(None, "units", term, label="x.csv", clock=clock)
    clock.now += 0.5
    bar.update(10_000_000)
    clock.now += 5000
    bar.update(10)
    assert screen(term.getvalue()) == "x.csv: 10 units, 0.0 units/s"


def test_close_and_clear_erase_the_line() -> None:
    clock, term = Clock(), Terminal()
    with Progress(500, "records", term, clock=clock) as bar:
        clock.now += 1
        bar.update(100)
        assert screen(term.getvalue()).startswith("100 / 500 records")
        bar.clear()
        assert screen(term.getvalue()) == ""
        term.write("a dead letter\n")
        clock.now += 1
        bar.update(200)
        assert screen(term.getvalue()).startswith("200 / 500 records")
    assert screen(term.getvalue()) == ""
    assert "a dead letter\n" in term.getvalue()
    written = term.getvalue()
    clock.now += 1
    bar.advance()
    bar.close()
    assert term.getvalue() == written  # closed: silent


def test_label_control_characters_and_width() -> None:
    clock, term = Clock(), Terminal()
    bar = Progress(10, "records", term, label="a\x1b[2J\nb" + "x" * 200, clock=clock)
    clock.now += 1
    bar.advance()
    shown = screen(term.getvalue())
    assert shown.startswith("a?[2J?bxxx") and "\x1b" not in term.getvalue()
    assert len(shown) == 79  # one short of the 80 columns of a terminal of unknown width


def test_not_a_terminal_writes_nothing() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress(1000, "records", out, label="x.csv", clock=clock) as bar:
        assert not bar.enabled
        for _ in range(100):
            clock.now += 0.5
            bar.advance(10)
        bar.clear()
    assert out.getvalue() == ""
    assert bar.done == 1000


def test_dumb_terminal_and_explicit_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setenv("TERM", "dumb")
    dumb = Terminal()
    with Progress(10, stream=dumb, clock=clock) as bar:
        clock.now += 1
        bar.advance()
    assert dumb.getvalue() == ""
    forced_on, forced_off = io.StringIO(), Terminal()
    with Progress(10, stream=forced_on, enabled=True, clock=clock) as on, \
            Progress(10, stream=forced_off, enabled=False, clock=clock) as off:
        clock.now += 1
        on.advance()
        off.advance()
    assert "1 / 10 units (10%)" in forced_on.getvalue() and forced_off.getvalue() == ""


# --- `ficus translate` under a real pseudo-terminal ----------------------------------


def translate(csv: Path, events: Path, *, stderr_tty: bool) -> tuple[int, bytes]:
    """Runs `ficus translate` with events to a file and stderr on a pty or a pipe: (exit code, stderr)."""
    cmd = [sys.executable, "-m", "router.cli", "translate", "-c", str(EXAMPLE), "--interface", "billing-export",
           str(csv)]
    with events.open("wb") as out:
        code, _, err = run_in_terminal(cmd, stderr_tty=stderr_tty, stdout=out)
    return code, err


def without_time(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for e in events:
        e.pop("time")  # when it was translated
    return events


def test_translate_shows_progress_on_a_terminal_and_nothing_when_piped(tmp_path: Path) -> None:
    csv = tmp_path / "big.csv"
    csv.write_text(simulate.billing_export(7, rows=ROWS))

    code, terminal = translate(csv, tmp_path / "tty.jsonl", stderr_tty=True)
    assert code == 0, terminal
    text = terminal.decode()
    line = re.compile(r"big\.csv: [\d.]+ (B|KiB|MiB) / [\d.]+ MiB \(\d+%\), [\d.]+ (B|KiB|MiB)/s, \d+:\d\d left")
    assert line.search(text), text
    assert screen(text) == "", text  # erased at the end
    assert "\n" not in text  # no dead letters, no stray lines

    code, piped = translate(csv, tmp_path / "piped.jsonl", stderr_tty=False)
    assert code == 0 and piped == b""

    events = without_time(tmp_path / "tty.jsonl")
    assert len(events) == ROWS and events == without_time(tmp_path / "piped.jsonl")
