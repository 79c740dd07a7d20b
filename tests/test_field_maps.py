"""Site maps (canonical/hl7v2/fieldmap.py): declarative HL7 field maps per interface.

Pure translation on the fixtures (fixtures/mappings/), the compile-time checks with their keys,
then real components: `ficus check` and `ficus translate` as processes, and a real Service on a
real nats-server with two MLLP interfaces, one with a site map and one without.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest

from canonical.errors import TranslationError
from canonical.hl7v2 import adt, dft
from canonical.hl7v2.fieldmap import FieldMapError, compile_field_map, load_field_map
from canonical.schemas import default_models, event_schemas
from canonical.translate import Hl7Mapping, TranslationContext, translate_hl7, with_field_map
from router import names
from router.config import ConfigError, MllpInterfaceConfig
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import MllpTestClient, msa

REPO = Path(__file__).resolve().parent.parent
MAPS = REPO / "fixtures" / "mappings"
HL7 = REPO / "fixtures" / "hl7"
CTX = TranslationContext("north-charges", "live", "raw.north-charges/1", datetime(2024, 3, 5, 15, 0, tzinfo=UTC))
DFT = (MAPS / "dft_north_site.hl7").read_bytes()
ADT = (MAPS / "adt_north_site.hl7").read_bytes()
# Patient data in the fixtures that must never reach a reason.
PATIENT_DATA = ["TESTPATIENT", "ALPHA", "19800101", "SAMPLE"]


def site(path: str | Path | dict[str, Any], base: str = "hl7v2") -> Hl7Mapping:
    fm = load_field_map(path) if not isinstance(path, dict) else compile_field_map(path)
    return with_field_map(base, fm)


def data_of(raw: bytes, mapping: str | Hl7Mapping, ctx: TranslationContext = CTX) -> list[dict[str, Any]]:
    return [json.loads(e.to_json())["data"] for e in translate_hl7(raw, mapping, ctx).events]


def edit(raw: bytes, segment: str, field: int, value: str, occurrence: int = 1) -> bytes:
    lines = raw.rstrip(b"\r").split(b"\r")
    seen = 0
    for i, line in enumerate(lines):
        parts = line.decode("latin-1").split("|")
        if parts[0] == segment:
            seen += 1
            if seen == occurrence:
                parts += [""] * (field + 1 - len(parts))
                parts[field] = value
                lines[i] = "|".join(parts).encode("latin-1")
    return b"\r".join(lines) + b"\r"


def drop(raw: bytes, segment: str) -> bytes:
    lines = raw.rstrip(b"\r").split(b"\r")
    return b"\r".join(line for line in lines if not line.startswith(segment.encode() + b"|")) + b"\r"


def error_of(raw: bytes, mapping: Hl7Mapping) -> TranslationError:
    with pytest.raises(TranslationError) as caught:
        translate_hl7(raw, mapping, CTX)
    return caught.value


# -- the acceptance: account from a Z-segment, department from PV1-3.4 --------------------------


def test_site_map_changes_the_dft_events_as_expected() -> None:
    builtin = data_of(DFT, "hl7v2")
    mapped = data_of(DFT, site(MAPS / "north_dft.toml"))
    assert [d["account_number"] for d in builtin] == ["ACCT000456", "ACCT000456"]  # PID-18
    assert [d["account_number"] for d in mapped] == ["NA-77001", "NA-77001"]  # ZAC-2
    assert [d["department"] for d in builtin] == ["LAB", "CLIN"]  # FT1-13
    assert [d["department"] for d in mapped] == ["CARDIOLOGY", "CARDIOLOGY"]  # PV1-3.4
    # Each FT1 reads the ZFT of its own group; typed by the converters.
    assert [d["extensions"] for d in mapped] == [
        {"cost_center": "CC-4410", "revenue_code": {"code": "0300", "text": "LABORATORY", "system": "UB04"},
         "copay": "12.00"},
        {"cost_center": "CC-5120", "revenue_code": {"code": "0510", "text": "CLINIC", "system": "UB04"},
         "copay": None},
    ]
    # Everything the map does not name is what the built-in mapping gives.
    for b, m in zip(builtin, mapped, strict=True):
        assert "extensions" not in b
        untouched = set(b) - {"account_number", "department"}
        assert {k: m[k] for k in untouched} == {k: b[k] for k in untouched}
    events = translate_hl7(DFT, site(MAPS / "north_dft.toml"), CTX).events
    assert isinstance(events[0].data.extensions, dict) and events[0].data.extensions["copay"] == Decimal("12.00")
    # Same ids as the built-in mapping's events: a site map changes content, not identity.
    assert [e.id for e in events] == [e.id for e in translate_hl7(DFT, "hl7v2", CTX).events]


def test_fallback_chain_when_the_z_segment_is_absent() -> None:
    mapped = data_of(drop(DFT, "ZAC"), site(MAPS / "north_dft.toml"))
    assert [d["account_number"] for d in mapped] == ["ACCT000456", "ACCT000456"]  # PID-18, the fallback


def test_a_z_segment_inside_an_ft1_group_belongs_to_that_charge() -> None:
    # A ZAC after FT1 #2 (in its group) is that charge's account; FT1 #1 keeps the message's one.
    lines = DFT.rstrip(b"\r").split(b"\r")
    at = next(i for i, line in enumerate(lines) if line.startswith(b"ZFT|2|"))
    raw = b"\r".join([*lines[: at + 1], b"ZAC|2|NA-99999", *lines[at + 1 :]]) + b"\r"
    mapped = data_of(raw, site(MAPS / "north_dft.toml"))
    assert [d["account_number"] for d in mapped] == ["NA-77001", "NA-99999"]
    # Without the message-level ZAC, FT1 #1 has none in its group: the fallback (PID-18).
    only_grouped = b"\r".join(line for line in raw.split(b"\r") if not line.startswith(b"ZAC|1|"))
    mapped = data_of(only_grouped, site(MAPS / "north_dft.toml"))
    assert [d["account_number"] for d in mapped] == ["ACCT000456", "NA-99999"]


def test_the_builtin_mapping_is_untouched_without_a_site_map() -> None:
    for path in sorted(HL7.glob("*.hl7")):
        try:
            plain = [e.to_json() for e in translate_hl7(path.read_bytes(), "hl7v2", CTX).events]
        except TranslationError:
            continue
        assert all(b'"extensions"' not in body for body in plain), path.name
    # A map for the other family leaves this one's handler as it is (the same function).
    adt_only = site(MAPS / "north_adt.toml")
    assert adt_only.handlers[("DFT", "P03")] is dft.map_dft_p03
    assert adt_only.handlers[("ADT", "A01")] is not adt.map_adt


def test_encounter_map_with_lookups_and_the_interface_zone() -> None:
    ctx = TranslationContext("north-adt", "live", "raw.north-adt/1", CTX.received_at, "Europe/Berlin")
    (data,) = data_of(ADT, site(MAPS / "north_adt.toml"), ctx)
    assert data["hospital_service"] == "CAR"  # ZPV-2 CARD through lookup services
    assert data["account_number"] == "NA-88002"
    assert data["admit_time"] == "2024-03-01T09:30:00+01:00"  # ZPV-4 in the interface's zone
    assert data["extensions"] == {"isolation": "yes"}
    (plain,) = data_of(ADT, "hl7v2", ctx)
    assert (plain["hospital_service"], plain["account_number"]) == ("MED", "ACCT000654")
    # lookup_miss = "null": an unknown code is no value; the default "error" dead-letters it.
    (data,) = data_of(edit(ADT, "ZPV", 5, "MAYBE"), site(MAPS / "north_adt.toml"), ctx)
    assert data["extensions"] == {"isolation": None}
    error = error_of(edit(ADT, "ZPV", 2, "PSYCH"), site(MAPS / "north_adt.toml"))
    assert error.reason == "site map field hospital_service: the value at ZPV-2 is not in lookup services"
    assert (error.locator, error.control_id) == ("ZPV-2", "ADTZ001")
    assert "PSYCH" not in error.reason


def test_converters_and_their_errors_name_field_and_path_never_the_value() -> None:
    mapping = site(MAPS / "north_dft.toml")
    error = error_of(edit(DFT, "ZFT", 5, "12,00"), mapping)
    assert error.reason == "FT1[1] site map field copay: ZFT-5 is not a decimal"
    assert error.locator == "ZFT-5" and error.amount == Decimal("170.50")  # the money held up
    dates = site({"charge": {"service_date": "ZFT-3", "booked": {"path": "ZFT-3", "convert": "date"},
                             "posted_at": {"path": "FT1-5", "convert": "timestamp"}}})
    first, second = data_of(DFT, dates)
    assert (first["service_date"], first["extensions"]["booked"]) == ("2024-03-05", "2024-03-05")
    assert first["extensions"]["posted_at"] == "2024-03-05T14:30:00+00:00"
    assert second["service_date"] == "2024-03-04"
    error = error_of(edit(DFT, "ZFT", 3, "20241340", occurrence=2), dates)
    assert error.reason == "FT1[2] site map field service_date: ZFT-3 is not a valid HL7 timestamp"
    required = site({"charge": {"cost_center": {"path": "ZFT-9", "required": True}}})
    assert error_of(DFT, required).reason == "FT1[1] site map field cost_center: no value at ZFT-9"
    defaulted = site({"charge": {"cost_center": {"path": "ZFT-9", "default": "CC-0000"}}})
    assert [d["extensions"]["cost_center"] for d in data_of(DFT, defaulted)] == ["CC-0000", "CC-0000"]
    for reason in (error.reason, error_of(DFT, required).reason):
        assert not [w for w in PATIENT_DATA if w in reason]


def test_transaction_type_through_a_lookup_decides_posted_or_credited() -> None:
    raw = edit(edit(DFT, "FT1", 6, "CHG"), "FT1", 6, "RVS", occurrence=2)
    mapping = site({"charge": {"transaction_type": {"path": "FT1-6", "lookup": "types"}},
                    "lookups": {"types": {"CHG": "CG", "RVS": "CD"}}})
    events = translate_hl7(raw, mapping, CTX).events
    assert [e.type.split(".")[-2] for e in events] == ["posted", "credited"]
    assert [str(getattr(e.data, "net_amount", None)) for e in events] == ["125.50", "-45.00"]
    error = error_of(raw, site({"charge": {"transaction_type": {"path": "FT1-6", "lookup": "types",
                                                                 "lookup_miss": "keep"}},
                                "lookups": {"types": {"CHG": "CG"}}}))
    assert error.reason == "FT1[2] site map field transaction_type is not one of CD, CG, CR"


def test_events_with_extensions_fit_their_published_schema() -> None:
    schemas = event_schemas(default_models())
    events = translate_hl7(DFT, site(MAPS / "north_dft.toml"), CTX).events
    events += translate_hl7(ADT, site(MAPS / "north_adt.toml"), CTX).events
    for event in events:
        jsonschema.validate(json.loads(event.to_json()), schemas[event.type])
    charge = schemas["org.ficus.revenue.charge.posted.v1"]
    ext = charge["properties"]["data"]
    ext = charge["$defs"]["ChargeData"]["properties"]["extensions"] if "$ref" in ext else ext
    assert ext["type"] == "object" and "extensions" not in charge["$defs"]["ChargeData"].get("required", [])
    bad = json.loads(events[0].to_json())
    bad["data"]["extensions"]["copay"] = 12
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, charge)


@pytest.mark.parametrize(("spec", "message"), [
    ({"charge": {"account_number": "ZAC-x"}},
     "charge.account_number.path: 'ZAC-x' is not an HL7 path"),
    ({"charge": {"account_number": {"path": "ZAC-2", "fallback": ["PID18"]}}},
     "charge.account_number.fallback[0]: 'PID18' is not an HL7 path"),
    ({"charge": {"net_amount": "ZFT-4"}}, "charge.net_amount: not mapped by a site map"),
    ({"charge": {"facility": "ZFT-4"}}, "charge.facility: not mapped by a site map"),
    ({"charge": {"amount": {"path": "ZFT-4", "convert": "date"}}},
     "charge.amount.convert: amount is a canonical field read as 'decimal', not 'date'"),
    ({"charge": {"x": {"path": "ZFT-4", "convert": "money"}}}, "charge.x.convert: 'money' is not one of"),
    ({"charge": {"x": {"path": "ZFT-4", "lookup": "nope"}}}, "charge.x.lookup: no [lookups.nope] table"),
    ({"charge": {"Cost-Center": "ZFT-4"}}, "charge.Cost-Center: field names are lowercase"),
    ({"charge": {"charge_code": "FT1-7.2"}}, "charge.charge_code.path: a coded value is read from a whole field"),
    ({"charge": {"x": {"path": "ZFT-4", "colour": "red"}}}, "charge.x: unknown key 'colour'"),
    ({"billing": {}}, "billing: unknown table"),
])
def test_compile_errors_name_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FieldMapError) as caught:
        compile_field_map(spec)
    assert str(caught.value).startswith(message), str(caught.value)


def test_paths_with_repetitions_components_and_occurrences() -> None:
    mapping = site({"charge": {"ssn": "PID-3[2].1", "ssn_kind": "PID-3[2].5", "second_dx": "DG1#2-3.2",
                               "plan_name": "IN1-2.2"}})
    raw = DFT.replace(b"DG1|1|I10|R51^Headache^I10|Headache||F",
                      b"DG1|1|I10|R51^Headache^I10|Headache||F\rDG1|2|I10|Z00.00^General exam^I10")
    raw = raw.replace(b"MRN000123^^^NORTHCLINIC^MR", b"MRN000123^^^NORTHCLINIC^MR~99-0000-123^^^SSA^SS")
    (first, _) = data_of(raw, mapping)
    assert first["extensions"] == {"ssn": "99-0000-123", "ssn_kind": "SS", "second_dx": "General exam",
                                   "plan_name": "SYNTHETIC PLAN"}


def test_config_inline_and_file_maps(tmp_path: Path) -> None:
    inline = make_config("nats://127.0.0.1:14222", [{
        "name": "north-charges", "route": "modern",
        "field_map": {"charge": {"account_number": {"path": "ZAC-2", "fallback": ["PID-18"]},
                                 "department": "PV1-3.4"}}}])
    iface = inline.interfaces[0]
    assert isinstance(iface, MllpInterfaceConfig) and iface.site_map is not None
    assert [d["account_number"] for d in data_of(DFT, iface.hl7_mapping)] == ["NA-77001", "NA-77001"]
    plain = make_config("nats://127.0.0.1:14222", [{"name": "south-charges", "route": "modern"}]).interfaces[0]
    assert isinstance(plain, MllpInterfaceConfig) and plain.hl7_mapping == "hl7v2"
    with pytest.raises(ConfigError) as caught:
        make_config("nats://127.0.0.1:14222", [{"name": "north-charges", "route": "modern",
                                               "field_map": {"charge": {"department": "PV1-3,4"}}}])
    assert caught.value.problems == [
        "interfaces[north-charges]: field_map: charge.department.path: 'PV1-3,4' is not an HL7 path "
        "(SEG-field[repetition].component.subcomponent, e.g. PID-18, PV1-3.4, PID-3[2].1, ZFT-2, OBX#2-5)"]


# -- real components -------------------------------------------------------------------------------


def ficus(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _config(tmp_path: Path, field_map_line: str) -> Path:
    (tmp_path / "maps").mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "ficus.toml"
    cfg.write_text(f"""
