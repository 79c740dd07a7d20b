"""File chunks translated in a child process (`translate_process`, router/file_child.py): the
same CSV, 835 and HL7 batch files through the in-process path and through the child store the
same messages (events, dead letters, ledger deltas), byte for byte but for the instants they
are made; a child killed mid-file, or a commit refused, gives a retry from the resume point
with nothing lost and nothing stored twice; `ficus run` killed with SIGKILL mid-file takes its
translator with it and, restarted, publishes every record exactly once.

Real components: a real Service (or `ficus run` as a process) on a real nats-server, a real folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

from bench.x12_835 import ISA, transaction
from router import names
from router.embedded_nats import EmbeddedNats
from router.file_child import ChunkTranslator
from router.file_pipeline import BATCH, FilePipeline
from router.store import StoreUnavailable
from tests.conftest import ServiceFactory, _read_all, assert_ledger_balances, make_config, stream_count, wait_for
from tests.ficus_proc import csv_folder_interface, free_port, terminate
from tests.test_files_restart import write_export
from tests.test_files_service import folder_iface
from tests.test_hl7_files import batch, message

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
COMPARED = (names.STREAM_CANONICAL, names.STREAM_SHADOW, names.STREAM_DLQ, names.STREAM_LEDGER)
"""The streams whose messages both paths must store alike (the manifest and raw stores hold
instants of their own: when a file was seen, updated)."""
_INSTANT = re.compile(rb'"(time|at|received_at|recorded_at|updated_at)": ?"[^"]*"')


def csv_file(path: Path) -> None:
    """Six chunks and a bit of records, two of them bad (dead letters), one in a chunk of its own."""
    write_export(path, 6 * BATCH + 7)
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",1,", b",x,", 1)  # QTY not a number
    lines[2 * BATCH + 5] = lines[2 * BATCH + 5].replace(b"01/05/2024", b"13/45/2024", 1)
    path.write_bytes(b"\n".join(lines))


def x12_file(path: Path) -> None:
    """Twelve 835 transactions of 60 claims (about 240 events each: a chunk of 500 events ends
    after the third), the third and the eighth unbalanced (dead letters)."""
    parts = [ISA, "GS*HP*BENCHPAYER*BENCHHOSP*20241015*1200*1*X*005010X221A1~\n"]
    for st in range(1, 13):
        text = transaction(st, 60)
        if st in (3, 8):
            text = text.replace(f"BPR*I*{60 * 150 - 10}.00", f"BPR*I*{60 * 150 - 9}.00", 1)
        parts.append(text)
    parts.append("GE*12*1~\nIEA*1*000000001~\n")
    path.write_text("".join(parts), encoding="ascii")


def hl7_file(path: Path) -> None:
    """An FHS/BHS batch of 1,300 DFTs (two events each: chunks of 250 messages), some bad."""
    path.write_bytes(batch([message(n, bad=n % 97 == 5) for n in range(1, 1301)]))


FILES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "csv": ("export.csv", csv_file, {}),
    "x12-835": ("remit.835", x12_file, {"format": "x12-835", "flat": None, "patterns": ["*.835"]}),
    "hl7v2": ("charges.hl7", hl7_file, {"format": "hl7v2", "flat": None, "patterns": ["*.hl7"], "ack_file": True}),
}


async def _run_file(nats_url: str, service_factory: ServiceFactory, tmp: Path, fmt: str, child: bool,
                    ) -> tuple[dict[str, list[tuple[bytes, dict[str, str]]]], bytes | None]:
    """The file of ``fmt`` through a folder interface; every stored message of COMPARED, and the
    batch ACK file when there is one."""
    name, write, extra = FILES[fmt]
    iface = folder_iface(tmp, complete="rename", **extra, translate_process=child)
    cfg = make_config(nats_url, [iface], state_dir=str(tmp / "state"), nats={"fast_ingest": True})
    async with service_factory(cfg) as svc:
        pipeline = svc.interfaces["billing"].pipeline
        assert isinstance(pipeline, FilePipeline) and (pipeline.translator is not None) == child
        stats = svc.interfaces["billing"].stats
        write(tmp / name)
        os.utime(tmp / name, (1709650800, 1709650800))  # the batch ACK's times are the file's mtime
        (tmp / name).rename(tmp / "in" / name)
        await wait_for(lambda: stats.acked == 1, timeout=120, interval=0.1)
        if child:
            assert pipeline.translator is not None and pipeline.translator.started == 1
    stored = {stream: await _read_all(nats_url, stream) for stream in COMPARED}
    acks = list((tmp / "legacy").glob("*.ack"))
    return stored, acks[0].read_bytes() if acks else None


async def _drop_everything(url: str) -> None:
    """Every stream of the server deleted: the next service starts from nothing."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name:
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def _without_instants(stored: dict[str, list[tuple[bytes, dict[str, str]]]]) -> dict[str, list[Any]]:
    """The messages with the instants they were made at blanked (a dead letter's `at`, ...)."""
    return {stream: [(_INSTANT.sub(rb'"\1":""', data), headers) for data, headers in messages]
            for stream, messages in stored.items()}


