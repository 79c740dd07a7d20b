"""The audit trail (issue 13 item 4): who, when, from where, what, result, on a real service.

Every flip, forced flip, replay, dead-letter replay and read of message content leaves a
record in FICUS_AUDIT naming the authenticated caller (never the X-Ficus-Actor header);
refusals are recorded too; content is not served, and a flip not made, while the trail
cannot be written; the stream refuses deletes and purges and keeps records for
`[audit] retention_days`. Records hold identifiers and counts, never message content.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from router import names, simulate
from router.audit import SUBJECTS, Record, matches
from router.config import AuditConfig, NatsConfig
from router.embedded_nats import EmbeddedNats
from router.store import stream_configs
from tests.conftest import wait_for
from tests.mllp_client import msa, send_one
from tests.test_api_identity import JWT_USER, Identities, make_identities, served
from tests.test_cli import ficus
from tests.test_service_mllp import _break_amount

pytestmark = pytest.mark.integration
DAY = 86400


@pytest.fixture
def identities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Identities:
    return make_identities(tmp_path, monkeypatch)


async def audit_records(url: str) -> list[dict[str, Any]]:
    """Every record of the audit trail's actions, read from a connection of the test's own."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(names.STREAM_AUDIT, subjects_filter=SUBJECTS)
        total = sum((info.state.subjects or {}).values())
        if total == 0:
            return []
        sub = await js.subscribe(SUBJECTS, stream=names.STREAM_AUDIT, ordered_consumer=True)
        out = []
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            out.append(json.loads(msg.data))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def _auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def test_flips_and_content_reads_are_audited_under_the_authenticated_name(
    nats_server: EmbeddedNats, identities: Identities
) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        api, port = svc.api_url, svc.interfaces["his-charges"].listener.port
        operator = _auth(identities.tokens["operator"], **{"X-Ficus-Actor": "mallory"})
        admin = _auth(identities.tokens["admin"], **{"X-Ficus-Actor": "mallory"})
        as_jwt = _auth(identities.jwt("admin"), **{"X-Ficus-Actor": "mallory"})
        flip = await http.put(f"{api}/api/v1/routes/his-charges", json={"mode": "shadow", "reason": "CHG-1"},
                              headers=operator)
        assert flip.status == 200, await flip.text()
        payload = simulate.dft(1)
        assert msa(await send_one(port, payload))[0] == "AA"
        assert msa(await send_one(port, _break_amount(simulate.dft(2))))[0] in ("AA", "AE")
        await wait_for(lambda: svc.interfaces["his-charges"].stats.dead_lettered >= 1)
        events = await (await http.get(f"{api}/api/v1/events?mode=shadow", headers=as_jwt)).json()
        assert events["events"], events
        seq = events["events"][0]["seq"]
        assert (await http.get(f"{api}/api/v1/events/{seq}?mode=shadow", headers=admin)).status == 200
        # Message content is the admin's (PRODUCT.md): an operator is refused, and recorded.
        assert (await http.get(f"{api}/api/v1/events/{seq}?mode=shadow", headers=operator)).status == 403
        letters = (await (await http.get(f"{api}/api/v1/dlq", headers=admin)).json())["dead_letters"]
        letter = letters[0]["id"]
        assert (await http.get(f"{api}/api/v1/dlq/{letter}", headers=as_jwt)).status == 200
        # Refused: a viewer may not read content; recorded all the same.
        viewer = _auth(identities.tokens["viewer"], **{"X-Ficus-Actor": "mallory"})
        assert (await http.get(f"{api}/api/v1/events", headers=viewer)).status == 403
        # A dead-letter replay that still fails, and a dry-run replay.
        replayed = await http.post(f"{api}/api/v1/dlq/{letter}/replay", json={}, headers=operator)
        assert replayed.status == 422
        dry = await http.post(f"{api}/api/v1/replay/his-charges", headers=as_jwt,
                              json={"since": "2020-01-01T00:00:00Z", "dry_run": True})
        assert dry.status == 200, await dry.text()

        records = await audit_records(nats_server.url)
        text = json.dumps(records)
        assert "mallory" not in text, "the header is never the actor"
        operator_name = identities.names["operator"]

        def one(action: str, result: str, **where: Any) -> dict[str, Any]:
            found = [r for r in records if r["action"] == action and r["result"] == result
                     and all(r.get(k) == v for k, v in where.items())]
            assert len(found) == 1, (action, result, where, records)
            return found[0]

        started = one("route_flip", "started", actor=operator_name)
        done = one("route_flip", "ok", actor=operator_name, status=200)
        assert started["interface"] == done["interface"] == "his-charges"
        assert done["target"]["mode"] == "shadow" and done["target"]["revision"] >= 1
        assert started["role"] == "operator" and started["via"] == "token"
        assert started["source"]["ip"] == "127.0.0.1"
        listed = one("events_list", "ok", actor=JWT_USER, via="jwt")
        assert seq in listed["target"]["seqs"] and listed["target"]["interfaces"] == ["his-charges"]
        read = one("event_read", "ok", actor=identities.names["admin"])
        assert read["target"]["seq"] == seq and read["interface"] == "his-charges"
        assert one("event_read", "refused", actor=operator_name)["status"] == 403
        one("dlq_list", "ok", actor=identities.names["admin"])
        assert one("dlq_read", "ok", actor=JWT_USER)["target"]["dead_letter"] == letter
        refused = one("events_list", "refused", actor=identities.names["viewer"])
        assert refused["status"] == 403 and refused["role"] == "viewer"
        one("dlq_replay", "started", actor=operator_name)
        assert one("dlq_replay", "refused", actor=operator_name)["status"] == 422
        one("replay", "started", actor=JWT_USER)
        done = one("replay", "ok", actor=JWT_USER)
        assert done["target"]["dry_run"] is True and done["target"]["values_shown"] is True

        # Identifiers and counts only: nothing of the messages themselves.
        for segment in payload.split(b"\r"):
            for value in segment.split(b"|")[1:]:
                if len(value) >= 6 and not value.isdigit():
                    assert value.decode() not in text, "message content in the audit trail"
        # The route history has the authenticated name too.
        history = (await (await http.get(f"{api}/api/v1/routes/his-charges/history", headers=viewer)).json())
        assert history["history"][-1]["actor"] == operator_name


