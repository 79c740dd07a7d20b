"""`ficus mapping test IFACE --expect EXPECTED.jsonl [FILES]`: a site's mapping tested like code.

The files are translated exactly as `ficus translate -c CONFIG --interface IFACE FILES` does
(the same function runs, so built-in, site field map and entry point mappings are all covered),
and the events and dead letters are compared with the expected ones, which are lines of the
same JSON (`ficus translate ... > EXPECTED.jsonl 2>&1` writes a first version; `--update` too).

Events are paired by message and position (`ficuscorrelation` and `subject`), so a changed
type or amount shows as a field difference, not as one event missing and another unexpected;
dead letters by file name and message number. `ficusraw` (where the file was read from) and a
dead letter's `file` directory are not compared, nor any `--ignore` path. Exit 0 when all is
as expected, 1 with a field-level diff otherwise.

The diff prints values: it is for a site's CI on its test messages, not for production traffic.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

__all__ = ["DEFAULT_IGNORED", "Entry", "MappingTestError", "compare", "main"]

#: Compared by no test: where the file was read from differs between a laptop and CI.
DEFAULT_IGNORED = frozenset(("ficusraw",))

Entry = dict[str, Any]
#: `ficus translate`'s command: its args (files, format, config, interface) -> exit code.
Translate = Callable[[argparse.Namespace], int]
_MISSING = object()


class MappingTestError(Exception):
    """The test cannot run (EXPECTED unreadable, no files): the CLI's usage error, exit 2."""


def _key(entry: Entry, seen: dict[tuple[str, ...], int]) -> tuple[str, ...]:
    """What pairs an actual entry with its expected one (the n-th of a repeated key stays n-th)."""
    if "reason" in entry and "specversion" not in entry:
        base: tuple[str, ...] = ("dead letter", Path(str(entry.get("file", ""))).name,
                                 str(entry.get("message", entry.get("line", entry.get("st_control", "")))))
    else:
        base = ("event", str(entry.get("ficuscorrelation", "")), str(entry.get("subject", "")))
    seen[base] = seen.get(base, 0) + 1
    return (*base, str(seen[base]))


def _keyed(entries: Iterable[Entry]) -> dict[tuple[str, ...], Entry]:
    seen: dict[tuple[str, ...], int] = {}
    return {_key(entry, seen): entry for entry in entries}


