"""Log lines cannot be forged (issue 10, item 11): the CLI's formatter escapes control
characters in what it formats, so a file name with a newline stays on its line."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest

from router.cli import log_handler
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.test_files_service import BILLING, folder_iface


def _capture() -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = log_handler(stream)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    return stream, handler


def test_formatter_escapes_control_characters() -> None:
    stream, handler = _capture()
    log = logging.getLogger("ficus.test")
    old = log.level
    log.setLevel(logging.INFO)
    try:
        log.info("file %s done", "a\nFORGED INFO x\r\x1b[31m\x85\u2028.csv")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("with a traceback\nFORGED too")
    finally:
        logging.getLogger().removeHandler(handler)
        log.setLevel(old)
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")], lines
    assert "a\\nFORGED INFO x\\r\\x1b[31m\\x85\\u2028.csv done" in lines[0]
    assert any(line.startswith("Traceback") for line in lines), "tracebacks stay readable"


@pytest.mark.integration
async def test_a_newline_in_a_drop_file_name_cannot_forge_a_log_line(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path)], state_dir=str(tmp_path / "state"))
    stream, handler = _capture()
    ficus = logging.getLogger("ficus")
    old = ficus.level
    ficus.setLevel(logging.INFO)
    try:
        async with service_factory(cfg) as svc:
            stats = svc.interfaces["billing"].stats
            name = "a\nFORGED INFO line.csv"
            shutil.copy(BILLING, tmp_path / "in" / name)
            await wait_for(lambda: stats.acked == 1 and name.split("\n")[1] in stream.getvalue(), timeout=30)
    finally:
        logging.getLogger().removeHandler(handler)
        ficus.setLevel(old)
    lines = stream.getvalue().splitlines()
    assert [line for line in lines if "FORGED" in line], "the file name was logged"
    assert not [line for line in lines if line.startswith("FORGED")], lines
