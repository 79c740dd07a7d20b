"""GL parity (issue 15 item 4): the legacy GL export of a day against Ficus's journal entries.

Acceptance 3: a legacy GL export for a day built from the same traffic as the entries, with one
charge left out and one charge on the wrong cost center, gives a report naming exactly those two
differences, with their money and source events -- with and without a reference column in the
export, from the pure comparison and through a running service (a gl-export folder interface,
the export delivered to its legacy folder, GET /api/v1/parity/{iface}/gl and `ficus parity gl`).
The flip gate of the GL interface refuses modern before `gate_days` consecutive days at zero
difference and allows it after.
"""

from __future__ import annotations

import asyncio
import csv
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from canonical.posting.model import AccountRef, JournalEntryData, JournalEntryEvent, JournalLine, entry_id
from router import gl_parity
from router.cli import main as ficus
from router.client import ApiClient
from router.embedded_nats import EmbeddedNats
from router.gl_layout import GlExportSpec, GlLine, read_lines
from tests.conftest import ServiceFactory, make_config, wait_for

DAY = "2026-11-24"
RULES = ("fixture-rules", "1")


def account(natural: str, cost_center: str | None = None, facility: str = "NORTH") -> AccountRef:
    return AccountRef(entity="E1", facility=facility, natural_account=natural, cost_center=cost_center,
                      service_line="SL-OP" if cost_center else None)


def entry(source: str, amount: str, debit: AccountRef, credit: AccountRef, *, kind: str = "charge",
          day: str = DAY, business_key: str | None = None) -> JournalEntryData:
    money = Decimal(amount)
    source = source if day == DAY else f"{source}@{day}"  # each day's traffic its own events
    return JournalEntryData(
        entry_id=entry_id(source, *RULES), posting_date=day, fiscal_period="FY2027-P05", currency="USD",
        memo=False, reversal=False,
        lines=[JournalLine(line=1, account=debit, debit=money, credit=Decimal(0), description="debit"),
               JournalLine(line=2, account=credit, debit=Decimal(0), credit=money, description="credit")],
        total=money, source_event_ids=[source], source_event_type=f"org.ficus.revenue.{kind}.posted.v1",
        rule_id=RULES[0], rule_version=RULES[1], facility=debit.facility, business_key=business_key)


def traffic(day: str = DAY) -> list[JournalEntryData]:
    """A day of entries: five charges on three cost centers, a remittance, a memo denial."""
    ar, cash, payer = account("1200"), account("1010"), account("1210")
    out = [
        entry("ev-charge-1", "125.00", ar, account("4000", "CC-CLINIC"), day=day, business_key="T-1"),
        entry("ev-charge-2", "90.50", ar, account("4000", "CC-LAB"), day=day, business_key="T-2"),
        entry("ev-charge-3", "240.00", ar, account("4000", "CC-RAD"), day=day, business_key="T-3"),
        entry("ev-charge-4", "125.00", ar, account("4000", "CC-CLINIC"), day=day, business_key="T-4"),
        entry("ev-charge-5", "60.25", ar, account("4000", "CC-LAB"), day=day, business_key="T-5"),
        entry("ev-remit-1", "300.00", cash, payer, kind="remittance", day=day, business_key="TRACE-1"),
    ]
    memo = entry("ev-denial-1", "80.00", account("9000"), account("9001"), kind="denial", day=day)
    return [*out, memo.model_copy(update={"memo": True})]