def _first_difference(there: dict[str, list[Any]], here: dict[str, list[Any]]) -> str:
    """Where the two paths' messages first differ (stream, position, keys), for the assertion."""
    a, b = _without_instants(there), _without_instants(here)
    for stream in COMPARED:
        for n, (x, y) in enumerate(zip(a[stream], b[stream], strict=True)):
            if x != y:
                if x[1] != y[1]:
                    return f"{stream} #{n}: headers {x[1]} != {y[1]}"
                left, right = json.loads(x[0]), json.loads(y[0])
                keys = sorted(k for k in {*left, *right} if left.get(k) != right.get(k))
                return f"{stream} #{n}: " + "; ".join(f"{k}: {left.get(k)!r} != {right.get(k)!r}" for k in keys)
    return "no difference"


@pytest.mark.parametrize("fmt", list(FILES))
async def test_child_stores_what_the_process_stores(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path, fmt: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here, here_ack = await _run_file(nats_server.url, service_factory, tmp_path / "a", fmt, child=False)
    await assert_ledger_balances(nats_server.url)
    await _drop_everything(nats_server.url)
    there, there_ack = await _run_file(nats_server.url, service_factory, tmp_path / "b", fmt, child=True)
    await assert_ledger_balances(nats_server.url)
    assert len(here[names.STREAM_CANONICAL]) > 2 * BATCH and here[names.STREAM_DLQ], "several chunks, dead letters"
    assert len(here[names.STREAM_LEDGER]) > 2, "a ledger delta per chunk"
    for stream in COMPARED:
        assert len(there[stream]) == len(here[stream]), stream
    # Byte for byte: the instants a dead letter or a delta was made at aside, the same messages
    # (payloads, Msg-Ids, headers) in the same order.
    assert _without_instants(there) == _without_instants(here), _first_difference(there, here)
    assert (there_ack is None) == (here_ack is None) == (fmt != "hl7v2")
    assert there_ack == here_ack


async def test_child_killed_mid_file_or_commit_refused_retries_from_the_resume_point(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """Commit of the second chunk refused once (NATS away: the pass is retried), then the child
    SIGKILLed after the fourth chunk: each time a new child cuts the file again from its resume
    point; every record is stored once, the ledger balances."""
    records = 8 * BATCH - 3
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, complete="rename", legacy=None,
                                                     translate_process=True)],
                      state_dir=str(tmp_path / "state"), nats={"fast_ingest": True})
    commits: list[tuple[int | None, int]] = []
    killed: list[int] = []
    refused = 0
    async with service_factory(cfg) as svc:
        pipeline = svc.interfaces["billing"].pipeline
        assert isinstance(pipeline, FilePipeline) and pipeline.translator is not None
        translator: ChunkTranslator = pipeline.translator
        commit_of = pipeline._commit

        async def commit(entry: Any, chunk: Any) -> None:
            nonlocal refused
            commits.append((chunk.first, entry.next_record))
            if chunk.first == BATCH and not refused:
                refused += 1
                raise StoreUnavailable("test: no acknowledgement")
            await commit_of(entry, chunk)
            if chunk.first == 3 * BATCH and not killed:
                assert translator.pid is not None
                killed.append(translator.pid)
                os.kill(translator.pid, signal.SIGKILL)

        pipeline._commit = commit  # type: ignore[method-assign]
        staging = tmp_path / "big.csv.part"
        write_export(staging, records)
        staging.rename(tmp_path / "in" / "big.csv")
        await wait_for(lambda: (tmp_path / "archive" / "big.csv").exists(), timeout=120, interval=0.1)
        assert translator.started == 3, "one child, a new one after the refused commit, one after the kill"
        entry = await pipeline.manifest.by_name("billing", "big.csv", *_size_mtime(tmp_path / "archive" / "big.csv"))
        assert entry is not None and entry.state == "done" and entry.next_record == records
    assert refused == 1 and killed
    firsts = [first for first, _ in commits]
    assert firsts == [0, BATCH, BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH, 5 * BATCH, 6 * BATCH, 7 * BATCH], firsts
    assert all(first == resume for first, resume in commits), commits
    events = await _read_all(nats_server.url, names.STREAM_CANONICAL)
    assert len(events) == records
    assert len({json.loads(data)["id"] for data, _ in events}) == records
    await assert_ledger_balances(nats_server.url)
    assert not _alive(killed[0])


def _size_mtime(path: Path) -> tuple[int, float]:
    st = path.stat()
    return st.st_size, st.st_mtime


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie not yet reaped is gone too
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with (task / "children").open() as fh:
            found += [int(p) for p in fh.read().split()]
    return found


async def test_kill_9_mid_file_takes_the_child_along_and_a_restart_resumes_exactly_once(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    records = 60_000
    (tmp_path / "in").mkdir()
    staging = tmp_path / "big.csv.part"
    write_export(staging, records)
    iface = csv_folder_interface("billing", tmp_path).replace('route = "modern"\n',
                                                              'route = "modern"\ntranslate_process = true\n', 1)
    conf = tmp_path / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp_path / 'state'}"
