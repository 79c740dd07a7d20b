"""Completeness rules on a fake clock: stable, marker and rename modes."""

from __future__ import annotations

import pytest

from wrappers.completeness import CompletenessRule, CompletenessTracker, is_temp_name, matches
from wrappers.file_source import FileRef


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(
    mode: str = "stable", patterns: tuple[str, ...] = ("*.hl7",), **kw: float | str
) -> tuple[CompletenessTracker, FakeClock]:
    clock = FakeClock()
    rule = CompletenessRule(mode=mode, **kw)  # type: ignore[arg-type]
    return CompletenessTracker(rule, patterns, clock), clock


def test_stable_needs_the_full_interval_unchanged() -> None:
    t, clock = tracker(stable_seconds=5)
    a = FileRef("a.hl7", 10, 1.0)
    assert t.observe([a]) == []
    clock.now += 4.9
    assert t.observe([a]) == []
    assert t.seconds_until_due() == pytest.approx(0.1)
    clock.now += 0.1
    assert t.observe([a]) == [a]
    assert t.seconds_until_due() is None  # already stable: nothing to wait for


def test_stable_restarts_on_size_or_mtime_change() -> None:
    t, clock = tracker(stable_seconds=5)
    t.observe([FileRef("a.hl7", 10, 1.0)])
    clock.now += 4
    grown = FileRef("a.hl7", 20, 1.0)
    assert t.observe([grown]) == []
    clock.now += 4
    touched = FileRef("a.hl7", 20, 2.0)  # same size, new mtime (second resolution)
    assert t.observe([touched]) == []
    clock.now += 5
    assert t.observe([touched]) == [touched]


def test_oldest_first_and_patterns_temp_names_excluded() -> None:
    t, _ = tracker(mode="rename", patterns=("*.hl7", "*.txt"))
    listing = [
        FileRef("new.hl7", 1, 30.0),
        FileRef("old.txt", 1, 10.0),
        FileRef("other.csv", 1, 5.0),
        FileRef(".hidden.hl7", 1, 1.0),
        FileRef("up.hl7.part", 1, 1.0),
        FileRef("up.tmp", 1, 1.0),
    ]
    assert [r.name for r in t.observe(listing)] == ["old.txt", "new.hl7"]


def test_marker_mode() -> None:
    t, _ = tracker(mode="marker", patterns=("*",))
    a = FileRef("a.hl7", 5, 1.0)
    assert t.observe([a]) == []
    assert t.observe([a, FileRef("a.hl7.done", 0, 2.0)]) == [a]
    assert t.observe([FileRef("b.hl7.done", 0, 2.0)]) == []  # a marker alone is nothing
    assert t.marker_of("a.hl7") == "a.hl7.done"


def test_marker_custom_suffix() -> None:
    t, _ = tracker(mode="marker", marker_suffix=".ok")
    a = FileRef("a.hl7", 5, 1.0)
    assert t.observe([a, FileRef("a.hl7.ok", 0, 1.0)]) == [a]


def test_finished_files_are_not_returned_again_until_they_change() -> None:
    t, _ = tracker(mode="rename")
    a = FileRef("a.hl7", 5, 1.0)
    assert t.observe([a]) == [a]
    t.mark_finished(a)
    assert t.observe([a]) == []
    rewritten = FileRef("a.hl7", 6, 2.0)
    assert t.observe([rewritten]) == [rewritten]


def test_finished_state_is_forgotten_when_the_file_goes() -> None:
    t, _ = tracker(mode="rename")
    a = FileRef("a.hl7", 5, 1.0)
    t.mark_finished(a)
    assert t.observe([]) == []
    assert t.observe([a]) == [a]  # it came back: a new delivery of the same file


def test_stable_zero_is_immediate() -> None:
    t, _ = tracker(stable_seconds=0)
    a = FileRef("a.hl7", 5, 1.0)
    assert t.observe([a]) == [a]


def test_helpers_and_validation() -> None:
    assert is_temp_name(".x.ficus-tmp") and is_temp_name("a.FILEPART") and is_temp_name("~lock")
    assert not is_temp_name("a.hl7")
    assert matches("a.HL7", ["*.HL7"]) and not matches("a.hl7", ["*.HL7"])
    with pytest.raises(ValueError):
        CompletenessRule(stable_seconds=-1)
    with pytest.raises(ValueError):
        CompletenessTracker(CompletenessRule(), [])