def export_rows(entries: list[JournalEntryData], *, drop: str | None = None, move: tuple[str, str] | None = None,
                ) -> list[dict[str, str]]:
    """The legacy export the ERP would have got for these entries: one CSV row per journal line,
    without the entry of source `drop`, with the cost center of source `move[0]` changed to `move[1]`."""
    rows = []
    for data in entries:
        if data.memo or data.source_event_ids[0] == drop:
            continue
        for line in data.lines:
            cost_center = line.account.cost_center or ""
            if move and data.source_event_ids[0] == move[0] and cost_center:
                cost_center = move[1]
            amount = line.debit - line.credit
            rows.append({"POST_DATE": data.posting_date.replace("-", ""), "ENTITY": line.account.entity,
                         "FAC": line.account.facility, "ACCT": line.account.natural_account, "CC": cost_center,
                         "SL": line.account.service_line or "", "AMOUNT": f"{amount:.2f}",
                         "REF": data.business_key or ""})
    return rows


def export_csv(rows: list[dict[str, str]], *, refs: bool = True) -> bytes:
    out = io.StringIO()
    columns = ["POST_DATE", "ENTITY", "FAC", "ACCT", "CC", "SL", "AMOUNT", *(["REF"] if refs else [])]
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def gl_spec(refs: bool = True) -> dict[str, Any]:
    return {
        "layout": {"kind": "csv", "header": True},
        "fields": [
            {"field": "posting_date", "column": "POST_DATE", "format": "%Y%m%d"},
            {"field": "entity", "column": "ENTITY"},
            {"field": "facility", "column": "FAC"},
            {"field": "natural_account", "column": "ACCT"},
            {"field": "cost_center", "column": "CC", "required": False},
            {"field": "service_line", "column": "SL", "required": False},
            {"field": "amount", "column": "AMOUNT"},
            *([{"field": "reference", "column": "REF", "required": False}] if refs else []),
        ],
    }


def lines_of(data: bytes, refs: bool = True) -> tuple[GlExportSpec, list[GlLine]]:
    spec = GlExportSpec.model_validate(gl_spec(refs))
    read = list(read_lines(io.BytesIO(data), spec, "f" * 64))
    assert all(isinstance(x, GlLine) for x in read), read
    return spec, [x for x in read if isinstance(x, GlLine)]


def named(report: gl_parity.Report) -> list[tuple[str, str, list[str]]]:
    return [(d.kind, str(d.money), d.source_events) for d in report.differences]


# -- the comparison --------------------------------------------------------------------------------


@pytest.mark.parametrize("refs", [True, False], ids=["with-references", "without-references"])
def test_missing_charge_and_wrong_cost_center_are_exactly_the_two_differences(refs: bool) -> None:
    entries = traffic()
    spec, lines = lines_of(export_csv(export_rows(entries, drop="ev-charge-2", move=("ev-charge-3", "CC-ICU")),
                                      refs=refs), refs)
    report = gl_parity.compare(DAY, spec.segments, lines, entries)
    assert not report.zero
    assert named(report) == [
        ("account_differs", "240.00", ["ev-charge-3"]),
        ("missing_in_export", "90.50", ["ev-charge-2"]),
    ]
    moved, missing = report.differences
    assert moved.entries == [entry_id("ev-charge-3", *RULES)]
    assert moved.detail.startswith("cost center differs: Ficus booked 240.00 on NORTH-E1-4000-CC-RAD-SL-OP")
    assert [a["cost_center"] for a in moved.accounts] == ["CC-RAD", "CC-ICU"]
    assert len(moved.export_lines) == 1 and moved.export_lines[0]["credit"] == "240.00"
    assert missing.entries == [entry_id("ev-charge-2", *RULES)]
    assert {a["natural_account"] for a in missing.accounts} == {"1200", "4000"}
    # The accounts that differ: AR and CC-LAB short by the missing charge, CC-RAD and CC-ICU by the move.
    differing = {(a["account"]["natural_account"], a["account"]["cost_center"]): a["difference"]
                 for a in report.as_dict()["accounts_differing"]}
    assert differing == {("1200", ""): "90.50", ("4000", "CC-LAB"): "-90.50", ("4000", "CC-RAD"): "-240.00",
                         ("4000", "CC-ICU"): "240.00"}
    assert report.memo_entries == 1 and report.entries == 6