def _flat(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a JSON value as (dotted path, value); lists index as path[i]."""
    if isinstance(value, dict) and value:
        for name, item in value.items():
            yield from _flat(item, f"{path}.{name}" if path else name)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _flat(item, f"{path}[{i}]")
    else:
        yield path, value


def _ignored(path: str, ignore: frozenset[str]) -> bool:
    return any(path == i or path.startswith((f"{i}.", f"{i}[")) for i in ignore)


def _field_diff(expected: Entry, actual: Entry, ignore: frozenset[str]) -> list[str]:
    if "file" in expected and "reason" in expected:  # a dead letter: the file's directory may differ
        expected = {**expected, "file": Path(str(expected["file"])).name}
        actual = {**actual, "file": Path(str(actual.get("file", ""))).name}
    want, got = dict(_flat(expected)), dict(_flat(actual))
    lines = []
    for path in sorted(want.keys() | got.keys()):
        if _ignored(path, ignore):
            continue
        w, g = want.get(path, _MISSING), got.get(path, _MISSING)
        if w == g and type(w) is type(g):
            continue
        if g is _MISSING:
            lines.append(f"  {path}: expected {json.dumps(w)}, missing")
        elif w is _MISSING:
            lines.append(f"  {path}: not expected, got {json.dumps(g)}")
        else:
            lines.append(f"  {path}: expected {json.dumps(w)}, got {json.dumps(g)}")
    return lines


def _label(key: tuple[str, ...], entry: Entry) -> str:
    kind, first, second, nth = key
    suffix = "" if nth == "1" else f" (#{nth})"
    if kind == "dead letter":
        return f"dead letter {first} message {second}{suffix}"
    return f"event {second or '?'} of {first or '?'}{suffix} [{entry.get('type', '?')}]"


def compare(expected: list[Entry], actual: list[Entry], ignore: frozenset[str] = DEFAULT_IGNORED,
            ) -> tuple[list[str], dict[str, int]]:
    """The diff lines (empty when equal) and counts: compared, differing, missing, unexpected."""
    want, got = _keyed(expected), _keyed(actual)
    lines: list[str] = []
    counts = {"compared": 0, "differing": 0, "missing": 0, "unexpected": 0}
    for key, entry in want.items():
        found = got.get(key)
        if found is None:
            counts["missing"] += 1
            lines.append(f"missing {_label(key, entry)}")
            continue
        counts["compared"] += 1
        diff = _field_diff(entry, found, ignore)
        if diff:
            counts["differing"] += 1
            lines.append(f"{_label(key, entry)}:")
            lines.extend(diff)
    for key, entry in got.items():
        if key not in want:
            counts["unexpected"] += 1
            reason = f": {entry['reason']}" if "reason" in entry and "specversion" not in entry else ""
            lines.append(f"unexpected {_label(key, entry)}{reason}")
    return lines, counts


def _read_expected(path: Path) -> list[Entry]:
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{path}:{n}: not a JSON object")
        entries.append(entry)
    return entries


def _inputs_named(expected: list[Entry], base: Path) -> list[str]:
    """The files the expected entries came from (events' ficusraw file://...#L, dead letters'
    file), in order; a path that is not there is looked for next to the expected file."""
    names: list[str] = []
    for entry in expected:
        raw = str(entry.get("ficusraw", ""))
        name = raw.removeprefix("file://").partition("#")[0] if raw.startswith("file://") else None
        name = name or (str(entry["file"]) if "reason" in entry and "file" in entry else None)
        if name is None:
            continue
        path = Path(name)
        if not path.is_absolute():
            path = base / path
        if not path.exists() and (base / path.name).exists():
            path = base / path.name
        if str(path) not in names:
            names.append(str(path))
    return names


def _translate(translate: Translate, config: str, interface: str, files: list[str],
               ) -> tuple[list[Entry], list[str], int]:
    """What `ficus translate -c CONFIG --interface IFACE FILES` writes: its JSON lines (events
    and dead letters, in order), anything else it wrote to stderr, its exit code."""
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(files=files, format=None, config=config, interface=interface)
    with redirect_stdout(out), redirect_stderr(err):
        code = translate(args)
    entries: list[Entry] = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    other = []
    for line in err.getvalue().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
        elif line.strip():
            other.append(line)
    return entries, other, code


def main(args: argparse.Namespace, translate: Translate, stdout: TextIO | None = None) -> int:
    """Runs the test with `translate` (the CLI's own command, so its errors reach the CLI as they
    are); returns 0 when as expected, 1 with the diff printed; MappingTestError when it cannot run."""
    out = stdout or sys.stdout
    expect = Path(args.expect)
    ignore = DEFAULT_IGNORED | frozenset(args.ignore or ())
    expected: list[Entry] = []
    if expect.exists() or not args.update:
        try:
            expected = _read_expected(expect)
        except OSError as exc:
            raise MappingTestError(f"mapping test: cannot read {expect}: {exc.strerror or type(exc).__name__}") from exc
        except ValueError as exc:
            raise MappingTestError(f"mapping test: {exc}") from exc
    files = list(args.files) or _inputs_named(expected, expect.parent)
    if not files:
        raise MappingTestError(f"mapping test: no FILES given and {expect} names none (events' ficusraw, dead "
                         "letters' file)")
    actual, other, _ = _translate(translate, args.config, args.interface, files)
    for line in other:
        print(line, file=sys.stderr)
    if args.update:
        with expect.open("w", encoding="utf-8") as fh:
            for entry in actual:
                fh.write(json.dumps(entry) + "\n")
        print(f"{expect}: wrote {len(actual)} lines from {len(files)} files", file=out)
        return 0
    # Dead letters sort after events in `actual` (stderr after stdout): pairing is by key, not order.
    lines, counts = compare(expected, actual, ignore)
    for line in lines:
        print(line, file=out)
    summary = (f"{args.interface}: {counts['compared']} compared, {counts['differing']} differing, "
               f"{counts['missing']} missing, {counts['unexpected']} unexpected")
    print(summary if lines else f"{args.interface}: ok ({len(expected)} expected lines as translated)", file=out)
    return 1 if lines else 0
