"""The legacy nightly GL export as the parity reference of the posting path (issue 15 item 4).

A file interface with ``format = "gl-export"`` reads the legacy ERP drop (CSV or fixed-width,
laid out in ``[interfaces.gl]``: router/gl_layout.py) and, instead of translating it into
canonical events, stores each of its lines as the reference GL parity compares Ficus's journal
entries with (router/gl_parity.py). The file itself goes to its legacy destination as always
while the interface's route is legacy or shadow; in modern the legacy delivery stops: the
journal entries are the ERP's postings now (router/file_pipeline.py).

Lines are stored one message each in the stream FICUS_GLREF on ``glref.<interface>.<posting
day>`` (Msg-Id: the file's SHA-256 and the line's position, and the reader drops a line seen
twice, so a file read again after a crash never counts twice), and the days an export covered
are kept in the KV bucket ``ficus-gl-days`` (key ``<interface>.<day>.<file hash>``). Every file
of a day counts: a second, corrective drop for a day is booked by the ERP too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from router import names
from router.gl_layout import GlLine
from router.store import Outgoing, Store

__all__ = ["KV_GL_DAYS", "day_lines", "export_days", "glref_subject", "mark_days", "reference_messages"]

KV_GL_DAYS = "ficus-gl-days"


def glref_subject(interface: str, day: str) -> str:
    return f"glref.{interface}.{day}"


def reference_messages(interface: str, lines: Sequence[GlLine]) -> list[Outgoing]:
    """The stored form of export lines: one message each, deduplicated by file and position."""
    return [Outgoing(glref_subject(interface, line.day), line.model_dump_json().encode(),
                     f"glref:{interface}:{line.file}:{line.index}", {names.HDR_INTERFACE: interface})
            for line in lines]


async def mark_days(store: Store, interface: str, sha256: str, days: dict[str, int]) -> None:
    """Records which days a file covered (and how many lines each), for the gate's day list."""
    kv = await store.kv(KV_GL_DAYS)
    for day, count in days.items():
        await kv.put(f"{interface}.{day}.{sha256[:16]}", json.dumps({"lines": count, "file": sha256}).encode())


async def export_days(store: Store, interface: str) -> list[str]:
    """The posting days some export of `interface` covered, oldest first."""
    kv = await store.kv(KV_GL_DAYS)
    found = {key.split(".")[1] for key in await kv.keys() if key.startswith(f"{interface}.")}
    return sorted(found)


async def day_lines(store: Store, interface: str, day: str) -> list[GlLine]:
    """Every stored export line of `interface` for `day`, each once (by file and position)."""
    seen: dict[tuple[str, int], GlLine] = {}
    after = 0
    while True:
        rows = await store.read(names.STREAM_GLREF, glref_subject(interface, day), after, 10_000)
        for seq, data, _ in rows:
            line = GlLine.model_validate_json(data)
            seen.setdefault((line.file, line.index), line)
            after = seq
        if len(rows) < 10_000:
            return list(seen.values())