[[interfaces]]
name = "north-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
route = "modern"
{field_map_line}

[[interfaces]]
name = "south-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
route = "modern"
""")
    return cfg


def test_ficus_check_reports_a_bad_path_with_its_key(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'field_map = "maps/north.toml"')
    good = (MAPS / "north_dft.toml").read_text()
    (tmp_path / "maps" / "north.toml").write_text(good)
    result = ficus("check", "-c", str(cfg))  # relative to the config file, whatever the working directory
    assert result.returncode == 0, result.stderr
    assert "north-charges" in result.stdout
    (tmp_path / "maps" / "north.toml").write_text(good.replace('department = "PV1-3.4"', 'department = "PV1-3-4"'))
    result = ficus("check", "-c", str(cfg))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{cfg}: interfaces[north-charges]: field_map: {tmp_path / 'maps' / 'north.toml'}: charge.department.path: "
        "'PV1-3-4' is not an HL7 path (SEG-field[repetition].component.subcomponent, e.g. PID-18, PV1-3.4, "
        "PID-3[2].1, ZFT-2, OBX#2-5)")
    inline = _config(tmp_path / "inline", '[interfaces.field_map.charge]\naccount_number = { path = "ZAC-2", '
                               'fallback = ["PID-18", "PV1-19.x"] }')
    result = ficus("check", "-c", str(inline))
    assert result.returncode == 1
    assert "interfaces[north-charges]: field_map: charge.account_number.fallback[1]: 'PV1-19.x' is not an HL7 " \
        "path" in result.stderr
    (tmp_path / "maps" / "north.toml").unlink()
    result = ficus("check", "-c", str(cfg))
    assert result.returncode == 1 and "field_map: " in result.stderr and "north.toml: file not found" in result.stderr


def test_ficus_translate_uses_the_interfaces_site_map(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'field_map = "maps/north.toml"')
    (tmp_path / "maps" / "north.toml").write_text((MAPS / "north_dft.toml").read_text())
    message = tmp_path / "dft.hl7"
    message.write_bytes(DFT)
    north = ficus("translate", "-c", str(cfg), "--interface", "north-charges", str(message))
    south = ficus("translate", "-c", str(cfg), "--interface", "south-charges", str(message))
    assert north.returncode == 0 and south.returncode == 0, north.stderr + south.stderr
    north_data = [json.loads(line)["data"] for line in north.stdout.splitlines()]
    south_data = [json.loads(line)["data"] for line in south.stdout.splitlines()]
    assert [d["account_number"] for d in north_data] == ["NA-77001", "NA-77001"]
    assert [d["extensions"]["cost_center"] for d in north_data] == ["CC-4410", "CC-5120"]
    assert [d["account_number"] for d in south_data] == ["ACCT000456", "ACCT000456"]
    assert all("extensions" not in d for d in south_data)


def test_mapping_test_catches_a_site_map_change(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'field_map = "maps/north.toml"')
    site_map = tmp_path / "maps" / "north.toml"
    site_map.write_text((MAPS / "north_dft.toml").read_text())
    message, expected = tmp_path / "dft.hl7", tmp_path / "expected.jsonl"
    message.write_bytes(DFT)
    args = ("mapping", "test", "-c", str(cfg), "--expect", str(expected), "north-charges", str(message))
    assert ficus(*args, "--update").returncode == 0
    assert ficus(*args).returncode == 0
    site_map.write_text(site_map.read_text().replace('department = "PV1-3.4"', 'department = "FT1-13"'))
    result = ficus(*args)
    assert result.returncode == 1
    assert 'data.department: expected "CARDIOLOGY", got "LAB"' in result.stdout + result.stderr


def test_an_hl7_file_interface_takes_a_site_map_too(tmp_path: Path) -> None:
    cfg = tmp_path / "ficus.toml"
    cfg.write_text(f"""
