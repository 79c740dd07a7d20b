"""File chunks translated in a child process (a file interface's ``translate_process``, issue 19).

In one process the worker thread that translates a file's chunks (router/offload.py) and the
event loop that commits them share one GIL: a CSV file went end to end at 46 % of the speed of
translation alone, an 835 at 56 % (docs/benchmarks.md, "Issue 19 targets"). With
``translate_process = true`` the pipeline's chunks are cut, translated, routed and prepared
(:func:`router.file_pipeline.cut_chunk`, the very code of the in-process path) in a child
process, and the pipeline's own process only commits them::

    parent (event loop)                             child (one per pipeline, reused)
    FileJob: path, config, entry, route, context ─▶ file_units from the resume point,
                                                    cut_chunk ... ─▶ pickled _Chunk
    commit chunk n, resume point, credit       ◀──  (at most AHEAD chunks not yet committed)

The child opens the same local file (the spool copy) and cuts exactly the chunks the
in-process path cuts -- by counts, from the resume point (``entry.next_record``) -- so each
chunk carries the same events, dead letters, parity and ledger deltas, whose batch id names
its record range. The parent commits them in order as before and advances the resume point
only after a chunk is acknowledged; it grants the child one more chunk (a credit) per chunk
committed, so the child is at most ``AHEAD`` chunks ahead.

Failures: an exception in the child (translation, pickling) comes back as :class:`ChildFailed`
naming its type, as a translation exception in the worker thread fails the file's attempt; a
child that dies (killed, out of memory) is the same (EOF on the pipe). Either way, and on any
failure of the parent while a file is in the child (a commit refused, a cancellation), the
child is killed and a new one is started for the next attempt: the file is retried from its
resume point, nothing lost or stored twice. The child dies with its parent (PR_SET_PDEATHSIG,
and EOF on the pipe); it is stopped at shutdown (:meth:`ChunkTranslator.close`).

The child is a fresh interpreter (``python -m router.file_child``: what multiprocessing's
``spawn`` start method does, never a ``fork`` of a parent that runs an event loop and threads,
minus spawn's import of the parent's ``__main__`` and its resource tracker process), talking
multiprocessing's ``Connection`` protocol over a socket pair; started once per pipeline, on its
first file, and reused for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from canonical.context import TranslationContext
from canonical.reference import ReferenceData
from router.config import FileInterfaceConfig
from router.embedded_guard import follow_parent
from router.manifest import FileEntry
from router.offload import gc_paused
from router.routes import Route
from router.store import Outgoing

if TYPE_CHECKING:
    from canonical.hl7v2.reader import MshHeader
    from router.file_pipeline import _Chunk

log = logging.getLogger("ficus.files")

AHEAD = 2
"""Chunks the child may have sent that the parent has not committed yet (flow control)."""
STOP_SECONDS = 5.0
"""How long a child asked to stop gets before it is killed."""


class ChildFailed(Exception):
    """The translator process failed a file: an exception there (its type and where, never its
    text, which may quote a record), or it exited. The file's attempt fails (set aside, retried)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (f"\n{detail}" if detail else ""))
        self.reason = reason


@dataclass
class FileJob:
    """What the child needs to cut a file's chunks as the pipeline would."""

    path: str
    cfg: FileInterfaceConfig
    entry: FileEntry
    route: Route
    ctx: TranslationContext
    reference: ReferenceData | None
    same_reference: bool
    """The reference snapshot sent with the job before (``reference`` is then None, not sent again)."""
    key_index: bool
    event_index: bool
    ack_mtime: float | None
    """The file's mtime when its batch ACK is collected (``ack_file``), else None."""
    traceparent: str | None
    """The trace the events carry (the file's span in the parent), or None (tracing off)."""
    ahead: int = AHEAD
    """Chunks the child may cut beyond those committed: 1 where an MLLP listener shares the
    parent's process (a chunk is cut only once the one before is committed, as in process)."""


AckExtras = tuple["MshHeader | None", list[bytes]]
"""An HL7 file's first header and every message's ACK, with its last chunk (``ack_file``)."""


