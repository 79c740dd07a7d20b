"""Live posting (issue 15 item 3): the durable consumer ficus-posting on a real nats-server.

Acceptance 4: the entries the live consumer stores for the billing export's charges are
byte-identical to what `ficus post` writes offline for the same stored events, each stored once
by entry id, with its copy in the posting index; a refusal is a dead letter on dlq.posting; and
`ficus run` killed with -9 while posting loses and duplicates no entry.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from canonical.posting.engine import post
from canonical.posting.rules import load_rules
from router import names
from router.cli import main as ficus
from router.embedded_nats import EmbeddedNats
from router.posting import Poster
from tests.conftest import FIXTURES, ServiceFactory, _read_all, make_config, wait_for

RULES = FIXTURES / "posting" / "rules.toml"
BILLING = FIXTURES / "flat" / "billing_export.csv"


def billing_iface(tmp: Path) -> dict[str, Any]:
    import tomllib

    for d in ("in", "archive"):
        (tmp / d).mkdir(exist_ok=True)
    flat = tomllib.loads((FIXTURES / "flat" / "billing_export.toml").read_text())
    return {"name": "billing", "kind": "folder", "path": str(tmp / "in"), "patterns": ["*.csv"],
            "poll_seconds": 0.2, "complete": "stable", "stable_seconds": 0.3, "format": "csv", "flat": flat,
            "after": "archive", "archive_dir": str(tmp / "archive"), "route": "modern"}


def reference() -> dict[str, str]:
    ref = FIXTURES / "reference"
    return {name: str(ref / f"{name}.csv") for name in ("payers", "charge_codes", "departments", "facilities")}


async def test_live_entries_are_byte_identical_to_offline_posting(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [billing_iface(tmp_path)], state_dir=str(tmp_path / "state"),
                      reference=reference(), posting={"enabled": True, "rules": str(RULES), "mode": "live"})
    rules = load_rules(RULES)
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        shutil.copy(BILLING, tmp_path / "in" / "billing.csv")
        await wait_for(lambda: stats.acked == 1, timeout=30)
        sources = [(d, h) for d, h in await _read_all(nats_server.url, names.STREAM_CANONICAL)
                   if not h.get(names.HDR_EVENT_TYPE, "").startswith("org.ficus.finance.")]
        assert sources, "the billing export made charge events"
        # `ficus post` on the same events, as JSON lines (what `ficus translate` writes).
        events = tmp_path / "events.jsonl"
        events.write_bytes(b"".join(d + b"\n" for d, _ in sources))
        entries_file, rejects = tmp_path / "entries.jsonl", tmp_path / "rejects.jsonl"
        code = await asyncio.to_thread(ficus, ["post", "--rules", str(RULES), str(events), "--out", str(entries_file),
                                               "--rejects", str(rejects)])
        offline = {json.loads(line)["id"]: line for line in entries_file.read_bytes().splitlines()}
        refused = len(rejects.read_bytes().splitlines())
        assert code == (1 if refused else 0)
        assert offline, "the fixture rules post the billing charges"
        # ... which is the engine's output (what the consumer calls), entry by entry.
        assert offline == {e.id: e.to_json() for d, _ in sources for e in post(json.loads(d), rules).entries}

        async def stored() -> dict[str, bytes]:
            rows = await _read_all(nats_server.url, names.STREAM_CANONICAL)
            return {json.loads(d)["id"]: d for d, h in rows
                    if h.get(names.HDR_EVENT_TYPE, "").startswith("org.ficus.finance.")}

        await wait_for(lambda: _len_at_least(stored, len(offline)), timeout=30)
        live = await stored()
        assert live == offline, "live entries differ from offline posting"
        rows = await _read_all(nats_server.url, names.STREAM_CANONICAL)
        ids = [json.loads(d)["id"] for d, h in rows if h.get(names.HDR_EVENT_TYPE, "").startswith("org.ficus.fin")]
        assert len(ids) == len(set(ids)), "each entry stored once"
        index = await _read_all(nats_server.url, names.STREAM_POSTIDX)
        assert {json.loads(d)["id"] for d, _ in index} == set(offline)
        letters = [json.loads(d) for d, _ in await _read_all(nats_server.url, names.STREAM_DLQ)]
        assert len([x for x in letters if x["interface"] == "posting"]) == refused

        # A refusal is a dead letter on dlq.posting with the money at risk and the source event id.
        poster = Poster(cfg.posting, svc.store, rules)
        unknown = {**json.loads(sources[0][0]), "type": "org.ficus.revenue.charge.voided.v1"}
        out, refusal = poster.messages(names.STREAM_CANONICAL, 7, "canonical.revenue.charge.voided",
                                       json.dumps(unknown).encode())
        assert refusal is not None and refusal.refused is not None and refusal.refused.money_at_risk > 0
        (letter,) = out
        body = json.loads(letter.payload)
        assert letter.subject == "dlq.posting" and body["kind"] == "rejected"
        assert body["unit"] == unknown["id"] and body["amount"] == str(refusal.refused.money_at_risk)
        assert body["locator"] == f"{names.STREAM_CANONICAL}/7" and body["mode"] == "live"
        assert poster.messages(names.STREAM_CANONICAL, 8, "canonical.finance.journal_entry.created", b"{}") == ([],
                                                                                                               None)


async def _len_at_least(read: Any, n: int) -> bool:
    return len(await read()) >= n


async def test_kill_9_while_posting_loses_and_duplicates_nothing(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """`ficus run` killed with -9 while it posts, then started again: every source event's entries
    are stored, each entry id exactly once."""
    from tests.ficus_proc import Ficus, free_port

    header, *rows = BILLING.read_text().splitlines()
    rows = [r for r in rows if r.strip()]
    big = [header] + [f"T-{i:06d}," + rows[i % len(rows)].split(",", 1)[1] for i in range(3000)]
    iface = billing_iface(tmp_path)
    ref = FIXTURES / "reference"
    api_port = free_port()
    conf = tmp_path / "ficus.toml"
    flat = (FIXTURES / "flat" / "billing_export.toml").read_text()
    flat = flat.replace("[layout]", "[interfaces.flat.layout]").replace("[mapping]", "[interfaces.flat.mapping]")
    conf.write_text(f'''state_dir = "{tmp_path / 'state'}"
[nats]
url = "{nats_server.url}"
[api]
listen = "127.0.0.1:{api_port}"
[reference]
payers = "{ref / 'payers.csv'}"
charge_codes = "{ref / 'charge_codes.csv'}"
departments = "{ref / 'departments.csv'}"
facilities = "{ref / 'facilities.csv'}"
[posting]
enabled = true
rules = "{RULES}"
mode = "live"
batch = 20
[[interfaces]]
name = "billing"
kind = "folder"
path = "{iface['path']}"
patterns = ["*.csv"]
poll_seconds = 0.2
stable_seconds = 0.3
format = "csv"
after = "archive"
archive_dir = "{iface['archive_dir']}"
route = "modern"
{flat}
''')

    async def entries() -> list[str]:
        return [json.loads(d)["id"] for d, h in await _read_all(nats_server.url, names.STREAM_CANONICAL)
                if h.get(names.HDR_EVENT_TYPE, "").startswith("org.ficus.finance.")]

    first = Ficus(conf, api_port, tmp_path / "run1.log")
    second = Ficus(conf, api_port, tmp_path / "run2.log")
    try:
        await first.start()
        await first.wait_ready()
        (tmp_path / "in" / "big.csv").write_text("\n".join(big) + "\n")
        await wait_for(lambda: _len_at_least(entries, 200), timeout=60)
        await first.kill9()
        killed_at = len(await entries())
        await second.start()
        await second.wait_ready()
        rules = load_rules(RULES)

        async def expected() -> set[str]:
            out: set[str] = set()
            for data, h in await _read_all(nats_server.url, names.STREAM_CANONICAL):
                if not h.get(names.HDR_EVENT_TYPE, "").startswith("org.ficus.finance."):
                    out.update(e.id for e in post(json.loads(data), rules).entries)
            return out

        await wait_for(lambda: not list((tmp_path / "in").glob("*.csv")), timeout=120)
        want = await expected()
        assert len(want) > killed_at, "killed before the end of posting"
        await wait_for(lambda: _len_at_least(entries, len(want)), timeout=120)
        got = await entries()
        assert sorted(got) == sorted(want), "every entry exactly once"
        assert await second.terminate() == 0
    finally:
        first.kill_if_running()
        second.kill_if_running()


async def test_follow_mode_and_two_instances_share_the_consumer(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """mode = "follow": entries go to shadow while the GL interface is in shadow, live once it is
    modern (flipped here by the table: the gate is tested in test_gl_parity). Two instances run the
    posting consumers: an event is posted by one of them, never both, each entry stored once."""
    from tests.test_gl_parity import gl_iface

    (tmp_path / "gl").mkdir()
    gl = gl_iface(tmp_path / "gl")
    posting = {"enabled": True, "rules": str(RULES), "mode": "follow", "gl_interface": "erp-gl"}
    first = make_config(nats_server.url, [billing_iface(tmp_path), gl], state_dir=str(tmp_path / "s1"),
                        reference=reference(), posting=posting)
    second = make_config(nats_server.url, [gl], state_dir=str(tmp_path / "s2"), reference=reference(),
                         posting=posting)

    async def entries(stream: str) -> dict[str, bytes]:
        return {json.loads(d)["id"]: d for d, h in await _read_all(nats_server.url, stream)
                if h.get(names.HDR_EVENT_TYPE, "").startswith("org.ficus.finance.")}

    async with service_factory(first) as a, service_factory(second) as b:
        assert a.poster is not None and b.poster is not None
        posters = (a.poster, b.poster)
        stats = a.interfaces["billing"].stats
        shutil.copy(BILLING, tmp_path / "in" / "day1.csv")
        await wait_for(lambda: stats.acked == 1, timeout=30)
        await wait_for(lambda: sum(p.stats.events for p in posters) >= stats.published, timeout=30)
        shadow = await entries(names.STREAM_SHADOW)
        assert shadow and await entries(names.STREAM_CANONICAL) == {}, "GL interface in shadow: no live entry"
        await a.routes.set("erp-gl", "modern", reason="test", actor="test")
        await wait_for(lambda: b.routes.mode_for("erp-gl") == "modern", timeout=10)
        # The same charges under other transaction ids: new events, new entries, now live.
        header, *rows = BILLING.read_text().splitlines()
        (tmp_path / "in" / "day2.csv").write_text("\n".join([header, *(r.replace("T-1", "T-2", 1) for r in rows)]))
        await wait_for(lambda: stats.acked == 2, timeout=30)
        await wait_for(lambda: sum(p.stats.events for p in posters) >= stats.published, timeout=30)
        await wait_for(lambda: _len_at_least(lambda: entries(names.STREAM_CANONICAL), len(shadow)), timeout=30)
        live = await entries(names.STREAM_CANONICAL)
        assert len(live) == len(shadow) and not set(live) & set(shadow)
        assert sum(p.stats.entries for p in posters) == len(live) + len(shadow), "each entry posted once"
