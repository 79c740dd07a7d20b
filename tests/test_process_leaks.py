"""The autouse fixture `no_leaked_processes` (tests/conftest.py): a process a test leaves running
is found -- a child, a re-parented grandchild, a detached server naming the test's tmp dir --
killed by PID, and the test fails naming it; the machine's own processes are never named."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Proc, process_table, started_by_test

REPO = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    proc = process_table().get(pid)
    return proc is not None and proc.alive


def _wait_pid_file(path: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} not written in {timeout}s"
        time.sleep(0.02)
    return int(path.read_text())


def test_children_grandchildren_and_detached_servers_are_found(tmp_path: Path) -> None:
    before = {proc.key for proc in process_table().values()}
    assert started_by_test(process_table(), before, tmp_path) == []
    child = subprocess.Popen(["sleep", "300"])
    # A grandchild whose parent exits: re-parented, it keeps this process group.
    orphan_pid = tmp_path / "orphan.pid"
    subprocess.run(["sh", "-c", f"sleep 300 & echo $! > {orphan_pid}"], check=True)
    # A server detached into its own session: found by the tmp dir on its command line.
    detached_pid = tmp_path / "detached.pid"
    subprocess.run(["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(300)' {tmp_path} >/dev/null 2>&1 & "
                                f"echo $! > {detached_pid}"], check=True, start_new_session=True)
    pids = [child.pid, _wait_pid_file(orphan_pid), _wait_pid_file(detached_pid)]
    try:
        found = {proc.pid for proc in started_by_test(process_table(), before, tmp_path)}
        assert set(pids) <= found, (pids, found)
        # Without the tmp dir the detached one is not ours to name; and nothing older is named.
        assert pids[2] not in {proc.pid for proc in started_by_test(process_table(), before, None)}
        assert all(proc.key not in before for proc in started_by_test(process_table(), before, tmp_path))
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_test_that_leaks_fails_and_its_process_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "leaked.pid"
    test = tmp_path / "test_leaky.py"
    test.write_text(f"""
import subprocess
from pathlib import Path

def test_leaks():
    proc = subprocess.Popen(["sleep", "300"])
    Path({str(pid_file)!r}).write_text(str(proc.pid))
""")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", str(test)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    leaked = int(pid_file.read_text())
    assert f"left 1 process(es) running, killed now: pid {leaked} (sleep 300)" in out, out
    deadline = time.monotonic() + 30
    while _alive(leaked):
        assert time.monotonic() < deadline, f"pid {leaked} still alive"
        time.sleep(0.02)


def _fake(pid: int, ppid: int, pgrp: int, start: int = 1000) -> Proc:
    # state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    # priority nice threads itrealvalue starttime
    fields = ["S", ppid, pgrp, pgrp, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 1, 0, start]
    return Proc(pid, f"{pid} (x y) " + " ".join(map(str, fields)))


def test_processes_of_another_pytest_in_the_same_group_are_not_named() -> None:
    """Two suites started by one script share a process group; each names only its own."""
    me, group = os.getpid(), os.getpgrp()
    base = 4_000_000  # pids no real process has
    table = {
        me: _fake(me, os.getppid(), group),
        base + 1: _fake(base + 1, me, group),          # our child
        base + 2: _fake(base + 2, 1, group),           # an orphan in our group
        base + 3: _fake(base + 3, base + 9, group),    # the other pytest's child
        base + 9: _fake(base + 9, base + 8, group),    # the other pytest, its parent the script
        base + 8: _fake(base + 8, 1, group, start=1),  # the script (older than the test)
        base + 4: _fake(base + 4, 1, base + 4),        # someone else's daemon
    }
    before = {table[base + 8].key, table[me].key}
    found = {proc.pid for proc in started_by_test(table, before, None)}
    assert found == {base + 1, base + 2}