class ChunkTranslator:
    """The pipeline's handle on its translator process: started on the first file, reused for the
    next, killed on a failure (a new one for the next attempt), stopped by :meth:`close`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reference: ReferenceData | None = None
        """The reference snapshot the child has (sent with an earlier job)."""
        self._has_reference = False
        self._pending: asyncio.Future[Any] | None = None
        self.started = 0
        """Child processes started (a test and the log see restarts)."""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _ensure(self) -> Connection:
        if self._proc is not None and self._conn is not None and self._proc.poll() is None:
            return self._conn
        self._reap()
        ours, theirs = socket.socketpair()
        # `python -m router.file_child`: multiprocessing's "spawn" (a fresh interpreter, never a fork
        # of this process and its threads), without its import of the parent's __main__ and its
        # resource tracker process; the pipe speaks multiprocessing's Connection (pickles, framed).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            # From the event loop's thread: PR_SET_PDEATHSIG follows the thread that started the child.
            proc = subprocess.Popen(
                [sys.executable, "-m", "router.file_child", str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd())
        except OSError as exc:
            ours.close()
            raise ChildFailed(f"translator process not started: {type(exc).__name__}") from exc
        finally:
            theirs.close()
        self._proc, self._conn = proc, Connection(ours.detach())
        self._reference, self._has_reference = None, False
        self.started += 1
        log.info("%s: translator process %s started", self.name, proc.pid)
        return self._conn

    def begin(self, job: FileJob) -> None:
        """Sends a file to the child (started if need be); its chunks come from :meth:`next`."""
        conn = self._ensure()
        if self._has_reference and job.reference is self._reference:
            job.same_reference, job.reference = True, None
        else:
            self._reference, self._has_reference = job.reference, True
        try:
            conn.send(("file", job))
        except (OSError, ValueError) as exc:
            raise ChildFailed(f"translator process unreachable: {type(exc).__name__}") from exc

    async def next(self) -> tuple[_Chunk, AckExtras | None]:
        """The file's next chunk, as the child cut it; raises ChildFailed."""
        conn = self._conn
        assert conn is not None
        self._pending = pending = asyncio.ensure_future(asyncio.to_thread(_receive, conn))
        try:
            message = await asyncio.shield(pending)
        finally:
            if pending.done():
                self._pending = None
        if message[0] == "chunk":
            return _unpacked(message[1], message[2]), message[3]
        if message[0] == "error":
            raise ChildFailed(f"translator process: {message[1]}", message[2])
        code = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = await asyncio.to_thread(self._proc.wait, 1.0)
        raise ChildFailed(f"translator process exited ({_exit_text(code)}) in the middle of a file")

    def credit(self) -> None:
        """One chunk committed: the child may cut one more."""
        assert self._conn is not None
        with contextlib.suppress(OSError, ValueError):  # gone: the next read says so
            self._conn.send(("credit", 1))

    async def abandon(self) -> None:
        """A file given up part way (a failure in the child or here, a cancellation): the child is
        killed, with whatever it cut ahead; the next file starts a new one."""
        proc, pending = self._proc, self._pending
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if pending is not None:  # the reading thread ends on the pipe's EOF
            while not pending.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()
            self._pending = None
        await asyncio.to_thread(self._reap)

    def close(self) -> None:
        """Stops the child (at shutdown): asked to stop, killed if it does not within STOP_SECONDS."""
        conn, proc = self._conn, self._proc
        if conn is not None and proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_SECONDS)
        self._reap()

    def _reap(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait()
        if conn is not None:
            conn.close()


_Wire = tuple[str, bytes, str, dict[str, str]]
"""An Outgoing message as sent: its fields in a tuple (pickled in 0.15 us, against 4.5 for the
object; made into an Outgoing again here in 1.4)."""
_LISTS = ("events", "letters", "index", "deltas")


def _packed(chunk: _Chunk) -> tuple[_Chunk, list[list[_Wire] | None]]:
    """A chunk as the child sends it: its messages as tuples beside it (in the child)."""
    out = chunk.out
    messages: list[list[_Wire] | None] = []
    for name in _LISTS:
        items: list[Outgoing] | None = getattr(out, name)
        messages.append(None if items is None else [(m.subject, m.payload, m.msg_id, m.headers) for m in items])
        setattr(out, name, None if items is None else [])
    out.tally = None  # summed into out.deltas already (Stage.prepare)
    return chunk, messages


def _unpacked(chunk: _Chunk, messages: list[list[_Wire] | None]) -> _Chunk:
    """The chunk with its messages made again (in the parent)."""
    out = chunk.out
    for name, items in zip(_LISTS, messages, strict=True):
        setattr(out, name, None if items is None else [Outgoing(*m) for m in items])
    return chunk


def _receive(conn: Connection) -> tuple[Any, ...]:
    """One message from the child (in a worker thread: unpickling a chunk holds no loop);
    ``("gone",)`` on EOF."""
    try:
        return cast(tuple[Any, ...], conn.recv())
    except (EOFError, OSError):
        return ("gone",)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"code {code}"


# -- the child ---------------------------------------------------------------------------------


class _ParentGone(Exception):
    """The pipe's other end is closed (the parent died or gave up the file)."""


def child_main(conn: Connection, parent: int) -> None:
    """The translator process: files, one after the other, until "stop" or EOF."""
    follow_parent(parent, signal.SIGKILL)  # SIGKILL when the parent dies; the pipe's EOF covers the rest
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the parent to act on
    from router import file_pipeline  # noqa: F401 - imported once, before the first file

    gc.collect()
    gc.freeze()
    state: dict[str, Any] = {"reference": None}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] != "file":  # a credit left over from the file before
            continue
        try:
            _translate(conn, message[1], state)
        except _ParentGone:
            return
        finally:
            gc.collect()