log_level = "INFO"
[nats]
url = "{nats_server.url}"
fast_ingest = true
[api]
listen = "127.0.0.1:{free_port()}"
{iface}""")
    cmd = [sys.executable, "-m", "router.cli", "run", "-c", str(conf)]
    first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        staging.rename(tmp_path / "in" / "big.csv")
        await wait_for(lambda: _some(nats_server.url, 5_000), timeout=90, interval=0.02)
        children = _children(first.pid)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    assert children, "a translator process ran"
    await wait_for(lambda: not any(_alive(pid) for pid in children), timeout=10)  # PR_SET_PDEATHSIG
    published = await stream_count(nats_server.url, names.STREAM_CANONICAL)
    assert 0 < published < records, f"killed mid-file ({published} events)"

    log = tmp_path / "second.log"
    with log.open("wb") as errfile:  # a file, not a pipe: a full pipe would block the service
        second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=errfile)
        try:
            await wait_for(lambda: (tmp_path / "archive" / "big.csv").exists(), timeout=180, interval=0.2)
            children = _children(second.pid)
        finally:
            await terminate(second)
    err = log.read_bytes().decode(errors="replace")
    assert second.returncode == 0, err[-2000:]
    assert "translator process" in err and "started" in err, err[-2000:]
    assert not any(_alive(pid) for pid in children), "the translator stopped with the service"
    events = await _read_all(nats_server.url, names.STREAM_CANONICAL)
    assert len(events) == records
    assert len({json.loads(data)["id"] for data, _ in events}) == records
    await assert_ledger_balances(nats_server.url)


async def _some(url: str, count: int) -> bool:
    return await stream_count(url, names.STREAM_CANONICAL) > count


async def test_beside_an_mllp_listener_the_child_cuts_one_chunk_at_a_time(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """Where an MLLP listener shares the process (no pipelined chunks), the child is granted one
    chunk at a time: it cuts the next only once the one before is committed, as in process."""
    records = 3 * BATCH + 1
    folder = folder_iface(tmp_path, complete="rename", legacy=None, translate_process=True)
    cfg = make_config(nats_server.url, [folder, {"name": "adt", "route": "modern"}], state_dir=str(tmp_path / "state"))
    aheads: list[int] = []
    async with service_factory(cfg) as svc:
        pipeline = svc.interfaces["billing"].pipeline
        assert isinstance(pipeline, FilePipeline) and not pipeline.pipelined and pipeline.translator is not None
        begin = pipeline.translator.begin

        def begun(job: Any) -> None:
            aheads.append(job.ahead)
            begin(job)

        pipeline.translator.begin = begun  # type: ignore[method-assign]
        staging = tmp_path / "big.csv.part"
        write_export(staging, records)
        staging.rename(tmp_path / "in" / "big.csv")
        await wait_for(lambda: (tmp_path / "archive" / "big.csv").exists(), timeout=90, interval=0.1)
    assert aheads == [1]
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == records


async def test_an_exception_in_the_child_fails_the_file_and_the_next_file_gets_a_new_child(tmp_path: Path) -> None:
    """An exception in the child (here: its file is gone) comes back as ChildFailed naming its
    type, not its text; the child is killed, and the next file is cut by a new one, whole."""
    from datetime import UTC, datetime

    from canonical.context import TranslationContext
    from router.config import FolderInterfaceConfig
    from router.file_child import ChildFailed, FileJob
    from router.manifest import FileEntry
    from router.routes import Route

    iface = folder_iface(tmp_path, legacy=None)
    cfg = make_config("nats://127.0.0.1:4222", [iface], state_dir=str(tmp_path / "state")).interfaces[0]
    assert isinstance(cfg, FolderInterfaceConfig)
    ctx = TranslationContext("billing", "live", "objectstore://x", datetime(2024, 3, 5, tzinfo=UTC))
    write_export(tmp_path / "good.csv", BATCH + 3)

    def job(path: Path) -> FileJob:
        return FileJob(str(path), cfg, FileEntry("billing", path.name, 1, 1.0, "ab" * 32), Route(mode="modern"),
                       ctx, None, False, False, False, None, None)

    translator = ChunkTranslator("billing")
    try:
        translator.begin(job(tmp_path / "gone.csv"))
        with pytest.raises(ChildFailed) as failed:
            await translator.next()
        assert failed.value.reason.startswith("translator process: FileNotFoundError"), failed.value.reason
        assert "gone.csv" not in failed.value.reason
        first = translator.pid
        await translator.abandon()
        assert first is not None and not _alive(first)

        translator.begin(job(tmp_path / "good.csv"))
        records = []
        while True:
            chunk, extras = await translator.next()
            records.append(chunk.out.records)
            if chunk.last:
                break
            translator.credit()
        assert records == [BATCH, 3] and extras is None and translator.started == 2
        assert len(chunk.out.events) == 3 and chunk.out.deltas and chunk.first == BATCH
    finally:
        await asyncio.to_thread(translator.close)
    assert translator.pid is None