async def test_get_audit_is_admin_only_and_filters(nats_server: EmbeddedNats, identities: Identities) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url
        operator, admin = _auth(identities.tokens["operator"]), _auth(identities.tokens["admin"])
        for who in (operator, _auth(identities.tokens["viewer"]), _auth(identities.jwt("operator"))):
            assert (await http.get(f"{api}/api/v1/audit", headers=who)).status == 403
        assert (await http.get(f"{api}/api/v1/events", headers=admin)).status == 200
        assert (await http.get(f"{api}/api/v1/dlq", headers=_auth(identities.jwt("admin")))).status == 200
        flip = {"mode": "legacy", "reason": "drill"}
        assert (await http.put(f"{api}/api/v1/routes/his-charges", json=flip, headers=operator)).status == 200

        async def query(**params: str) -> list[dict[str, Any]]:
            resp = await http.get(f"{api}/api/v1/audit", headers=admin, params=params)
            assert resp.status == 200, await resp.text()
            return list((await resp.json())["records"])

        everything = await query()
        assert [r["action"] for r in everything] == ["events_list", "dlq_list", "route_flip", "route_flip"]
        assert [(r["actor"], r["role"], r["via"]) for r in await query(actor=JWT_USER)] == [
            (JWT_USER, "admin", "jwt")]
        mine = await query(actor=identities.names["operator"])
        assert {r["actor"] for r in mine} == {identities.names["operator"]} and len(mine) == 2
        assert [r["result"] for r in await query(interface="his-charges")] == ["started", "ok"]
        assert await query(since="2999-01-01T00:00:00Z") == []
        assert [r["result"] for r in await query(action="route_flip", limit="1")] == ["started"]
        assert (await http.get(f"{api}/api/v1/audit", headers=admin, params={"action": "drop"})).status == 400

        # ficus audit: the same as a table.
        env = {**os.environ, "FICUS_TOKEN": identities.tokens["admin"]}
        table = await asyncio.to_thread(ficus, "audit", "--api", api, "--actor", identities.names["operator"],
                                        env=env)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:5] == ["AT", "ACTOR", "ROLE", "SOURCE", "ACTION"]
        assert len(lines) == 3 and all(identities.names["operator"] in line for line in lines[1:])
        assert "route_flip" in lines[-1] and "ok 200" in lines[-1]
        refused = await asyncio.to_thread(ficus, "audit", "--api", api,
                                          env={**env, "FICUS_TOKEN": identities.tokens["operator"]})
        assert refused.returncode == 2 and "403" in refused.stderr


async def test_nothing_is_served_or_flipped_unaudited(nats_server: EmbeddedNats, identities: Identities) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url
        operator, admin = _auth(identities.tokens["operator"]), _auth(identities.tokens["admin"])
        assert (await http.get(f"{api}/api/v1/events", headers=admin)).status == 200
        # The audit stream goes away (by someone with NATS access): audit writes now fail.
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_stream(names.STREAM_AUDIT)
        finally:
            await nc.close()
        resp = await http.get(f"{api}/api/v1/events", headers=admin)
        assert resp.status == 503 and "audit" in (await resp.json())["error"]
        assert "events" not in await resp.json()
        resp = await http.put(f"{api}/api/v1/routes/his-charges", json={"mode": "shadow", "reason": "x"},
                              headers=operator)
        assert resp.status == 503 and "nothing was done" in (await resp.json())["error"]
        assert svc.routes.get("his-charges").mode == "legacy"
        # What needs no audit record still works.
        assert (await http.get(f"{api}/api/v1/interfaces", headers=operator)).status == 200


