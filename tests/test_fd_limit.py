"""`ficus run` lifts the open-files limit, and says so when the MLLP connection caps cannot fit.

Each case runs in a child process whose limits the test sets, so the test process keeps its own.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import logging, resource, sys
from router.cli import raise_fd_limit
from router.config import parse_config
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
ifaces = [{"name": f"in{i}", "kind": "hl7-mllp", "listen": "127.0.0.1:0", "route": "modern",
           "max_connections": 128} for i in range(2)]
cfg = parse_config({"interfaces": ifaces}, "probe", check_tables=False)
print(raise_fd_limit(cfg), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _probe(soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=limit)


def test_the_soft_limit_is_raised_to_the_hard_limit() -> None:
    result = _probe(300, 4096)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4096", "4096"]
    assert "open-files limit" not in result.stderr


def test_caps_that_do_not_fit_the_limit_are_reported() -> None:
    result = _probe(200, 400)  # 2 x 128 connections + headroom need 512
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["400", "400"]
    assert "open-files limit 400 is below the MLLP connection caps plus headroom (512)" in result.stderr
