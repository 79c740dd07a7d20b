"""The posting engine: canonical events -> balanced journal entries, per the fixture rules.

Acceptance (issue 15): on the corpus 835s, the DFT fixtures, the CSV fixtures and ODBC-shaped
rows, translated by Ficus's own translators, every entry balances and the sum of entries per
account equals what the source events say (computed here from the events, independently of
the engine: cash = BPR, contractual allowance = CO, gross revenue = charges, ...); a reversal
pair nets to zero on every account it touched; the same input gives the same bytes; refusals
carry the money at risk and name the rule and table.
"""

from __future__ import annotations

import io
import json
import shutil
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from canonical.context import TranslationContext
from canonical.flat import FlatSpec, translate_flat
from canonical.posting.engine import Posting, post
from canonical.posting.model import JournalEntryEvent
from canonical.posting.rules import Rules, RulesError, check_rules, load_rules
from canonical.records import RecordMapping, map_record, row_values
from canonical.translate import translate_hl7
from canonical.x12 import translate_835
from tests.conftest import corpus_root

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "fixtures" / "posting" / "rules.toml"
RULES = load_rules(RULES_PATH)
X12 = ROOT / "fixtures" / "x12"
FLAT = ROOT / "fixtures" / "flat"
CTX = TranslationContext("payer-835", "live", "raw.payer-835/1", datetime(2024, 10, 15, 12, tzinfo=UTC))
ZERO = Decimal(0)
T = "org.ficus."
CASH = ("1010", "1020")
CLEARING = "1090"
PAYER_AR = ("1220", "1230", "1240", "1250")

Event = dict[str, Any]


# --- translating with Ficus's own translators -----------------------------------------------------------


def events_835(path: Path, ctx: TranslationContext = CTX) -> list[Event]:
    with path.open("rb") as stream:
        return [json.loads(e.to_json()) for r in translate_835(stream, ctx, source_name=path.name)
                if r.events is not None for e in r.events]


def events_835_text(text: str) -> list[Event]:
    return [json.loads(e.to_json()) for r in translate_835(io.BytesIO(text.encode()), CTX, source_name="synthetic.835")
            if r.events is not None for e in r.events]


def events_hl7() -> list[Event]:
    ctx = TranslationContext("his-charges", "live", "raw.his/1", datetime(2024, 3, 5, 15, tzinfo=UTC))
    out: list[Event] = []
    for path in sorted((ROOT / "fixtures" / "hl7").glob("*.hl7")):
        try:
            out += [json.loads(e.to_json()) for e in translate_hl7(path.read_bytes(), "hl7v2", ctx).events]
        except Exception:  # noqa: BLE001 - the fixtures of error cases (a bad amount) give no events
            continue
    return out


def usd_hl7() -> list[Event]:
    """The HL7 fixtures' events but the EUR charge (refused: the fixture ledger is in USD)."""
    return [e for e in events_hl7() if e["data"].get("currency") in (None, "USD")]


def events_flat(data: str, spec: str) -> list[Event]:
    flat = FlatSpec.model_validate(tomllib.loads((FLAT / f"{spec}.toml").read_text(encoding="utf-8")))
    ctx = TranslationContext("flat", "live", "raw.flat/1", datetime(2024, 1, 6, tzinfo=UTC))
    with (FLAT / data).open("rb") as stream:
        outcomes = list(translate_flat(stream, flat, ctx, unit=f"sha-{data}"))
    assert all(o.error is None for o in outcomes), [str(o.error) for o in outcomes if o.error]
    return [json.loads(e.to_json()) for o in outcomes for e in o.events]