def test_same_traffic_is_zero_difference_and_memo_entries_are_left_out() -> None:
    entries = traffic()
    spec, lines = lines_of(export_csv(export_rows(entries)))
    report = gl_parity.compare(DAY, spec.segments, lines, [*entries, entries[0]])  # an entry twice: once
    assert report.zero and report.differences == []
    assert report.export_lines == 12 and report.export_files == 1


def test_export_line_without_entry_is_missing_in_ficus() -> None:
    entries = traffic()
    spec, lines = lines_of(export_csv(export_rows(entries)))
    report = gl_parity.compare(DAY, spec.segments, lines, [e for e in entries if e.source_event_ids[0] != "ev-remit-1"])
    assert named(report) == [("missing_in_ficus", "300.00", [])]
    assert len(report.differences[0].export_lines) == 2


def test_layout_needs_the_money_one_way() -> None:
    spec = gl_spec()
    spec["fields"] = [f for f in spec["fields"] if f["field"] != "amount"] + [{"field": "debit", "column": "D"}]
    with pytest.raises(ValueError, match="debit and credit, or as one signed amount"):
        GlExportSpec.model_validate(spec)
    spec["fields"] = [f for f in spec["fields"] if f["field"] != "natural_account"]
    with pytest.raises(ValueError, match="natural_account"):
        GlExportSpec.model_validate(spec)


# -- through a running service ---------------------------------------------------------------------


def gl_iface(tmp: Path, route: str = "shadow") -> dict[str, Any]:
    for d in ("in", "archive", "legacy"):
        (tmp / d).mkdir(exist_ok=True)
    return {"name": "erp-gl", "kind": "folder", "path": str(tmp / "in"), "patterns": ["*.csv"], "poll_seconds": 0.2,
            "complete": "stable", "stable_seconds": 0.3, "format": "gl-export", "gl": gl_spec(),
            "after": "archive", "archive_dir": str(tmp / "archive"), "legacy": str(tmp / "legacy"), "route": route}


async def store_entries(svc: Any, entries: list[JournalEntryData], mode: str = "shadow") -> None:
    """Entries as the posting consumer stores them (router/posting.py uses the same messages)."""
    for data in entries:
        event = JournalEntryEvent(
            id=data.entry_id, source="ficus://posting", type="org.ficus.finance.journal_entry.created.v1",
            subject="journal_entry", time=f"{data.posting_date}T12:00:00Z", data=data, ficusinterface="his-dft",
            ficusfacility=data.facility, ficusmode="shadow", ficusraw="jetstream://FICUS_RAW/1",
            ficuscorrelation=data.source_event_ids[0])
        await svc.store.publish(gl_parity.entry_messages(event, "his-dft", mode))