async def test_the_stream_is_append_only_with_the_configured_retention(
    nats_server: EmbeddedNats, identities: Identities
) -> None:
    # An older Ficus made the stream without the deny flags and with ten years: upgraded at start.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=names.STREAM_AUDIT, subjects=[names.SUBJECTS_AUDIT],
                                         retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                                         max_age=3650 * DAY))
        async with served(nats_server.url, identities.api(), audit={"retention_days": 7}) as svc, \
                aiohttp.ClientSession() as http:
            resp = await http.get(f"{svc.api_url}/api/v1/events", headers=_auth(identities.tokens["admin"]))
            assert resp.status == 200
            info = await js.stream_info(names.STREAM_AUDIT)
            assert info.config.deny_delete and info.config.deny_purge
            assert info.config.max_age == pytest.approx(7 * DAY)
            assert info.config.storage == StorageType.FILE
            assert info.state.messages >= 1
            with pytest.raises(nats.js.errors.Error):
                await js.delete_msg(names.STREAM_AUDIT, info.state.first_seq)
            with pytest.raises(nats.js.errors.Error):
                await js.purge_stream(names.STREAM_AUDIT)
            assert (await js.stream_info(names.STREAM_AUDIT)).state.messages == info.state.messages
    finally:
        await nc.close()
    # The default: six years.
    (audit,) = [c for c in stream_configs(NatsConfig()) if c.name == names.STREAM_AUDIT]
    assert audit.max_age == 2190 * DAY and audit.deny_delete and audit.deny_purge
    assert AuditConfig().retention_days == 2190


def test_record_filters() -> None:
    record = asdict(Record(actor="a", role="operator", via="token", action="events_list", result="ok", status=200,
                           source={"ip": "10.0.0.1"}, target={"interfaces": ["x", "y"]}))
    assert matches(record, since=None, actor="a", interface="y", action="events_list")
    assert not matches(record, since=None, actor="b", interface=None, action=None)
    assert not matches(record, since=None, actor=None, interface="z", action=None)


async def test_a_dead_letter_discarded_is_audited_listed_and_not_replayed(
    nats_server: EmbeddedNats, identities: Identities
) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        api, port = svc.api_url, svc.interfaces["his-charges"].listener.port
        operator = _auth(identities.tokens["operator"], **{"X-Ficus-Actor": "mallory"})
        flip = await http.put(f"{api}/api/v1/routes/his-charges", json={"mode": "modern", "reason": "CHG-2",
                                                                         "force": True},
                              headers=_auth(identities.tokens["admin"]))
        assert flip.status == 200, await flip.text()
        assert msa(await send_one(port, _break_amount(simulate.dft(3))))[0] in ("AE", "AR")
        await wait_for(lambda: svc.interfaces["his-charges"].stats.dead_lettered >= 1)
        admin = _auth(identities.tokens["admin"])
        (letter,) = (await (await http.get(f"{api}/api/v1/dlq", headers=admin)).json())["dead_letters"]
        assert letter["discarded"] is False

        viewer = _auth(identities.tokens["viewer"])
        assert (await http.post(f"{api}/api/v1/dlq/{letter['id']}/discard", json={"reason": "test message"},
                                headers=viewer)).status == 403
        assert (await http.post(f"{api}/api/v1/dlq/{letter['id']}/discard", json={},
                                headers=operator)).status == 400, "a reason is required"
        done = await http.post(f"{api}/api/v1/dlq/{letter['id']}/discard", json={"reason": "test message"},
                               headers=operator)
        assert done.status == 200, await done.text()
        assert (await done.json())["actor"] == identities.names["operator"]
        (listed,) = (await (await http.get(f"{api}/api/v1/dlq", headers=admin)).json())["dead_letters"]
        assert listed["discarded"] is True and listed["replayed"] is False
        again = await http.post(f"{api}/api/v1/dlq/{letter['id']}/replay", json={}, headers=operator)
        assert again.status == 409 and "discarded" in (await again.json())["error"]

        env = {**os.environ, "FICUS_TOKEN": identities.tokens["admin"]}
        listing = await asyncio.to_thread(ficus, "dlq", "list", "--api", api or "", env=env)
        assert "[discarded]" in listing.stdout, listing.stdout + listing.stderr

        records = [r for r in await audit_records(nats_server.url) if r["action"] == "dlq_discard"]
        assert [(r["result"], r["actor"]) for r in records if r["result"] != "refused"] == [
            ("started", identities.names["operator"]), ("ok", identities.names["operator"])]
        assert {r["actor"] for r in records if r["result"] == "refused"} == {identities.names["viewer"],
                                                                           identities.names["operator"]}
        # Refused for the role before the handler ran: no target; every other names the letter.
        assert all(r["target"]["dead_letter"] == letter["id"] for r in records if r["role"] != "viewer")