def _translate(conn: Connection, job: FileJob, state: dict[str, Any]) -> None:
    """One file's chunks, from its resume point, each sent once the parent allows it."""
    from router.file_pipeline import _Chunk, cut_chunk
    from router.file_units import Hl7Spec, file_units
    from router.hl7_files import AckFile
    from router.stage import Outcome, Stage
    from router.stats import InterfaceStats
    from wrappers.file_source import printable

    if not job.same_reference:
        state["reference"] = job.reference
    reference: ReferenceData | None = state["reference"]
    cfg, entry = job.cfg, job.entry
    store = SimpleNamespace(cfg=SimpleNamespace(key_index=job.key_index, event_index=job.event_index))
    stage = state.get("stage")
    if stage is None or state.get("stage_of") != (cfg.name, cfg.timezone, cfg.format, job.key_index,
                                                   job.event_index):
        stage = Stage(cfg.name, cast(Any, store), cast(Any, None), InterfaceStats(), timezone=cfg.timezone,
                      money_format=cfg.format)
        state["stage"], state["stage_of"] = stage, (cfg.name, cfg.timezone, cfg.format, job.key_index,
                                                    job.event_index)
    hl7 = Hl7Spec(cfg.hl7_mapping, cfg.encoding, cfg.fallback_encoding)
    credits = max(1, job.ahead)
    try:
        # The collector paused while the file is cut, as for the in-process worker thread.
        with gc_paused() as gc_pause, Path(job.path).open("rb") as fh:
            units = file_units(fh, cfg.format, cfg.flat, job.ctx, name=printable(entry.name), sha256=entry.sha256,
                               reference=reference, hl7=hl7)
            ack = AckFile(entry.sha256, job.ack_mtime) if job.ack_mtime is not None else None
            if ack is not None:
                units = ack.collect(units)
            start = entry.next_record
            while True:
                while credits == 0:
                    try:
                        message = conn.recv()
                    except (EOFError, OSError) as exc:
                        raise _ParentGone from exc
                    if message[0] == "credit":
                        credits += message[1]
                    elif message[0] == "stop":
                        raise _ParentGone
                chunk = cut_chunk(stage, units, entry, job.route, start,
                                  _Chunk(out=Outcome(traceparent=job.traceparent), next_record=start))
                extras = (ack.first, ack.acks) if ack is not None and chunk.last else None
                payload = pickle.dumps(("chunk", *_packed(chunk), extras), protocol=pickle.HIGHEST_PROTOCOL)
                try:
                    conn.send_bytes(payload)
                except OSError as exc:
                    raise _ParentGone from exc
                credits -= 1
                if chunk.last:
                    return
                start = chunk.next_record
                gc_pause.breathe()
    except _ParentGone:
        raise
    except Exception as exc:  # noqa: BLE001 - the file's own failure: sent, the parent fails its attempt
        where = "".join(traceback.format_tb(exc.__traceback__))  # frames only: the text may quote a record
        reason = getattr(exc, "reason", None)
        text = type(exc).__name__ + (f": {printable(str(reason))}" if isinstance(reason, str) and reason else "")
        try:
            conn.send(("error", text, where))
        except OSError as gone:
            raise _ParentGone from gone


def main(argv: list[str]) -> None:
    """``python -m router.file_child FD PARENT_PID``: the translator process of a pipeline."""
    from router import file_child  # the module proper, not this __main__: the jobs' classes are its own

    file_child.child_main(Connection(int(argv[1])), int(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
