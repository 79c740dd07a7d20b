"""Signals for a long-running command (`ficus run`, `ficus demo`): the first SIGTERM or Ctrl-C
asks for an orderly stop, a second one exits at once, and a stop that overruns its deadline
ends the process anyway.

The second signal and the backstop use `os._exit` from a plain signal handler and a thread,
not the event loop: they must work when the loop is the thing that is stuck. Exiting that
way is safe by design: nothing is acknowledged to a sender, moved or checkpointed before it
is stored, so what was in flight is taken again at the next start; an embedded nats-server
gets SIGTERM when its parent dies (see router/embedded_guard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def flush_logs() -> None:
    """Writes out what the log handlers and stdio hold, before an `os._exit`."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(OSError, ValueError):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def exit_now(message: str, code: int) -> None:
    """One line on stderr, then exit without any cleanup (no thread joins, no loop teardown)."""
    flush_logs()
    try:
        os.write(2, f"ficus: {message}\n".encode())
    finally:
        os._exit(code)


def _second_signal(signum: int, _frame: object) -> None:
    exit_now(f"second signal ({signal.Signals(signum).name}): exiting now; work in flight is abandoned "
             "(not acknowledged, taken again at the next start)", 128 + signum)


def install(loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None], deadline_seconds: float) -> None:
    """First SIGTERM/SIGINT: `on_stop()`, and from then on a second one exits at once and the
    process exits with code 1 if it is still running `deadline_seconds` later."""

    def first(signum: int) -> None:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, _second_signal)
        backstop = threading.Timer(deadline_seconds, exit_now, (
            f"still running {deadline_seconds:g}s after {signal.Signals(signum).name}: exiting now", 1))
        backstop.daemon = True
        backstop.start()
        on_stop()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, first, sig)


def on_hangup(loop: asyncio.AbstractEventLoop, reload: Callable[[], None]) -> None:
    """SIGHUP: `reload()` (TLS certificates read again) and keep running, instead of the default
    of ending the process."""

    def hangup() -> None:
        logging.getLogger("ficus").info("SIGHUP: reloading TLS certificates")
        reload()

    loop.add_signal_handler(signal.SIGHUP, hangup)