def events_odbc() -> list[Event]:
    """Rows as an ODBC driver gives them (typed values), mapped as the ODBC poller maps them."""
    mapping = RecordMapping.model_validate({
        "target": "supply_usage", "facility_field": "facility", "timezone": "America/Chicago",
        "fields": [
            {"field": "item_id", "column": "item_id"},
            {"field": "quantity", "column": "qty"},
            {"field": "unit_of_measure", "column": "uom"},
            {"field": "unit_cost", "column": "unit_cost"},
            {"field": "department", "column": "dept"},
            {"field": "facility", "column": "facility"},
            {"field": "used_at", "column": "used_at", "type": "datetime"},
        ],
    })
    ctx = TranslationContext("odbc-usage", "live", "raw.odbc-usage/1", datetime(2024, 5, 1, 16, tzinfo=UTC))
    rows: list[dict[str, Any]] = [
        {"id": 1, "item_id": "ITM-1", "qty": "2", "uom": "EA", "unit_cost": Decimal("3.50"), "dept": "OR",
         "facility": "NORTH", "used_at": datetime(2024, 5, 1, 10, 0)},
        {"id": 2, "item_id": "ITM-2", "qty": "-1", "uom": "EA", "unit_cost": Decimal("12.25"), "dept": "ICU",
         "facility": "SOUTH", "used_at": datetime(2024, 5, 1, 11, 30)},
        {"id": 3, "item_id": "ITM-3", "qty": "4", "uom": "BX", "unit_cost": Decimal("7.10"), "dept": "LAB",
         "facility": "SOUTH", "used_at": datetime(2024, 4, 30, 23, 59)},
    ]
    out: list[Event] = []
    for row in rows:
        events = map_record(row_values(row, mapping.fields), mapping, ctx, unit="usage", index=int(row["id"]),
                            locator=f"row id={row['id']}")
        out += [json.loads(e.to_json()) for e in events]
    return out


# --- posting and summing --------------------------------------------------------------------------------


def post_all(events: Iterable[Event], rules: Rules = RULES) -> list[JournalEntryEvent]:
    entries: list[JournalEntryEvent] = []
    for event in events:
        posting = post(event, rules)
        assert posting.refused is None, posting.refused
        entries += posting.entries
    return entries


def net(entries: Iterable[JournalEntryEvent], segments: bool = False) -> dict[Any, Decimal]:
    """Debit minus credit per natural account (or per full account string), zero accounts dropped."""
    sums: dict[Any, Decimal] = defaultdict(Decimal)
    for entry in entries:
        for line in entry.data.lines:
            key = line.account.key() if segments else line.account.natural_account
            sums[key] += line.debit - line.credit
    return {k: v for k, v in sums.items() if v}


def assert_balanced(entries: list[JournalEntryEvent]) -> None:
    for entry in entries:
        debits = sum((ln.debit for ln in entry.data.lines), ZERO)
        credits = sum((ln.credit for ln in entry.data.lines), ZERO)
        assert debits == credits == entry.data.total > 0, entry.data.entry_id
        assert all((ln.debit == 0) != (ln.credit == 0) for ln in entry.data.lines)


def expected_835(events: list[Event]) -> dict[str, Decimal]:
    """What the 835 events say each account must hold, from their own figures (debit positive)."""
    want: dict[str, Decimal] = defaultdict(Decimal)
    for e in events:
        d, kind = e["data"], e["type"].removeprefix(T + "claims.")
        if kind == "remittance.received.v1":
            amount = Decimal(d["amount"]) * (-1 if d["credit_debit"] == "D" else 1)
            cash = RULES.lookup("bank_accounts", d["payee_id"] or "", d["payment_method"])
            assert cash is not None
            want[cash] += amount  # cash = BPR
            want[CLEARING] -= amount
        elif kind == "claim.adjudicated.v1":
            want[CLEARING] += Decimal(d["paid"])  # CLP04 applied to payer AR
            want["1250"] -= Decimal(d["paid"])  # no payers table: the default payer AR
        elif kind == "adjustment.recorded.v1":
            account = {"CO": "4500", "PR": "1210", "OA": "4510", "PI": "4520", "CR": "4530"}[d["group_code"]]
            want[account] += Decimal(d["amount"])  # contractual allowance = CO, patient AR += PR, ...
            want["1250"] -= Decimal(d["amount"])
        elif kind == "denial.recorded.v1":
            want["9000"] += Decimal(d["charge"])  # memo
            want["9001"] -= Decimal(d["charge"])
        elif kind == "provider_adjustment.recorded.v1":
            for item in d["adjustments"]:
                reason = RULES.lookup("plb_reasons", item["reason_code"])
                assert reason is not None
                want[reason] += Decimal(item["amount"])
            want[CLEARING] -= Decimal(d["total"])
    return {k: v for k, v in want.items() if v}


