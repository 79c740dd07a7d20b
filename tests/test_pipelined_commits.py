"""Pipelined commits of a file (router/file_pipeline.py): the next chunk is translated while the
one before is stored, yet chunks are committed one at a time, the resume point never passes a
chunk not wholly acknowledged, and a chunk translated ahead of a failed commit is cut again
from the resume point: every record stored once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from router.file_pipeline import BATCH, FilePipeline
from router.store import StoreUnavailable
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.test_files_restart import write_export
from tests.test_files_service import folder_iface

pytestmark = pytest.mark.integration
RECORDS = 6 * BATCH - 10  # six chunks of events, the last one short


async def _ingest_export(tmp_path: Path) -> None:
    """Drops an export of RECORDS records into the folder interface and waits until it is archived."""
    staging = tmp_path / "big.csv.part"
    write_export(staging, RECORDS)
    staging.rename(tmp_path / "in" / "big.csv")
    await wait_for(lambda: (tmp_path / "archive" / "big.csv").exists(), timeout=90, interval=0.1)


async def test_next_chunk_translated_while_one_commits_and_resume_point_waits_for_acks(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, complete="rename", legacy=None)],
                      state_dir=str(tmp_path / "state"))
    timeline: list[tuple[float, str, int]] = []
    resume_at_commit: list[tuple[int | None, int]] = []
    failures = 0
    async with service_factory(cfg) as svc:
        pipeline = svc.interfaces["billing"].pipeline
        assert isinstance(pipeline, FilePipeline)
        chunk_of = pipeline._chunk
        commit_of = pipeline._commit

        def chunk(units: Any, entry: Any, route: Any, start: int) -> Any:
            timeline.append((time.perf_counter(), "translate-start", start))
            return chunk_of(units, entry, route, start)

        async def commit(entry: Any, chunk: Any) -> None:
            nonlocal failures
            # Everything before this chunk is acknowledged and recorded: the resume point is its start.
            resume_at_commit.append((chunk.first, entry.next_record))
            timeline.append((time.perf_counter(), "commit-start", chunk.first))
            if chunk.first == 2 * BATCH and failures == 0:
                failures += 1  # JetStream does not acknowledge the third chunk, once
                raise StoreUnavailable("test: no acknowledgement")
            await commit_of(entry, chunk)
            timeline.append((time.perf_counter(), "commit-end", chunk.first))

        pipeline._chunk = chunk  # type: ignore[method-assign]
        pipeline._commit = commit  # type: ignore[method-assign]
        await _ingest_export(tmp_path)
    assert failures == 1
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == RECORDS
    # Each commit started from the resume point of the chunk before it, the failed one included,
    # and after the failure the file resumed at that chunk (not at the one translated ahead).
    assert all(first == resume for first, resume in resume_at_commit), resume_at_commit
    firsts = [first for first, _ in resume_at_commit]
    assert firsts == [0, BATCH, 2 * BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH, 5 * BATCH], firsts
    # Pipelined: the translation of a chunk began before the commit of the one before it ended.
    overlapped = [
        start for t, what, start in timeline if what == "translate-start" and start > 0
        and any(w == "commit-end" and s == start - BATCH and t < end for end, w, s in timeline)
    ]
    assert overlapped, timeline


async def test_with_an_mllp_listener_in_the_process_chunks_go_in_turn(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """Pipelining keeps JetStream and the GIL busy enough to hold MLLP ACKs (bench.ack_under_ingest:
    p99 158 ms against 37 ms in turn), so beside an MLLP listener a chunk is translated only once
    the one before is committed."""
    folder = folder_iface(tmp_path, complete="rename", legacy=None)
    cfg = make_config(nats_server.url, [folder, {"name": "adt", "route": "modern"}], state_dir=str(tmp_path / "state"))
    timeline: list[tuple[str, int]] = []
    async with service_factory(cfg) as svc:
        pipeline = svc.interfaces["billing"].pipeline
        assert isinstance(pipeline, FilePipeline) and not pipeline.pipelined
        chunk_of, commit_of = pipeline._chunk, pipeline._commit

        def chunk(units: Any, entry: Any, route: Any, start: int) -> Any:
            timeline.append(("translate-start", start))
            return chunk_of(units, entry, route, start)

        async def commit(entry: Any, chunk: Any) -> None:
            await commit_of(entry, chunk)
            timeline.append(("commit-end", chunk.first))

        pipeline._chunk = chunk  # type: ignore[method-assign]
        pipeline._commit = commit  # type: ignore[method-assign]
        await _ingest_export(tmp_path)
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == RECORDS
    expected = [("translate-start", 0)]
    for first in range(0, RECORDS, BATCH):
        expected.append(("commit-end", first))
        if first + BATCH < RECORDS:
            expected.append(("translate-start", first + BATCH))
    assert timeline == expected, timeline
