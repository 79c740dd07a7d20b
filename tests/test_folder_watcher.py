"""Folder source on real files: start-up scan, slow writers, markers, renames, wake-ups,
archive/delete/leave."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.sshd import names
from wrappers.completeness import CompletenessRule
from wrappers.file_source import FileChanged, FileSourceError, printable
from wrappers.folder_watcher import FolderWatcher

MakeWatcher = Callable[..., FolderWatcher]


@pytest.fixture
async def make_watcher(tmp_path: Path) -> AsyncIterator[MakeWatcher]:
    made: list[FolderWatcher] = []
    inbox = tmp_path / "in"
    inbox.mkdir()

    def make(mode: str = "rename", patterns: tuple[str, ...] = ("*.hl7",), **kw: float) -> FolderWatcher:
        rule = CompletenessRule(mode=mode, **kw)  # type: ignore[arg-type]
        watcher = FolderWatcher("in", inbox, patterns, rule, poll_seconds=kw.get("poll", 30))
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        await watcher.close()


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


async def test_startup_scan_finds_files_that_arrived_while_down(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher()
    (watcher.directory / "b.hl7").write_bytes(b"b")
    (watcher.directory / "a.hl7").write_bytes(b"a")
    os.utime(watcher.directory / "a.hl7", (1, 1))  # older: comes first
    (watcher.directory / "notes.txt").write_bytes(b"x")
    refs = await watcher.scan()
    assert [r.name for r in refs] == ["a.hl7", "b.hl7"]
    spool = watcher.directory.parent / "spool"
    spool.mkdir()
    copy = await watcher.fetch(refs[0], spool)  # a snapshot in the spool, never the file itself
    assert copy == spool / "a.hl7" and copy.read_bytes() == b"a"
    assert (watcher.directory / "a.hl7").read_bytes() == b"a"


async def test_file_written_slowly_is_not_returned_before_complete(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("stable", stable_seconds=1)
    done = threading.Event()

    def write_slowly() -> None:
        with (watcher.directory / "slow.hl7").open("wb") as out:
            for _ in range(10):
                out.write(b"x" * 1000)
                out.flush()
                time.sleep(0.2)
        done.set()

    writer = asyncio.create_task(asyncio.to_thread(write_slowly))
    async with asyncio.timeout(20):
        while not done.is_set():
            assert await watcher.scan() == []
            await asyncio.sleep(0.05)
        await writer
        while not (refs := await watcher.scan()):
            await watcher.wait()  # wakes when the settling file may be stable (poll is 30 s)
    assert [(r.name, r.size) for r in refs] == [("slow.hl7", 10_000)]


async def test_marker_mode_and_archive_moves_the_marker_too(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("marker")
    inbox = watcher.directory
    (inbox / "a.hl7").write_bytes(b"a")
    assert await watcher.scan() == []
    (inbox / "a.hl7.done").write_bytes(b"")
    [ref] = await watcher.scan()
    (inbox / "archive").mkdir()
    (inbox / "archive" / "a.hl7").write_bytes(b"older a")
    await watcher.finish(ref, "archive", "archive")
    assert names(inbox) == ["archive"]
    assert names(inbox / "archive") == ["a.1.hl7", "a.hl7", "a.hl7.done"]
    assert (inbox / "archive" / "a.1.hl7").read_bytes() == b"a"


async def test_rename_mode_ignores_the_temp_name(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    temp = watcher.directory / ".a.hl7.tmp"
    temp.write_bytes(b"half")
    assert await watcher.scan() == []
    temp.rename(watcher.directory / "a.hl7")
    assert [r.name for r in await watcher.scan()] == ["a.hl7"]


async def test_wait_wakes_on_a_new_file(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    assert await watcher.scan() == []
    waiter = asyncio.create_task(watcher.wait())  # poll interval 30 s
    await asyncio.sleep(0.2)
    (watcher.directory / "a.hl7").write_bytes(b"a")
    await asyncio.wait_for(waiter, 5)
    assert [r.name for r in await watcher.scan()] == ["a.hl7"]


async def test_delete_removes_file_and_marker(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("marker")
    (watcher.directory / "a.hl7").write_bytes(b"a")
    (watcher.directory / "a.hl7.done").write_bytes(b"")
    [ref] = await watcher.scan()
    await watcher.finish(ref, "delete", None)
    assert names(watcher.directory) == []


async def test_leave_modifies_nothing_and_is_not_emitted_again(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("marker")
    (watcher.directory / "a.hl7").write_bytes(b"a")
    (watcher.directory / "a.hl7.done").write_bytes(b"")
    before = snapshot(watcher.directory)
    [ref] = await watcher.scan()
    path = await watcher.fetch(ref, watcher.directory.parent)
    assert path.read_bytes() == b"a"
    await watcher.finish(ref, "leave", None)
    assert snapshot(watcher.directory) == before
    assert await watcher.scan() == []
    (watcher.directory / "a.hl7").write_bytes(b"a new day")  # rewritten: a new file
    assert [r.size for r in await watcher.scan()] == [9]


async def test_failed_finish_raises_and_is_not_emitted_again(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    (watcher.directory / "a.hl7").write_bytes(b"a")
    (watcher.directory / "archive").write_bytes(b"a file where the archive dir should be")
    [ref] = await watcher.scan()
    with pytest.raises(FileSourceError, match=r"a\.hl7"):
        await watcher.finish(ref, "archive", "archive")
    assert await watcher.scan() == []


async def test_fetch_of_a_changed_file(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    (watcher.directory / "a.hl7").write_bytes(b"a")
    [ref] = await watcher.scan()
    (watcher.directory / "a.hl7").write_bytes(b"longer now")
    with pytest.raises(FileChanged):
        await watcher.fetch(ref, watcher.directory)


async def test_finish_leaves_a_file_renamed_over_the_snapshot(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    inbox = watcher.directory
    (inbox / "a.hl7").write_bytes(b"A")
    [ref] = await watcher.scan()
    copy = await watcher.fetch(ref, inbox.parent)
    (inbox / ".b.tmp").write_bytes(b"B, another file")
    (inbox / ".b.tmp").rename(inbox / "a.hl7")  # renamed over A after the snapshot
    with pytest.raises(FileChanged, match="changed under Ficus"):
        await watcher.finish(ref, "archive", "archive")
    assert names(inbox) == ["a.hl7"] and (inbox / "a.hl7").read_bytes() == b"B, another file"
    assert copy.read_bytes() == b"A", "the snapshot is A's bytes"
    [again] = await watcher.scan()  # B is a new file
    assert again.size == len(b"B, another file")
    await watcher.finish(again, "delete", None)
    assert names(inbox) == []


async def test_finish_leaves_a_grown_file_and_leave_never_touches_it(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    inbox = watcher.directory
    (inbox / "a.hl7").write_bytes(b"first part")
    [ref] = await watcher.scan()
    with (inbox / "a.hl7").open("ab") as writer:
        writer.write(b" and more")
    before = snapshot(inbox)
    for action in ("delete", "leave"):
        with pytest.raises(FileChanged):
            await watcher.finish(ref, action, None)  # type: ignore[arg-type]
        assert snapshot(inbox) == before
    assert [r.size for r in await watcher.scan()] == [len(b"first part and more")]


async def test_a_claim_left_by_a_crash_is_put_back_without_replacing(make_watcher: MakeWatcher) -> None:
    watcher = make_watcher("rename")
    inbox = watcher.directory
    (inbox / ".a.hl7.ficus-claim").write_bytes(b"claimed")
    (inbox / ".b.hl7.ficus-claim").write_bytes(b"claimed b")
    (inbox / "b.hl7").write_bytes(b"a new b arrived meanwhile")
    refs = await watcher.scan()
    assert sorted(r.name for r in refs) == ["a.hl7", "b.1.hl7", "b.hl7"]
    assert (inbox / "a.hl7").read_bytes() == b"claimed"
    assert (inbox / "b.hl7").read_bytes() == b"a new b arrived meanwhile"
    assert (inbox / "b.1.hl7").read_bytes() == b"claimed b"


def test_printable_escapes_control_characters() -> None:
    assert printable("a\nb\x1b\\.csv") == "a\\x0ab\\x1b\\\\.csv"
    assert printable("plain-name.csv") == "plain-name.csv"
