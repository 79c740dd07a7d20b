"""Golden differential: the events of the benchmark feeds and of the corpus, byte for byte as the
base commit (5c2625f, before the translation speed work of issue 19) made them.

The base commit's ``canonical`` package is extracted with ``git archive`` into a temporary
directory and run in a worker process (bench/translate_vs_base.py --worker, PYTHONPATH=<tmp>);
a second worker runs this checkout's code on the same inputs. Each dumps every event's JSON
(``CloudEvent.to_json()``, what the router publishes) and every refusal (error class, reason,
attributes), and the dumps must be equal: ADT, DFT (3 FT1), CSV rows and 835 claims of the
benchmark feeds, and every HL7 and X12 file of the public corpus ($FICUS_CORPUS) and of fixtures/.
A change that alters events on purpose (a new field, a new rule) moves ``BASE`` to its own commit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.translate_vs_base import ROOT, Worker, extract, make_feeds
from tests.conftest import corpus_root

BASE = "5c2625f"
UNITS = 300
KINDS = ("adt", "dft", "csv", "835", "corpus")


def _base_available() -> bool:
    if shutil.which("git") is None:
        return False
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BASE}^{{commit}}"], capture_output=True)
    return found.returncode == 0


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    if not _base_available():
        pytest.skip(f"git or commit {BASE} not available: the base code cannot be extracted")
    tmp = tmp_path_factory.mktemp("golden")
    code, feeds = tmp / "base", tmp / "feeds"
    code.mkdir()
    feeds.mkdir()
    extract(BASE, code)
    make_feeds(feeds, UNITS)
    corpus = corpus_root()
    out: dict[str, dict[str, bytes]] = {}
    for side, path in (("base", code), ("current", ROOT)):
        worker = Worker(path, feeds)
        try:
            for kind in KINDS:
                target = tmp / f"{side}.{kind}"
                worker.ask(f"dump {kind} {target}" + (f" {corpus}" if kind == "corpus" and corpus else ""))
                out.setdefault(kind, {})[side] = target.read_bytes()
        finally:
            worker.close()
    return out


def _first_difference(base: bytes, current: bytes) -> str:
    for n, (a, b) in enumerate(zip(base.split(b"\n"), current.split(b"\n"), strict=False), 1):
        if a != b:
            return f"line {n}:\n base    {a[:400]!r}\n current {b[:400]!r}"
    newline = b"\n"
    return f"lengths differ: {base.count(newline)} lines vs {current.count(newline)}"


@pytest.mark.parametrize("kind", KINDS)
def test_events_are_byte_for_byte_the_base_commits(kind: str, dumps: dict[str, dict[str, bytes]]) -> None:
    base, current = dumps[kind]["base"], dumps[kind]["current"]
    events = base.count(b"\nE ") + base.startswith(b"E ")
    if kind != "corpus":  # every unit of a feed translates
        assert b"\nX " not in b"\n" + base and events >= UNITS, (kind, events)
    else:  # the corpus (or the fixtures alone, without it) has refusals and events, both compared
        assert b"\nX " in base and events > (50 if corpus_root() else 5), events
    assert base == current, _first_difference(base, current)


def test_the_corpus_was_read(dumps: dict[str, dict[str, bytes]]) -> None:
    root = corpus_root()
    if root is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus (fixtures only)")
    files = dumps["corpus"]["base"].count(b"\nF ") + dumps["corpus"]["base"].startswith(b"F ")
    assert files >= len([p for p in (root / "hl7").rglob("*") if p.is_file()]), files


def test_the_worker_imports_the_code_it_is_given(tmp_path: Path) -> None:
    """A worker pointed at a directory without ``canonical`` must fail, not silently import the
    installed (editable) package: otherwise both sides could be the same code."""
    empty = tmp_path / "empty"
    empty.mkdir()
    worker = Worker(empty, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="worker exited"):
            worker.ask("dump adt " + str(tmp_path / "x"))
    finally:
        worker.close()