def expected_operations(events: list[Event]) -> dict[str, Decimal]:
    """Charges, supply usage and labor time, from the events' own amounts."""
    want: dict[str, Decimal] = defaultdict(Decimal)
    for e in events:
        d = e["data"]
        if e["type"].startswith(T + "revenue.charge."):
            want["1210"] += Decimal(d["net_amount"])  # patient AR
            want["4000"] -= Decimal(d["net_amount"])  # gross revenue = charges
        elif e["type"] == T + "supply.usage.recorded.v1":
            want["6100"] += Decimal(d["extended_cost"])
            want["1400"] -= Decimal(d["extended_cost"])
        elif e["type"] == T + "workforce.labor_time.recorded.v1" and d["amount"] is not None:
            want["6000"] += Decimal(d["amount"])
            want["2100"] -= Decimal(d["amount"])
    return {k: v for k, v in want.items() if v}


# --- the rules file -------------------------------------------------------------------------------------


def test_fixture_rules_load_and_check_clean() -> None:
    assert RULES.version == "2026.11-1" and RULES.currency == "USD"
    assert RULES.path == RULES_PATH
    assert check_rules(RULES_PATH) == []
    assert RULES.rule_for(T + "patient.encounter.admitted.v1").post == "none"  # type: ignore[union-attr]
    assert RULES.rule_for(T + "claims.denial.recorded.v1").denials == "memo"  # type: ignore[union-attr]
    assert RULES.rule_for("org.ficus.other.thing.done.v1") is None


def test_fixture_rules_cover_every_event_type_ficus_emits() -> None:
    from canonical.schemas import default_models

    assert {name for name in default_models() if RULES.rule_for(name) is None} == set()


def copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES_PATH.parent, target)
    return target / "rules.toml"


