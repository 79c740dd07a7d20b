"""A one-line progress report on a terminal for long CLI work (`ficus translate`, replay).

On a terminal it redraws one line on its stream (units done, percentage and time left when the
total is known, rate), at most once per `min_interval`, and erases it at close; anywhere else
(a pipe, a file, a CI log, TERM=dumb) it writes nothing at all, so output meant for programs
stays clean. It shows counts and the caller's label (a file name), never data.

Not tqdm (its pipe silence fits): untyped, starts a monitor thread, ignores TERM=dumb, no public clock for tests.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

_DEFAULT_COLUMNS = 80


class Progress:
    """Progress of `total` units (None: unknown) on `stream` (None: sys.stderr at construction).

    `enabled` None shows it only when `stream` is a terminal and TERM is not `dumb`; True or
    False forces it. `unit` "bytes" is shown as KiB, MiB, GiB; any other unit as a count.
    Nothing is drawn before `min_interval` seconds have passed, so quick work shows nothing.
    A caller that writes other text to the same stream calls `clear()` first.
    """

    def __init__(self, total: int | None, unit: str = "units", stream: TextIO | None = None, *,
                 label: str = "", enabled: bool | None = None, min_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._enabled = _is_terminal(self._stream) if enabled is None else enabled
        self._total = total
        self._unit = unit
        # A file name may hold control characters that would move the cursor.
        self._label = "".join(c if c.isprintable() else "?" for c in label)
        self._min_interval = min_interval
        self._clock = clock
        self._start = self._last = clock()
        self._done = 0
        self._shown = 0  # characters of the line now on the terminal
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def done(self) -> int:
        return self._done

    @property
    def total(self) -> int | None:
        return self._total

    def advance(self, n: int = 1) -> None:
        """`n` more units done."""
        self._done += n
        self._tick()

    def update(self, done: int, total: int | None = None) -> None:
        """`done` units done in all; a `total` given replaces the one known."""
        self._done = done
        if total is not None:
            self._total = total
        self._tick()

    def clear(self) -> None:
        """Erases the line, if one is shown; the next redraw brings it back."""
        if self._shown:
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def close(self) -> None:
        """Erases the line and stops drawing; calling it again does nothing."""
        self.clear()
        self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _line(self, now: float) -> str:
        """The text of the progress line at `now` (a reading of the clock)."""
        amount = _bytes if self._unit == "bytes" else _number
        unit = "" if self._unit == "bytes" else f" {self._unit}"
        head = amount(self._done)
        if self._total is not None:
            head += f" / {amount(self._total)}{unit}"
            if self._total > 0:
                head += f" ({min(100, self._done * 100 // self._total)}%)"
        else:
            head += unit
        parts = [head]
        elapsed = now - self._start
        if elapsed > 0:
            rate = self._done / elapsed
            parts.append(f"{amount(rate)}{unit}/s")
            if self._total is not None and rate > 0:
                parts.append(f"{_duration(max(0, self._total - self._done) / rate)} left")
        text = ", ".join(parts)
        return f"{self._label}: {text}" if self._label else text

    def _tick(self) -> None:
        if not self._enabled or self._closed:
            return
        now = self._clock()
        if now - self._last < self._min_interval:
            return
        self._last = now
        # One character short of the width: a full line wraps on some terminals and \r then
        # returns to the wrapped part only.
        text = self._line(now)[: max(1, _columns(self._stream) - 1)]
        self._write("\r" + text + " " * max(0, self._shown - len(text)))
        self._shown = len(text)

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        tty = stream.isatty()
    except (OSError, ValueError):  # closed or detached
        return False
    return tty and os.environ.get("TERM") != "dumb"


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or _DEFAULT_COLUMNS
    except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation is both)
        return _DEFAULT_COLUMNS


def _number(n: float) -> str:
    return f"{n:,.0f}" if isinstance(n, int) or n >= 10 else f"{n:.1f}"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _duration(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
