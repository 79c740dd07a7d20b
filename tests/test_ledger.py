"""The reconciliation ledger (router/ledger.py): the fold and its balance, and the ledger after
real MLLP (modern, shadow, legacy), folder and restart traffic, through the API and the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canonical.context import TranslationContext
from canonical.translate import translate_hl7
from legacy.simulated_engine import SimulatedEngine
from router import ledger, names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, assert_ledger_balances, make_config, stored_vs_ledger, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.test_files_service import BILLING, folder_iface, records
from tests.test_service_mllp import _break_amount, read_subject

REPO = Path(__file__).resolve().parent.parent

# -- the fold (pure) -----------------------------------------------------------------------


def _payloads(*deltas: Any) -> list[bytes]:
    return [d.payload for d in deltas]


def test_each_delta_keeps_the_equation_and_the_money() -> None:
    m = ledger.Money(charges=Decimal("12.50"))
    days = ledger.fold(_payloads(
        ledger.unit_delta("a", "modern", "u1", "NORTH", "published", 2, m),
        ledger.unit_delta("a", "modern", "u2", "NORTH", "dead_lettered", money=ledger.letter_money("3.10")),
        ledger.unit_delta("a", "shadow", "u3", None, "filtered"),
        ledger.resend_delta("a", "modern", "NORTH"),
        ledger.unit_delta("a", "legacy", "u4", "SOUTH", "legacy"),
    ))
    (day,) = days
    view = ledger.day_view(day, days[day])
    total = view["total"]
    assert (total["received"], total["published"], total["dead_lettered"], total["filtered"],
            total["duplicates"], total["legacy"], total["shadow"], total["events"]) == (5, 1, 1, 1, 1, 1, 1, 2)
    assert total["money"]["received"]["charges"] == "15.60"
    assert total["money"]["published"]["charges"] == "12.50"
    assert total["money"]["dead_lettered"]["charges"] == "3.10"
    assert view["balanced"] and [f["facility"] for f in view["facilities"]] == [None, "NORTH", "SOUTH"]


def test_a_row_that_does_not_balance_is_reported() -> None:
    row = ledger.Tally(received=3, published=1, dead_lettered=1)
    row.money["received"].charges = Decimal("5")
    assert row.problems() == [
        "received 3 != published + dead_lettered + filtered + duplicates + legacy 2",
        "charges: received 5 != sum of outcomes 0"]
    assert not row.as_json()["balanced"]


def test_delta_ids_come_from_the_unit_mode_and_outcome_not_the_day() -> None:
    a = ledger.unit_delta("a", "modern", "u1", None, "published")
    assert a.msg_id == ledger.unit_delta("a", "modern", "u1", "X", "published", 3).msg_id
    assert a.msg_id != ledger.unit_delta("a", "shadow", "u1", None, "published").msg_id
    assert a.msg_id != ledger.unit_delta("a", "modern", "u1", None, "dead_lettered").msg_id
    assert ledger.resend_delta("a", "modern", None).msg_id != ledger.resend_delta("a", "modern", None).msg_id
    assert a.subject == names.ledger_subject("a", ledger.day_of())


def test_money_of_charges_and_835() -> None:
    ctx = TranslationContext("x", "live", "jetstream://FICUS_RAW/1", ledger.datetime.now(ledger.UTC), "UTC")
    events = translate_hl7(simulate.dft(5, lines=3), "hl7v2.dft_p03", ctx).events
    want = sum((Decimal(str(e.data.amount)) for e in events), Decimal(0))  # type: ignore[union-attr]
    assert ledger.money_of(events) == ledger.Money(charges=want) and want > 0
    assert ledger.letter_money("7.5", "x12-835") == ledger.Money(payments=Decimal("7.5"))
    assert ledger.letter_money("NaN") == ledger.Money() and ledger.letter_money(None) == ledger.Money()


def test_an_unreadable_delta_is_skipped() -> None:
    days = ledger.fold([b"{", b'{"d":"2026-01-01","m":"modern","u":[{"o":"nope","n":1}]}'])
    assert days == {}


def test_valid_day() -> None:
    assert ledger.valid_day("2026-02-28") and not ledger.valid_day("2026-02-30")
    assert not ledger.valid_day("2026-2-3") and not ledger.valid_day("today")


# -- replayed: beside the equation (pure) ----------------------------------------------------------


def _replayed_day() -> dict[str, Any]:
    """A day with two units received (one published, one dead-lettered) and both replayed."""
    days = ledger.fold(_payloads(
        ledger.unit_delta("a", "modern", "u1", "NORTH", "published", 2, ledger.Money(charges=Decimal("10"))),
        ledger.unit_delta("a", "modern", "u2", "NORTH", "dead_lettered", money=ledger.letter_money("4")),
        ledger.replay_delta("a", "modern", "u1", "run-1", "NORTH", 2, ledger.Money(charges=Decimal("10"))),
        ledger.replay_delta("a", "modern", "u2", "run-1", "NORTH", 1, ledger.Money(charges=Decimal("4"))),
        ledger.replay_delta("a", "shadow", "u3", "run-1", None, 3),
    ))
    (day,) = days
    return ledger.day_view(day, days[day])


def test_replayed_units_fold_beside_the_equation() -> None:
    view = _replayed_day()
    total = view["total"]
    assert (total["received"], total["published"], total["dead_lettered"], total["shadow"], total["events"]) == (
        2, 1, 1, 0, 2)
    assert (total["replayed"], total["replayed_events"]) == (3, 6)
    assert total["money"]["replayed"] == {"charges": "14", "payments": "0", "adjustments": "0"}
    assert total["money"]["received"]["charges"] == "14" and total["money"]["published"]["charges"] == "10"
    assert view["balanced"] and not view["problems"]
    north, none = ({f["facility"]: f for f in view["facilities"]}[k] for k in ("NORTH", None))
    assert (north["received"], north["replayed"], north["replayed_events"]) == (2, 2, 3)
    # a facility with replays only: nothing received, and it balances
    assert (none["received"], none["replayed"], none["replayed_events"], none["balanced"]) == (0, 1, 3, True)


def test_replayed_does_not_hide_an_unbalanced_row() -> None:
    row = ledger.Tally(received=2, published=1)
    row.add(ledger.Entry("X", ledger.REPLAYED, 1, 1), "modern")
    assert row.problems() == ["received 2 != published + dead_lettered + filtered + duplicates + legacy 1"]
    receipt: tuple[str, ...] = ledger.OUTCOMES
    assert ledger.REPLAYED not in receipt


def test_replay_delta_ids_are_stable_per_token_and_differ_across_tokens() -> None:
    a = ledger.replay_delta("a", "modern", "u1", "run-1", None, 2)
    assert a.msg_id == ledger.replay_delta("a", "modern", "u1", "run-1", "X", 5, ledger.Money(Decimal(1))).msg_id
    others = {ledger.replay_delta("a", "modern", "u1", "run-2", None, 2).msg_id,
              ledger.replay_delta("a", "shadow", "u1", "run-1", None, 2).msg_id,
              ledger.replay_delta("a", "modern", "u2", "run-1", None, 2).msg_id,
              ledger.replay_delta("b", "modern", "u1", "run-1", None, 2).msg_id,
              ledger.unit_delta("a", "modern", "u1", None, "published", 2).msg_id}
    assert a.msg_id not in others and len(others) == 5
    assert a.subject == names.ledger_subject("a", ledger.day_of())
    assert a.headers == {names.HDR_INTERFACE: "a"}


def test_replay_batch_delta_takes_replayed_entries_only() -> None:
    batch = ledger.Batch()
    batch.add(0, "NORTH", ledger.REPLAYED, 1, ledger.Money(charges=Decimal("2.5")))
    batch.add(1, "NORTH", ledger.REPLAYED, 2, ledger.Money(charges=Decimal("1.25")))
    batch.add(2, "SOUTH", ledger.REPLAYED, 1)
    out = ledger.replay_batch_delta("f", "modern", batch.entries, "file:abc:0-2", "run-1")
    assert out.msg_id == ledger.replay_batch_delta("f", "modern", batch.entries, "file:abc:0-2", "run-1").msg_id
    assert out.msg_id != ledger.replay_batch_delta("f", "modern", batch.entries, "file:abc:0-2", "run-2").msg_id
    (rows,) = ledger.fold([out.payload]).values()
    assert {f: (r.received, r.replayed, r.replayed_events, r.money["replayed"].charges) for f, r in rows.items()} == {
        "NORTH": (0, 2, 3, Decimal("3.75")), "SOUTH": (0, 1, 1, Decimal(0))}
    with pytest.raises(ValueError):
        ledger.replay_batch_delta("f", "modern", [ledger.Entry(None, "published")], "u", "run-1")
    with pytest.raises(ValueError):
        ledger.replay_batch_delta("f", "modern", [], "u", "run-1")


def test_summary_shows_replayed_units_when_there_are_any() -> None:
    assert ledger.summary(_replayed_day()) == "2 = 1+1+0+0+0 ok, 3 replayed"
    days = ledger.fold(_payloads(ledger.unit_delta("a", "modern", "u1", None, "published", 1)))
    ((day, rows),) = days.items()
    assert ledger.summary(ledger.day_view(day, rows)) == "1 = 1+0+0+0+0 ok"


def test_cli_ledger_shows_replayed_columns_only_when_replayed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from router import cli

    views: list[dict[str, Any]] = []

    class FakeApi:  # pure unit test of the table: the API's answer is given
        def call(self, method: str, path: str) -> dict[str, Any]:
            assert (method, path) == ("GET", "/api/v1/ledger/a")
            day = views[-1]
            return {"interface": "a", "days": [day], "balanced": day["balanced"]}

    monkeypatch.setattr(cli, "_client", lambda args: FakeApi())
    args = cli.build_parser().parse_args(["ledger", "a"])
    views.append(_replayed_day())
    assert cli.cmd_ledger(args) == 0
    head, *_, total = capsys.readouterr().out.splitlines()
    assert head.split()[11:15] == ["replayed", "replayed", "events", "charges"]
    assert total.split()[1:4] == ["total", "2", "1"] and total.split()[10:12] == ["3", "6"]
    days = ledger.fold(_payloads(ledger.unit_delta("a", "modern", "u1", None, "published", 1)))
    ((day, rows),) = days.items()
    views.append(ledger.day_view(day, rows))
    assert cli.cmd_ledger(args) == 0
    assert "replayed" not in capsys.readouterr().out


def test_stored_events_must_be_published_plus_replayed() -> None:
    folded = {"a": ledger.fold(_payloads(
        ledger.unit_delta("a", "modern", "u1", None, "published", 2, ledger.Money(charges=Decimal("10"))),
        ledger.replay_delta("a", "modern", "u1", "run-1", None, 2, ledger.Money(charges=Decimal("10"))),
        ledger.replay_delta("a", "modern", "u1", "run-2", None, 2, ledger.Money(charges=Decimal("10"))),
    ))}
    # received once, replayed by two runs: 2 published + 4 replayed events are stored
    assert stored_vs_ledger({"a": [Decimal(6), Decimal(30), Decimal(0), Decimal(0)]}, folded) == []
    assert stored_vs_ledger({"a": [Decimal(4), Decimal(20), Decimal(0), Decimal(0)]}, folded) == [
        "a: stored events/charges/payments/adjustments [Decimal('4'), Decimal('20'), Decimal('0'), Decimal('0')] "
        "!= ledger's published + replayed [Decimal('6'), Decimal('30'), Decimal('0'), Decimal('0')]"]
    # money must match too, and an interface with stored events but no ledger is a mismatch
    assert stored_vs_ledger({"a": [Decimal(6), Decimal(29), Decimal(0), Decimal(0)]}, folded)
    assert stored_vs_ledger({"b": [Decimal(1)] + [Decimal(0)] * 3}, {}) != []


# -- with real traffic ---------------------------------------------------------------------------

pytestmark_integration = pytest.mark.integration


async def api_ledger(api: str, iface: str, day: str | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        url = f"{api}/api/v1/ledger/{iface}" + (f"?day={day}" if day else "")
        async with http.get(url) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


def today(view: dict[str, Any]) -> dict[str, Any]:
    (day,) = [d for d in view["days"] if d["day"] == ledger.day_of()]
    return dict(day["total"])


@pytest.mark.integration
async def test_mllp_modern_resend_and_dead_letter(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    good, bad = simulate.dft(1, lines=2), _break_amount(simulate.dft(2, lines=2))
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        async with MllpTestClient(port) as client:
            assert msa(await client.exchange(good))[0] == "AA"
            assert msa(await client.exchange(good))[0] == "AA"  # a re-send
            assert msa(await client.exchange(bad))[0] == "AE"
            assert msa(await client.exchange(bad))[0] == "AE"  # a re-send of a dead-lettered one
            assert msa(await client.exchange(b"not hl7"))[0] == "AR"
        total = today(await api_ledger(svc.api_url, "his-charges"))
        day = await api_ledger(svc.api_url, "his-charges", ledger.day_of())
    assert (total["received"], total["published"], total["dead_lettered"], total["duplicates"],
            total["filtered"], total["legacy"]) == (5, 1, 2, 2, 0, 0)
    assert total["events"] == 2 and day["balanced"]
    events = await read_subject(nats_server.url, names.STREAM_CANONICAL, "canonical.revenue.charge.posted")
    assert Decimal(total["money"]["published"]["charges"]) == sum(Decimal(e["data"]["amount"]) for e in events)
    letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
    assert Decimal(total["money"]["dead_lettered"]["charges"]) == sum(
        (Decimal(x["amount"]) for x in letters if "amount" in x), Decimal(0))
    assert [f["facility"] for f in day["days"][0]["facilities"]] == [None, "NORTH"]
    await assert_ledger_balances(nats_server.url)


@pytest.mark.integration
async def test_mllp_shadow_and_legacy_are_counted(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [
            {"name": "his-shadow", "mapping": "hl7v2.dft_p03", "route": "shadow",
             "legacy": f"mllp://127.0.0.1:{engine.port}"},
            {"name": "his-legacy", "mapping": "hl7v2.adt", "route": "legacy",
             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc:
            shadow_port = svc.interfaces["his-shadow"].listener.port
            legacy_port = svc.interfaces["his-legacy"].listener.port
            async with MllpTestClient(shadow_port) as client:
                for payload in (dft := simulate.dft(3), dft, _break_amount(simulate.dft(4)), b"not hl7"):
                    await client.exchange(payload)
            async with MllpTestClient(legacy_port) as client:
                for payload in (adt := simulate.adt(5), adt, simulate.adt(6)):
                    await client.exchange(payload)

            async def settled() -> bool:
                a = today(await api_ledger(svc.api_url, "his-shadow"))
                b = today(await api_ledger(svc.api_url, "his-legacy"))
                return bool(a["received"] == 4 and b["received"] == 3)

            await wait_for(settled, timeout=20)
            shadow = today(await api_ledger(svc.api_url, "his-shadow"))
            legacy = today(await api_ledger(svc.api_url, "his-legacy"))
    assert (shadow["published"], shadow["duplicates"], shadow["dead_lettered"], shadow["legacy"],
            shadow["shadow"]) == (1, 1, 1, 1, 2)
    assert (legacy["legacy"], legacy["duplicates"]) == (2, 1)
    await assert_ledger_balances(nats_server.url)


@pytest.mark.integration
async def test_folder_csv_with_a_bad_record(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    lines = BILLING.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[9], "12x.50")
    bad = tmp_path / "bad.csv"
    bad.write_text("\r\n".join(lines) + "\r\n")
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, legacy=None, dedupe_content=True)],
                      state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        shutil.copy(bad, tmp_path / "in" / "bad.csv")
        await wait_for(lambda: stats.acked == 1, timeout=20)
        shutil.copy(bad, tmp_path / "in" / "again.csv")  # same content: a duplicate file
        await wait_for(lambda: (tmp_path / "archive" / "again.csv").exists(), timeout=20)
        total = today(await api_ledger(svc.api_url, "billing"))
    n = records(bad)
    assert (total["received"], total["published"], total["dead_lettered"], total["duplicates"]) == (
        2 * n, n - 1, 1, n)
    folded = await assert_ledger_balances(nats_server.url)
    assert folded["billing"]


@pytest.mark.integration
async def test_counts_survive_a_restart(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    # made once: dft() stamps the current second, and a re-send must be the same bytes
    messages = [simulate.dft(20 + i) for i in range(3)]
    async with service_factory(cfg) as svc:
        async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
            for message in messages:
                assert msa(await client.exchange(message))[0] == "AA"
        before = await api_ledger(svc.api_url, "his-charges")
    async with service_factory(cfg) as svc:
        after = await api_ledger(svc.api_url, "his-charges")
        async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
            assert msa(await client.exchange(messages[0]))[0] == "AA"  # re-sent after the restart
        again = today(await api_ledger(svc.api_url, "his-charges"))
    assert after == before and today(after)["received"] == 3
    assert (again["received"], again["duplicates"]) == (4, 1)
    await assert_ledger_balances(nats_server.url)


@pytest.mark.integration
async def test_cli_table_and_exit_codes(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    async with service_factory(cfg) as svc:
        async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
            await client.exchange(simulate.dft(30))

        async def ficus(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.cli", *args, "--api", svc.api_url, cwd=REPO,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await ficus("ledger", "his-charges")
        assert code == 0, err
        head, *rows = out.splitlines()
        assert head.split()[:4] == ["day", "facility", "received", "published"]
        assert rows[-1].split()[:4] == [ledger.day_of(), "total", "1", "1"] and rows[-1].split()[-1] == "yes"
        code, out, _ = await ficus("ledger", "his-charges", "--day", "2001-01-01")
        assert code == 0 and "no units counted on 2001-01-01" in out
        code, _, err = await ficus("ledger", "his-charges", "--day", "yesterday")
        assert code == 2 and "YYYY-MM-DD" in err
        code, _, err = await ficus("ledger", "nope")
        assert code == 2, err
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{svc.api_url}/api/v1/ledger/his-charges?day=2026-13-01") as resp:
                assert resp.status == 400
            async with http.get(f"{svc.api_url}/") as resp:
                page = await resp.text()
        assert "Ledger today" in page and "1 = 1+0+0+0+0 ok" in page
    json.dumps(None)


def test_unit_deltas_made_as_units_are_counted_are_the_delta_of_each() -> None:
    """ledger.UnitDeltas (the odbc batch path) makes ``delta(interface, mode, [entry], unit)`` of
    each unit: the same subject, body, Msg-Id and headers, with and without money and parity."""
    entries = [
        ("modern", ledger.Entry("NORTH", "published", 1, 1), "odbc|t|1"),
        ("shadow", ledger.Entry("NORTH", "published", 1, 1, agree=1), "odbc|t|2"),
        ("modern", ledger.Entry(None, "dead_lettered", 1, 0, ledger.Money(charges=Decimal("2.50"))), "odbc|t|3"),
        ("modern", ledger.Entry("NORTH", "published", 1, 1), "odbc|t|4"),
        ("modern", ledger.Entry("SOUTH", "legacy"), "odbc|t|5"),
    ]
    made = ledger.UnitDeltas("usage")
    for mode, entry, unit in entries:
        made.add(mode, entry, unit)
    made.count("modern", "odbc|t|6", "NORTH", "published", 1, 1)
    want = [ledger.delta("usage", mode, [entry], unit) for mode, entry, unit in entries]
    want.append(ledger.delta("usage", "modern", [ledger.Entry("NORTH", "published", 1, 1)], "odbc|t|6"))
    assert [(m.subject, m.payload, m.msg_id, m.headers) for m in made.messages] == [
        (m.subject, m.payload, m.msg_id, m.headers) for m in want]
    assert ledger.unit_deltas("usage", entries) == made.messages[:-1]