def test_a_broken_rules_file_lists_every_problem_with_file_and_key_or_line(tmp_path: Path) -> None:
    path = copy_rules(tmp_path)
    text = path.read_text(encoding="utf-8")
    text = text.replace('version = "2026.11-1"', 'versoin = "x"')
    text = text.replace('debit = "6100"', 'debit = "6199"')
    text = text.replace('plb_reasons = "plb_reasons.csv"', "")
    text = text.replace('post = "labor_time"', 'post = "payroll"')
    path.write_text(text, encoding="utf-8")
    with (path.parent / "cas_adjustments.csv").open("a", encoding="utf-8") as f:
        f.write("CO,*,4500\nOA,23,7777\n")
    with (path.parent / "fiscal_calendar.csv").open("a", encoding="utf-8") as f:
        f.write("2024-01-15,2024-02-15,FY2024-PXX\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    problems = info.value.problems
    text = "\n".join(problems)
    assert f"{path}: unknown key 'versoin'" in text
    assert f"{path}: version must be a non-empty string" in text
    assert "rule supply-usage: debit '6199' is not in the chart of accounts" in text
    assert "tables.plb_reasons is missing (rules provider-adjustment read it)" in text
    assert "rules[10] (id labor-time): post must be one of" in text
    cas = path.parent / "cas_adjustments.csv"
    assert f"{cas}: line 7: duplicate CO/* (first on line 2)" in text
    assert "tables.cas_adjustments OA/23: account '7777' is not in the chart of accounts" in text
    assert "period FY2024-PXX overlaps FY2024-P07" in text
    assert check_rules(path) == problems
    assert check_rules(tmp_path / "missing.toml")[0].startswith(f"{tmp_path / 'missing.toml'}: cannot read")


# --- acceptance 1: every entry balances, sums per account equal the source figures ----------------------------


def corpus_835s() -> list[Path]:
    root = corpus_root()
    if root is None:
        return []
    return sorted(p for p in (root / "x12").rglob("*") if p.is_file())


def test_corpus_835s_post_and_every_account_equals_the_remittance_figures() -> None:
    files = corpus_835s()
    if not files:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    posted = 0
    for path in files:
        events = events_835(path)
        if not events:
            continue  # a file no transaction of which balances (dead-lettered at translation)
        entries = post_all(events)
        assert_balanced(entries)
        assert net(entries) == expected_835(events), path.name
        assert net(entries).get(CLEARING, ZERO) == 0, path.name  # BPR02 = sum CLP04 - sum PLB
        bpr = sum((Decimal(e["data"]["amount"]) for e in events if e["type"].endswith("remittance.received.v1")),
                  ZERO)
        assert sum((net(entries).get(a, ZERO) for a in CASH), ZERO) == bpr, path.name
        co = sum((Decimal(e["data"]["amount"]) for e in events
                  if e["type"].endswith("claims.adjustment.recorded.v1") and e["data"]["group_code"] == "CO"), ZERO)
        assert net(entries).get("4500", ZERO) == co, path.name
        posted += 1
    assert posted >= 8


def test_fixture_835s_sum_per_account() -> None:
    for name in ("balanced_2claims_plb.835", "reversal_pair.835"):
        events = events_835(X12 / name)
        entries = post_all(events)
        assert_balanced(entries)
        assert net(entries) == expected_835(events)
    entries = post_all(events_835(X12 / "balanced_2claims_plb.835"))
    # BPR 140.00 by ACH; CLP04 150 + 0; CO 30 + 100; PR 20; PLB WO 10 to recoupments; the denial as a memo.
    assert net(entries) == {"1010": Decimal("140.00"), "1250": Decimal("-300.00"), "1210": Decimal("20.00"),
                            "4500": Decimal("130.00"), "2300": Decimal("10.00"), "9000": Decimal("100.00"),
                            "9001": Decimal("-100.00")}
    memo = [e for e in entries if e.data.memo]
    assert [e.data.source_event_type for e in memo] == [T + "claims.denial.recorded.v1"]


def test_dft_fixtures_post_charges_by_cost_center_and_service_line() -> None:
    every = events_hl7()
    (eur,) = [e for e in every if e["data"].get("currency") == "EUR"]  # dft_p03_cp1252.hl7
    p = post(eur, RULES)
    assert p.refused is not None and p.refused.money_at_risk == Decimal("20.00")
    assert p.refused.reason == "rule charge-posted: currency EUR is not the rules' currency USD"
    events = usd_hl7()
    charges = [e for e in events if e["type"].startswith(T + "revenue.charge.")]
    assert len(charges) == len([e for e in every if e["type"].startswith(T + "revenue.charge.")]) - 1
    entries = post_all(events)
    assert_balanced(entries)
    assert len(entries) == len(charges)  # encounters post nothing
    assert net(entries) == expected_operations(events)
    by_account = net(e for e in entries if e.data.source_event_ids[0] in {c["id"] for c in charges[:2]})
    assert by_account["4000"] == -(Decimal("125.50") - Decimal("45.00"))
    segments = net(entries[:2], segments=True)
    assert segments["E100-NORTH-4000-CC-LAB-LABORATORY"] == Decimal("-125.50")  # FT1 1: LAB, 80053
    assert segments["E100-NORTH-4000-CC-CLINIC-AMBULATORY"] == Decimal("45.00")  # FT1 2 (CD): CLIN, 99213
    assert segments["E100-NORTH-1210--"] == Decimal("80.50")
    posted, credited = entries[0].data, entries[1].data
    assert posted.posting_date == "2024-03-05" and posted.fiscal_period == "FY2024-P09"
    assert [ln.debit for ln in posted.lines] == [Decimal("125.50"), 0]
    assert [ln.credit for ln in credited.lines] == [Decimal("45.00"), 0]  # the sides swapped
    assert posted.business_key == "ACCT000456" and not credited.reversal


def test_csv_fixtures_post_charges_supplies_and_labor() -> None:
    events = (events_flat("billing_export.csv", "billing_export") + events_flat("materials_usage.csv",
              "materials_usage") + events_flat("timekeeping.txt", "timekeeping"))
    postings = [post(e, RULES) for e in events]
    assert all(p.refused is None for p in postings), [p.refused for p in postings if p.refused]
    entries = [e for p in postings for e in p.entries]
    assert_balanced(entries)
    assert net(entries) == expected_operations(events)
    # The PTO record has hours and no amount: nothing to book.
    (skipped,) = [p for p in postings if p.skipped]
    assert skipped.note == "rule labor-time: hours without an amount: no money to book (the payroll run books it)"
    segments = net(entries, segments=True)
    assert segments["E200-SOUTH-4000-CC-RAD-IMAGING"] == Decimal("240.00")  # a negative amount: credited
    assert segments["E100-NORTH-6100-CC-OR-"] == Decimal("28.50") + Decimal("102.00") - Decimal("14.25")
    assert segments["E200-SOUTH-6100-CC-LAB-S-"] == Decimal("21.30")  # SOUTH/LAB has its own cost center
    assert segments["E100-NORTH-6000-CC-ICU-"] == Decimal("546.00")  # 12 h x 45.50
    assert segments["E200-SOUTH-6000-CC-RAD-"] == Decimal("-41.00")  # a correction: -1 h
    labor = [e.data for e in entries if e.data.source_event_type.startswith(T + "workforce.")]
    assert {d.posting_date for d in labor} == {"2024-01-05"}


def test_odbc_rows_post_supply_usage() -> None:
    events = events_odbc()
    entries = post_all(events)
    assert_balanced(entries)
    assert net(entries) == expected_operations(events)
    assert net(entries, segments=True) == {
        "E100-NORTH-6100-CC-OR-": Decimal("7.00"), "E100-NORTH-1400--": Decimal("-7.00"),  # 2 x 3.50
        "E200-SOUTH-6100-CC-ICU-": Decimal("-12.25"),  # a return: -1 x 12.25
        "E200-SOUTH-6100-CC-LAB-S-": Decimal("28.40"), "E200-SOUTH-1400--": Decimal("12.25") - Decimal("28.40"),
    }
    periods = {e.data.posting_date: e.data.fiscal_period for e in entries}
    assert periods["2024-04-30"] == "FY2024-P10" and periods["2024-05-01"] == "FY2024-P11"


# --- acceptance 2: a reversal pair nets to zero ---------------------------------------------------------


HEADER = ("ISA*00*          *00*          *ZZ*PAYERSENDER    *ZZ*HOSPITAL       *241015*1200*^*00501*{isa}*0*P*:~"
          "GS*HP*PAYERSENDER*HOSPITAL*20241015*1200*7*X*005010X221A1~ST*835*0001*005010X221A1~"
          "BPR*I*{bpr}*C*ACH*CCP*01*999999999*DA*123456*1512345678**01*999988880*DA*98765*20241016~"
          "TRN*1*{trn}*1512345678~DTM*405*20241015~N1*PR*ACME HEALTH PLAN~REF*2U*PAYER99~"
          "N1*PE*GENERAL HOSPITAL*XX*1234567893~REF*TJ*987654321~LX*1~")


def remit(isa: str, bpr: str, claims: str) -> str:
    body = HEADER.format(isa=isa, bpr=bpr, trn=f"EFT{isa[-4:]}") + claims
    count = body.count("~", body.index("ST*835")) + 1
    return body + f"SE*{count}*0001~GE*1*7~IEA*1*{isa}~"


def claim_entries(entries: list[JournalEntryEvent], events: list[Event], icn: str) -> list[JournalEntryEvent]:
    """The entries of one claim (its claim event and its adjustments), by CLP07."""
    ids = {e["id"] for e in events if e["data"].get("payer_claim_control_number") == icn}
    return [e for e in entries if e.data.source_event_ids[0] in ids]


def test_reversal_pair_fixture_nets_to_zero_on_every_account_it_touched() -> None:
    # reversal_pair.835 reverses claim ICN0003 (CLP02 = 22: -300 charged, -250 paid, CO -50) and pays
    # it again corrected. The original payment it reverses came in an earlier 835: made here from
    # the reversal's own figures, with the signs the original had.
    original = events_835_text(remit("000000100", "250.00", "CLP*PCN003*1*300.00*250.00*0*12*ICN0003~"
                                                           "CAS*CO*45*50.00~"))
    reversal = events_835(X12 / "reversal_pair.835")
    first = claim_entries(post_all(original), original, "ICN0003")
    second = claim_entries(post_all(reversal), reversal, "ICN0003")
    assert first and second and len(first) == len(second)
    assert all(e.data.reversal for e in second) and not any(e.data.reversal for e in first)
    touched = set(net(first, segments=True)) | set(net(second, segments=True))
    assert touched == {"E100-NORTH-1090--", "E100-NORTH-1250--", "E100-NORTH-4500--"}
    assert net(first + second, segments=True) == {}
    # Each reversing entry is its original with the sides swapped.
    for a, b in zip(first, second, strict=True):
        assert [(ln.account, ln.debit, ln.credit) for ln in a.data.lines] == \
               [(ln.account, ln.credit, ln.debit) for ln in b.data.lines]
    # The corrected claim (ICN0004) posts afresh: paid 240, CO 60.
    corrected = net(claim_entries(post_all(reversal), reversal, "ICN0004"))
    assert corrected == {CLEARING: Decimal("240.00"), "1250": Decimal("-300.00"), "4500": Decimal("60.00")}


def test_a_payment_and_its_reversal_in_one_remittance_net_to_zero_everywhere() -> None:
    events = events_835_text(remit("000000200", "0", "CLP*PCN009*1*300.00*250.00*0*12*ICN0009~CAS*CO*45*50.00~"
                                                     "CLP*PCN009*22*-300.00*-250.00*0*12*ICN0009~CAS*CO*45*-50.00~"))
    postings = [post(e, RULES) for e in events]
    assert postings[0].skipped  # BPR02 = 0: no deposit
    entries = [e for p in postings for e in p.entries]
    assert_balanced(entries)
    assert len(entries) == 4 and net(entries) == {}


# --- determinism ------------------------------------------------------------------------------------------


def test_same_events_and_rules_give_the_same_bytes() -> None:
    events = events_835(X12 / "balanced_2claims_plb.835") + usd_hl7() + events_odbc()
    once = [e.to_json() for e in post_all(events)]
    again = [e.to_json() for e in post_all(json.loads(json.dumps(e)) for e in events)]
    reloaded = [e.to_json() for e in post_all(events, load_rules(RULES_PATH))]
    assert once == again == reloaded
    ids = [json.loads(b)["id"] for b in once]
    assert len(set(ids)) == len(ids)


def test_entry_envelope_comes_from_the_source_event() -> None:
    (event,) = [e for e in events_835(X12 / "balanced_2claims_plb.835") if e["type"].endswith("remittance.received.v1")]
    (entry,) = post(event, RULES).entries
    from canonical.posting.model import entry_id

    assert entry.id == entry.data.entry_id == entry_id(event["id"], "remittance-cash", "2026.11-1", 0)
    assert entry.source == "ficus://posting" and entry.time == event["time"]
    for key in ("ficusinterface", "ficusfacility", "ficusmode", "ficusraw", "ficuscorrelation"):
        assert getattr(entry, key) == event[key]
    assert entry.nats_subject() == "canonical.finance.journal_entry.created"
    assert entry.data.source_event_ids == [event["id"]] and entry.data.business_key == "EFT0001"
    assert entry.data.rule_id == "remittance-cash" and entry.data.rule_version == "2026.11-1"
    shadow = post({**event, "ficusmode": "shadow"}, RULES).entries[0]
    assert shadow.nats_subject() == "shadow.canonical.finance.journal_entry.created"


def test_a_new_rules_version_changes_every_entry_id(tmp_path: Path) -> None:
    path = copy_rules(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace('"2026.11-1"', '"2026.12-1"'), encoding="utf-8")
    events = usd_hl7()
    old = {e.id for e in post_all(events)}
    new = {e.id for e in post_all(events, load_rules(path))}
    assert old and not old & new


# --- refusals ----------------------------------------------------------------------------------------------


def one_charge(**data: Any) -> Event:
    event = next(e for e in events_hl7() if e["type"] == T + "revenue.charge.posted.v1")
    return {**event, "data": {**event["data"], **data}}


def test_an_event_no_rule_matches_is_refused_with_its_money(tmp_path: Path) -> None:
    path = copy_rules(tmp_path)
    text = path.read_text(encoding="utf-8")
    start = text.index('[[rules]]\nid = "charge-posted"')
    path.write_text(text[:start] + text[text.index("[[rules]]", start + 1):], encoding="utf-8")
    posting = post(one_charge(), load_rules(path))
    assert posting.entries == [] and not posting.skipped and posting.refused is not None
    refused = posting.refused
    assert refused.reason == "no posting rule matches type org.ficus.revenue.charge.posted.v1"
    assert refused.money_at_risk == Decimal("125.50")
    assert refused.event_type == T + "revenue.charge.posted.v1" and refused.interface == "his-charges"
    assert refused.facility == "NORTHCLINIC" and refused.event_id


def refused(event: Event, rules: Rules = RULES) -> Posting:
    posting = post(event, rules)
    assert posting.refused is not None and not posting.entries
    return posting


def test_unmapped_accounts_are_refused_naming_the_table_and_key() -> None:
    p = refused(one_charge(department="NOWHERE"))
    assert p.refused is not None
    assert p.refused.reason == ("rule charge-posted: unmapped cost center: NORTH/NOWHERE is not in table "
                                "cost_centers (account 4000)")
    assert p.refused.money_at_risk == Decimal("125.50")
    p = refused(one_charge(charge_code={"code": "99999"}, procedure_code=None))
    assert p.refused is not None
    assert "unmapped service line: charge/99999 not in table service_lines" in p.refused.reason
    p = refused(one_charge(facility="ELSEWHERE"))
    assert p.refused is not None
    assert p.refused.reason == ("rule charge-posted: unmapped facility: ELSEWHERE is not in [entities] or "
                                "[facility_aliases]")
    p = refused(one_charge(posting_date="1999-01-01", service_date=None))
    assert p.refused is not None and "1999-01-01 is not in table fiscal_calendar" in p.refused.reason
    events = events_835(X12 / "balanced_2claims_plb.835")
    cas = next(e for e in events if e["type"].endswith("claims.adjustment.recorded.v1"))
    p = refused({**cas, "data": {**cas["data"], "group_code": "XX"}})
    assert p.refused is not None
    assert p.refused.reason == ("rule claim-adjustment: unmapped account: XX/1 is not in table cas_adjustments")
    assert p.refused.money_at_risk == Decimal("20.00")
    # No patient data in a reason: the patient and account ids of the charge are not in it.
    charge = one_charge(department="NOWHERE")
    assert all(str(charge["data"][k]) not in (p.refused.reason or "") for k in ("patient_id", "account_number"))


def test_an_unbalanced_result_is_refused_with_the_money_at_risk() -> None:
    events = events_835(X12 / "balanced_2claims_plb.835")
    plb = next(e for e in events if e["type"].endswith("provider_adjustment.recorded.v1"))
    assert post(plb, RULES).entries
    p = refused({**plb, "data": {**plb["data"], "total": "12.00"}})  # items say 10.00
    assert p.refused is not None
    assert p.refused.reason == "rule provider-adjustment: unbalanced entry: debits 10.00 != credits 12.00"
    assert p.refused.money_at_risk == Decimal("12.00")


def test_a_malformed_event_is_refused_without_its_values() -> None:
    p = refused(one_charge(amount="lots", patient_id="MRN-SECRET"))
    assert p.refused is not None and p.refused.reason.startswith("rule charge-posted: not a valid")
    assert "data.amount" in p.refused.reason and "lots" not in p.refused.reason and "SECRET" not in p.refused.reason


def test_non_financial_events_are_skipped() -> None:
    events = [e for e in events_hl7() if e["type"].startswith(T + "patient.encounter.")]
    assert events
    for event in events:
        posting = post(event, RULES)
        assert posting.skipped and not posting.entries and posting.refused is None
        assert posting.note == f"rule encounters posts nothing for {event['type']}"


def test_denials_as_an_account_are_booked(tmp_path: Path) -> None:
    path = copy_rules(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('denials = "memo"\ndebit = "9000"\ncredit = "9001"',
                                 'denials = "account"\ndebit = "4600"\ncredit = "4500"'), encoding="utf-8")
    events = events_835(X12 / "balanced_2claims_plb.835")
    denial = next(e for e in events if e["type"].endswith("denial.recorded.v1"))
    (entry,) = post(denial, load_rules(path)).entries
    assert not entry.data.memo
    assert net([entry]) == {"4600": Decimal("100.00"), "4500": Decimal("-100.00")}


def test_entries_validate_against_the_exported_schema_and_asyncapi_lists_the_subject() -> None:
    import jsonschema  # type: ignore[import-untyped]

    from canonical.schemas import asyncapi_document, default_models, default_subjects, event_schemas

    models = default_models()
    schema = event_schemas(models)[T + "finance.journal_entry.created.v1"]
    entries = post_all(events_835(X12 / "balanced_2claims_plb.835") + usd_hl7())
    for entry in entries:
        jsonschema.validate(json.loads(entry.to_json()), schema)
    channels = asyncapi_document(models, default_subjects(models), version="0")["channels"]
    subject = "canonical.finance.journal_entry.created"
    assert {subject, f"shadow.{subject}"} <= set(channels)