[[interfaces]]
name = "north-files"
kind = "folder"
path = "{tmp_path / 'drop'}"
format = "hl7v2"
route = "modern"
after = "leave"
field_map = "{MAPS / 'north_dft.toml'}"
""")
    message = tmp_path / "batch.hl7"
    message.write_bytes(DFT + DFT.replace(b"|DFTZ001|", b"|DFTZ003|"))
    result = ficus("translate", "-c", str(cfg), "--interface", "north-files", str(message))
    assert result.returncode == 0, result.stderr
    data = [json.loads(line)["data"] for line in result.stdout.splitlines()]
    assert [d["account_number"] for d in data] == ["NA-77001"] * 4
    assert [d["extensions"]["cost_center"] for d in data] == ["CC-4410", "CC-5120"] * 2
    csv = cfg.read_text().replace('format = "hl7v2"', 'format = "x12-835"')
    cfg.write_text(csv)
    result = ficus("check", "-c", str(cfg))
    assert result.returncode == 1
    assert "interfaces[north-files]: field_map is for HL7 v2 interfaces (format 'hl7v2')" in result.stderr


async def _stored(url: str) -> list[dict[str, Any]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(names.STREAM_CANONICAL)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(names.STREAM_CANONICAL, seq)
            out.append(json.loads(msg.data or b"{}"))
        return out
    finally:
        await nc.close()


@pytest.mark.integration
@pytest.mark.usefixtures("ledger_balances")
async def test_service_with_a_site_map_and_one_without(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [
        {"name": "north-charges", "route": "modern", "field_map": str(MAPS / "north_dft.toml")},
        {"name": "south-charges", "route": "modern"},
        {"name": "north-adt", "route": "modern", "timezone": "Europe/Berlin",
         "field_map": str(MAPS / "north_adt.toml")},
    ], state_dir=tmp_path / "state")
    plain = DFT.replace(b"|||AL|NE||", b"|||||", 1)  # original mode: an AA, or an AE for a dead letter
    bad_copay = edit(plain, "ZFT", 5, "twelve").replace(b"|DFTZ001|", b"|DFTZ002|")
    async with service_factory(cfg) as svc:
        for iface, payload, answer in (("north-charges", plain, "AA"), ("south-charges", plain, "AA"),
                                         ("north-adt", ADT, "AA"), ("north-charges", bad_copay, "AE")):
            async with MllpTestClient(svc.interfaces[iface].listener.port) as client:
                assert msa(await client.exchange(payload))[0] == answer, iface
        stored = await wait_for(lambda: _enough(nats_server.url, 5), timeout=20)
        letters = await wait_for(lambda: _letters(nats_server.url), timeout=20)
    by_iface: dict[str, list[dict[str, Any]]] = {}
    for event in stored:
        by_iface.setdefault(event["ficusinterface"], []).append(event["data"])
    north, south, encounters = by_iface["north-charges"], by_iface["south-charges"], by_iface["north-adt"]
    assert [(d["account_number"], d["department"]) for d in north] == [("NA-77001", "CARDIOLOGY")] * 2
    assert [d["extensions"]["cost_center"] for d in north] == ["CC-4410", "CC-5120"]
    # The interface without a site map publishes exactly the built-in events.
    south_ctx = TranslationContext("south-charges", "live", "x", CTX.received_at)
    expected = [json.loads(e.to_json())["data"] for e in translate_hl7(DFT, "hl7v2", south_ctx).events]
    assert south == expected and all("extensions" not in d for d in south)
    assert encounters[0]["hospital_service"] == "CAR" and encounters[0]["extensions"] == {"isolation": "yes"}
    # A site map's conversion error is one dead letter naming the field, never a crashed listener.
    assert [(letter["interface"], letter["reason"]) for letter in letters] == [
        ("north-charges", "FT1[1] site map field copay: ZFT-5 is not a decimal")]


async def _enough(url: str, count: int) -> list[dict[str, Any]] | None:
    stored = await _stored(url)
    return stored if len(stored) >= count else None


async def _letters(url: str) -> list[dict[str, Any]] | None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(names.STREAM_DLQ)
        except nats.js.errors.NotFoundError:
            return None
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(names.STREAM_DLQ, seq)
            out.append(json.loads(msg.data or b"{}"))
        return out or None
    finally:
        await nc.close()