async def test_report_api_cli_and_the_gate(nats_server: EmbeddedNats, service_factory: ServiceFactory,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    days = ["2026-11-21", "2026-11-22", "2026-11-23", DAY]
    cfg = make_config(nats_server.url, [gl_iface(tmp_path)], state_dir=str(tmp_path / "state"),
                      posting={"gl_interface": "erp-gl", "gate_days": 3})
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["erp-gl"].stats
        api = svc.api_url
        assert api is not None
        client = ApiClient(api, None)
        # The day with the deliberate mistakes first: one charge missing, one on the wrong cost center.
        await store_entries(svc, traffic(DAY))
        (tmp_path / "in" / f"gl-{DAY}.csv").write_bytes(
            export_csv(export_rows(traffic(DAY), drop="ev-charge-2", move=("ev-charge-3", "CC-ICU"))))
        await wait_for(lambda: stats.acked == 1, timeout=20)
        assert (tmp_path / "legacy" / f"gl-{DAY}.csv").exists(), "shadow: the ERP still gets the nightly drop"
        report = await asyncio.to_thread(client.call, "GET", f"/api/v1/parity/erp-gl/gl?day={DAY}")
        assert [(d["kind"], d["money"], d["source_events"]) for d in report["differences"]] == [
            ("account_differs", "240.00", ["ev-charge-3"]), ("missing_in_export", "90.50", ["ev-charge-2"])]
        assert report["zero_difference"] is False and report["export"] == {"lines": 10, "files": 1}
        code = await asyncio.to_thread(ficus, ["parity", "gl", "erp-gl", "--day", DAY, "--api", api])
        out = capsys.readouterr().out
        assert code == 1
        assert "account_differs" in out and "missing_in_export" in out and "240.00" in out and "90.50" in out

        # The gate: refused while the latest day differs, and with fewer than 3 clean days after.
        flip = {"mode": "modern", "reason": "gl parity"}
        refused = await asyncio.to_thread(_put, client, flip)
        assert refused[0] == 409 and "0 consecutive export day(s)" in refused[1]["error"]
        for n, day in enumerate(days[:3], start=2):
            await store_entries(svc, traffic(day))
            (tmp_path / "in" / f"gl-{day}.csv").write_bytes(export_csv(export_rows(traffic(day))))
            await wait_for(lambda n=n: bool(stats.acked == n), timeout=20)  # type: ignore[misc]
        refused = await asyncio.to_thread(_put, client, flip)
        assert refused[0] == 409, "the latest day still differs"
        # The missing charge booked, the cost center corrected: a second drop for the day counts too.
        missed = [r for r in export_rows(traffic(DAY)) if r["REF"] == "T-2"]
        wrong = next(r for r in export_rows(traffic(DAY), move=("ev-charge-3", "CC-ICU"))
                     if r["REF"] == "T-3" and r["CC"])
        moved_back = [dict(wrong, AMOUNT="240.00"), dict(wrong, CC="CC-RAD")]  # reverse CC-ICU, book CC-RAD
        fix = [*missed, *moved_back]
        (tmp_path / "in" / f"gl-{DAY}-fix.csv").write_bytes(export_csv(fix))
        await wait_for(lambda: stats.acked == 5, timeout=20)
        fixed = await asyncio.to_thread(client.call, "GET", f"/api/v1/parity/erp-gl/gl?day={DAY}")
        assert fixed["zero_difference"] is True, fixed["differences"]
        allowed = await asyncio.to_thread(_put, client, flip)
        assert allowed[0] == 200, allowed
        assert [d["day"] for d in allowed[1]["parity"]["days"]] == [DAY, "2026-11-23", "2026-11-22"]
        assert svc.routes.get("erp-gl").mode == "modern"
        # Modern: the legacy delivery stops, the lines are still kept as the reference.
        (tmp_path / "in" / "gl-2026-11-25.csv").write_bytes(export_csv(export_rows(traffic("2026-11-25"))))
        await wait_for(lambda: stats.acked == 6, timeout=20)
        assert not (tmp_path / "legacy" / "gl-2026-11-25.csv").exists()


def _put(client: ApiClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from router.client import ApiError

    try:
        return 200, client.call("PUT", "/api/v1/routes/erp-gl", body)
    except ApiError as exc:
        return exc.status or 0, {"error": str(exc)}


# -- configuration and `ficus check` ---------------------------------------------------------------


def test_check_validates_the_rules_and_the_gl_interface(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from router.config import ConfigError, parse_config

    rules = tmp_path / "posting"
    shutil.copytree(Path(__file__).resolve().parent.parent / "fixtures" / "posting", rules)
    iface = gl_iface(tmp_path)
    base = f'state_dir = "{tmp_path / "s"}"\n[posting]\nrules = "posting/rules.toml"\ngl_interface = "erp-gl"\n'
    conf = tmp_path / "ficus.toml"
    toml_iface = (f'[[interfaces]]\nname = "erp-gl"\nkind = "folder"\npath = "{iface["path"]}"\nformat = "gl-export"\n'
                  f'route = "shadow"\nlegacy = "{iface["legacy"]}"\nafter = "leave"\n[interfaces.gl]\nfields = [\n'
                  + "".join(f'  {{ field = "{f["field"]}", column = "{f["column"]}" }},\n' for f in gl_spec()["fields"])
                  + ']\n[interfaces.gl.layout]\nkind = "csv"\n')
    conf.write_text(base + toml_iface)
    assert ficus(["check", "-c", str(conf)]) == 0
    capsys.readouterr()
    chart = rules / "chart_of_accounts.csv"
    chart.write_text("\n".join(x for x in chart.read_text().splitlines() if not x.startswith("4000,")) + "\n")
    assert ficus(["check", "-c", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "posting.rules:" in err and "4000" in err
    import tomllib

    flat = tomllib.loads((Path(__file__).resolve().parent.parent / "fixtures/flat/billing_export.toml").read_text())
    with pytest.raises(ConfigError, match="not 'gl-export'"):
        parse_config({"interfaces": [{**gl_iface(tmp_path), "format": "csv", "gl": None, "flat": flat}],
                      "posting": {"gl_interface": "erp-gl"}})
    with pytest.raises(ConfigError, match="needs rules"):
        parse_config({"posting": {"enabled": True}})


@pytest.mark.parametrize("refs", [True, False], ids=["with-references", "without-references"])
def test_acceptance_on_engine_entries_from_the_billing_export(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             refs: bool) -> None:
    """Acceptance 3 from real traffic: the billing export's charges translated (`ficus translate`)
    and posted by the fixture rules (the engine the consumer and `ficus post` run); the legacy
    export generated from those entries without one charge and with another's revenue on the
    wrong cost center: exactly those two differences, with their money and source events (the
    export's reference is the entry's business key, the account number: two charges share it)."""
    import json

    from canonical.posting.engine import post
    from canonical.posting.rules import load_rules

    root = Path(__file__).resolve().parent.parent / "fixtures"
    flat = (root / "flat" / "billing_export.toml").read_text()
    flat = flat.replace("[layout]", "[interfaces.flat.layout]").replace("[mapping]", "[interfaces.flat.mapping]")
    ref = root / "reference"
    conf = tmp_path / "ficus.toml"
    conf.write_text(f'[reference]\ndepartments = "{ref / "departments.csv"}"\nfacilities = "{ref / "facilities.csv"}"\n'
                    f'charge_codes = "{ref / "charge_codes.csv"}"\npayers = "{ref / "payers.csv"}"\n'
                    f'[[interfaces]]\nname = "billing"\nkind = "folder"\npath = "{tmp_path}"\nformat = "csv"\n'
                    f'route = "modern"\nafter = "leave"\n{flat}')
    source = str(root / "flat" / "billing_export.csv")
    assert ficus(["translate", "-c", str(conf), "--interface", "billing", source]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    rules = load_rules(root / "posting" / "rules.toml")
    entries = [e.data for event in events for e in post(event, rules).entries]
    charges = [e for e in entries if any(line.account.cost_center for line in e.lines)]
    assert len(charges) >= 3, "the billing export posts charges with cost centers"
    day = charges[0].posting_date
    same_day = [e for e in charges if e.posting_date == day]
    dropped, moved = same_day[0], same_day[1]
    rows = export_rows(entries, drop=dropped.source_event_ids[0], move=(moved.source_event_ids[0], "CC-WRONG"))
    spec, lines = lines_of(export_csv(rows, refs=refs), refs)
    report = gl_parity.compare(day, spec.segments, lines, entries)
    assert sorted(named(report)) == sorted([
        ("account_differs", str(moved.total), moved.source_event_ids),
        ("missing_in_export", str(dropped.total), dropped.source_event_ids),
    ])
    full = gl_parity.compare(day, spec.segments, lines_of(export_csv(export_rows(entries)))[1], entries)
    assert full.zero
