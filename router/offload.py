"""CPU work bigger than one message, run off the event loop (issue 12 item 7).

Translating a file chunk (an 835 transaction of a thousand claims, 500 CSV records) or a
batch of database rows takes tens to hundreds of milliseconds of pure Python. On the loop
that is a pause for every MLLP connection of the process; in a worker thread the loop gets
the GIL back at every switch interval (``sys.getswitchinterval()``, 5 ms) while the thread
works, so an ACK waits a few milliseconds instead of the whole chunk.

Each call is awaited before the next is made, so a pipeline's units stay in order; the
callers bound a chunk (units or rows) so results come back to be published regularly.

The GIL switch is not the whole story: measured on a 1,500-claim 835 transaction, the loop's
longest pauses with the work in a thread were collections of the cyclic garbage collector,
50-100 ms each, started by the worker's allocations and holding the GIL throughout, as long
as the unit in memory is big (a parsed transaction and its events stay referenced by the
translator until it reads the next one). So a pipeline pauses the cyclic collector while it
works through a file or a batch (:func:`gc_paused`): reference counting still frees what the
chunks leave behind, and what is left over in cycles is collected once the work is done, or
at a chunk boundary every ``GC_PAUSE_MAX_SECONDS`` (one collection per that many seconds).

And the switch interval itself: a thread that wants the GIL waits up to one interval for a
busy worker to drop it, and the loop wants it at every wake-up (a read, a PubAck, a timer):
several times per MLLP message. At the default 5 ms an ACK paid tens of milliseconds while a
file was translated; so while such work is in progress the interval is ``SWITCH_SECONDS``.

``FICUS_TRANSLATE_ON_LOOP=1`` runs the work on the loop as before: for the benchmark
(bench/ack_under_ingest.py) and tests that compare the two, not for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
ON_LOOP_ENV = "FICUS_TRANSLATE_ON_LOOP"


def on_loop() -> bool:
    """True when the comparison switch asks for the old, on-loop path."""
    return os.environ.get(ON_LOOP_ENV, "") == "1"


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread (on the loop, as before, when the switch says so)."""
    if on_loop():
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


SWITCH_SECONDS = 0.0005
"""The GIL switch interval while work is off the loop (Python's default is 0.005)."""
GC_PAUSE_MAX_SECONDS = 30.0
"""The longest the cyclic collector stays paused before a collection at a chunk boundary."""
_lock = threading.Lock()
_holders = 0
_was_enabled = False
_paused_at = 0.0
_switch = 0.005


def busy() -> bool:
    """True while a file or a batch is worked on (some pipeline holds :func:`gc_paused`): work
    that can wait (the status views) gives the loop to it."""
    return _holders > 0


def freeze_heap() -> None:
    """Moves every object alive now (modules, config, schemas, the started service) into the
    collector's permanent generation, once start-up is done. A full collection -- the one a long
    file gets every ``GC_PAUSE_MAX_SECONDS``, and Python's own -- then traverses only what was
    made since: the imported modules alone cost 26 ms of each (72,000 objects), all of it a
    pause of every MLLP connection of the process. They live as long as the process anyway."""
    gc.collect()
    gc.freeze()


class GcPause:
    """A pipeline's hold on the paused collector; :meth:`breathe` between chunks."""

    def __init__(self, active: bool) -> None:
        self.active = active

    def breathe(self) -> None:
        """A full collection when the collector has been paused for too long (between chunks,
        when the loop is not waiting on the worker)."""
        global _paused_at
        if self.active and time.monotonic() - _paused_at > GC_PAUSE_MAX_SECONDS:
            gc.collect()
            _paused_at = time.monotonic()


@contextlib.contextmanager
def gc_paused() -> Iterator[GcPause]:
    """The cyclic collector paused and a short GIL switch interval while a file or a batch is
    worked on (several pipelines may overlap: both are restored when the last one is done).
    Not with the on-loop switch."""
    global _holders, _was_enabled, _paused_at, _switch
    if on_loop():
        yield GcPause(False)
        return
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            _paused_at = time.monotonic()
            gc.disable()
            _switch = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch, SWITCH_SECONDS))
        _holders += 1
    try:
        yield GcPause(True)
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                sys.setswitchinterval(_switch)
                if _was_enabled:
                    gc.enable()
