"""When is a file complete? Pure decisions over directory listings, one tracker per source.

Files are read while still uploading when nobody asks this question (Mirth #2265, #1961).
Three answers, chosen per interface:

* ``stable`` -- size and mtime unchanged across observations spanning ``stable_seconds``
  (measured on our monotonic clock, never on the file's mtime: remote clocks are skewed
  and SFTP mtimes have whole-second resolution, so the mtime alone proves nothing).
* ``marker`` -- ready when ``<name><marker_suffix>`` exists (``.done`` by default); the
  uploader writes the marker after the file.
* ``rename`` -- ready as soon as the name matches a pattern: the uploader writes under a
  name that does not match (or a temp name) and renames into place.

Marker files and temp names (dot files, ``.tmp``, ``.part``, ...) are never returned. A
file finished by the source (:meth:`CompletenessTracker.mark_finished`) is not returned
again while it keeps the same size and mtime, even if archiving or deleting it failed.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from wrappers.file_source import FileRef

CompletenessMode = Literal["stable", "marker", "rename"]

TEMP_SUFFIXES: Final = (".tmp", ".temp", ".part", ".partial", ".filepart", ".crdownload", ".uploading", ".ficus-tmp")
"""Suffixes uploaders (WinSCP, FileZilla, curl, browsers, Ficus itself) write under."""


@dataclass(frozen=True, slots=True)
class CompletenessRule:
    """One interface's completeness settings."""

    mode: CompletenessMode = "stable"
    stable_seconds: float = 10.0
    """``stable`` mode: how long size and mtime must stay unchanged."""
    marker_suffix: str = ".done"
    """``marker`` mode: the marker of ``a.txt`` is ``a.txt.done``."""

    def __post_init__(self) -> None:
        if self.stable_seconds < 0:
            raise ValueError("stable_seconds must not be negative")
        if self.mode == "marker" and not self.marker_suffix:
            raise ValueError("marker mode needs a marker_suffix")


def is_temp_name(name: str) -> bool:
    """A name uploaders use while writing: a dot or ``~`` file, or a temp suffix."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith((".", "~")) or base.lower().endswith(TEMP_SUFFIXES)


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether the base name matches one of the glob patterns (case-sensitive)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in patterns)


@dataclass(slots=True)
class _Seen:
    size: int
    mtime: float
    since: float
    """Clock time of the first observation with this size and mtime."""


class CompletenessTracker:
    """Per-source state: what was seen when, and what was finished."""

    def __init__(
        self,
        rule: CompletenessRule,
        patterns: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not patterns:
            raise ValueError("at least one file pattern is required")
        self.rule = rule
        self.patterns = tuple(patterns)
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._finished: dict[str, FileRef] = {}

    def marker_of(self, name: str) -> str | None:
        """The marker file's name for ``name`` in marker mode, else None."""
        return name + self.rule.marker_suffix if self.rule.mode == "marker" else None

    def is_candidate(self, name: str) -> bool:
        """A data file name: matches a pattern, is no temp name and no marker."""
        if is_temp_name(name) or not matches(name, self.patterns):
            return False
        return not (self.rule.mode == "marker" and name.endswith(self.rule.marker_suffix))

    def observe(self, listing: Iterable[FileRef]) -> list[FileRef]:
        """Record one full listing of the directory; return the complete files, oldest first.

        ``listing`` holds every regular file present (markers and temp names included).
        """
        entries = list(listing)
        names = {ref.name for ref in entries}
        now = self._clock()
        candidates = [ref for ref in entries if self.is_candidate(ref.name)]
        self._forget_absent({ref.name for ref in candidates})
        unfinished = [ref for ref in candidates if self._finished.get(ref.name) != ref]
        ready = [ref for ref in unfinished if self._is_complete(ref, names, now)]
        ready.sort(key=lambda ref: (ref.mtime, ref.name))
        return ready

    def mark_finished(self, ref: FileRef) -> None:
        """Never return ``ref`` again while the file keeps this size and mtime."""
        self._finished[ref.name] = ref
        self._seen.pop(ref.name, None)

    def seconds_until_due(self) -> float | None:
        """Seconds until the earliest file now settling may be complete (stable mode)."""
        if self.rule.mode != "stable":
            return None
        now = self._clock()
        # Files already stable are not "due": waiting on them would spin.
        left = [seen.since + self.rule.stable_seconds - now for seen in self._seen.values()]
        pending = [seconds for seconds in left if seconds > 0]
        return min(pending) if pending else None

    def _is_complete(self, ref: FileRef, names: set[str], now: float) -> bool:
        mode = self.rule.mode
        if mode == "rename":
            return True
        if mode == "marker":
            return ref.name + self.rule.marker_suffix in names
        seen = self._seen.get(ref.name)
        if seen is None or seen.size != ref.size or seen.mtime != ref.mtime:
            self._seen[ref.name] = seen = _Seen(ref.size, ref.mtime, now)
        return now - seen.since >= self.rule.stable_seconds

    def _forget_absent(self, present: set[str]) -> None:
        """Drop state of files gone from the directory: memory stays bounded."""
        for table in (self._seen, self._finished):
            for name in [name for name in table if name not in present]:
                del table[name]
