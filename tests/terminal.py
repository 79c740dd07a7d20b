"""Running a command with its stderr on a real pseudo-terminal (or a pipe), for progress tests."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], *, stderr_tty: bool, stdout: int | IO[bytes] = subprocess.PIPE,
        timeout: float = 120) -> tuple[int, bytes, bytes]:
    """(exit code, stdout when piped else b"", stderr): stderr on a pty (TERM=xterm) or a pipe.
    The process is bounded by ``timeout`` and killed in any case."""
    env = {**os.environ, "TERM": "xterm"}
    master, slave = os.openpty() if stderr_tty else (-1, -1)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=slave if stderr_tty else subprocess.PIPE, cwd=REPO, env=env)
    try:
        if not stderr_tty:
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, out or b"", err
        os.close(slave)
        slave = -1
        got = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not chunk:
                break
            got += chunk
        else:
            raise AssertionError(f"{' '.join(cmd[2:4])} did not finish in {timeout} s")
        out = proc.stdout.read() if proc.stdout is not None else b""
        return proc.wait(timeout=30), out, bytes(got)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)


def screen(written: str) -> str:
    """What one terminal line shows after `written`: `\\r` returns to column 0, text overwrites."""
    line: list[str] = []
    col = 0
    for ch in written.replace("\r\n", "\n").split("\n")[-1]:
        if ch == "\r":
            col = 0
            continue
        if col < len(line):
            line[col] = ch
        else:
            line.append(ch)
        col += 1
    return "".join(line).rstrip()
