"""User code mappings (issue 17 item 2): a site package built into a wheel, pip-installed into a
--target directory, found through the ``ficus.mappings`` entry point group.

* ``ficus translate`` and ``ficus check`` as processes with the package on their PYTHONPATH:
  custom ZCH^P03 messages become the mapping's own events; an exception inside it is a dead
  letter naming the mapping (and the code position), the next message still translates; a
  function that is not declared or typed right is refused at start-up with its key.
* A real Service (nats-server, MLLP listener) on the same package: AA, AE (the exception), AA
  again on one connection, the events on their own subject, one dead letter naming the
  mapping, and the mapping's type in the served schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from canonical import usermap
from router import names
from router.embedded_nats import EmbeddedNats
from tests import site_package
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.test_service_mllp import read_subject

REPO = Path(__file__).resolve().parent.parent
ZTYPE = "org.ficus.site.zcharge.recorded.v1"


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return site_package.install(tmp_path_factory.mktemp("site-wheel"))


@pytest.fixture
def on_path(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed package on this process's sys.path; loaded mappings forgotten after."""
    monkeypatch.syspath_prepend(str(site_dir))
    usermap.forget()
    try:
        yield site_dir
    finally:
        usermap.forget()


def ficus(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(site), str(REPO)))}
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def config(tmp: Path, mapping: str) -> Path:
    path = tmp / "ficus.toml"
    path.write_text(f"""
state_dir = "{tmp / 'state'}"

[[interfaces]]
name = "site-z"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
mapping = "{mapping}"
route = "modern"
timezone = "Europe/Berlin"
""")
    return path


def test_wheel_mapping_translates_custom_messages_and_dead_letters_its_exception(
    site_dir: Path, tmp_path: Path,
) -> None:
    messages = tmp_path / "zch.hl7"
    messages.write_bytes(b"".join((
        site_package.zch("Z1", [("ACC-1", "CARDIO", "R1", "2"), ("ACC-1", "LAB", "R2", "")]),
        site_package.zch("Z2", [("ACC-2", "CARDIO", "R9", "1")]),  # unknown rate: KeyError inside
        site_package.zch("Z3", []),  # no ZFT: the mapping's own dead letter
        site_package.zch("Z4", [("ACC-4", "ER", "R2", "3")]),
    )).replace(b"\r", b"\n"))
    result = ficus(site_dir, "translate", "-c", str(config(tmp_path, "entrypoint:zcharges")),
                   "--interface", "site-z", str(messages))
    assert result.returncode == 1, result.stderr  # two messages failed
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["type"], e["subject"]) for e in events] == [
        (ZTYPE, "Z1/ZFT[1]"), (ZTYPE, "Z1/ZFT[2]"), (ZTYPE, "Z4/ZFT[1]")]
    assert [e["data"] for e in events] == [
        {"control_id": "Z1", "line": 1, "account_number": "ACC-1", "department": "CARDIO", "rate_code": "R1",
         "quantity": "2", "amount": "25.00"},
        {"control_id": "Z1", "line": 2, "account_number": "ACC-1", "department": "LAB", "rate_code": "R2",
         "quantity": "1", "amount": "40.00"},
        {"control_id": "Z4", "line": 1, "account_number": "ACC-4", "department": "ER", "rate_code": "R2",
         "quantity": "3", "amount": "120.00"},
    ]
    assert {e["ficusinterface"] for e in events} == {"site-z"}
    assert {e["ficusfacility"] for e in events} == {"NORTH"}
    assert events[0]["time"] == "2026-11-30T10:15:00+01:00"  # MSH-7 in the interface's zone
    letters = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(x["control_id"], x["error"]) for x in letters] == [("Z2", "TranslationError"),
                                                               ("Z3", "TranslationError")]
    assert letters[0]["reason"].startswith("mapping entrypoint:zcharges raised KeyError at charges.py:")
    assert letters[1]["reason"] == "mapping entrypoint:zcharges: ZCH^P03 has no ZFT segment"
    assert "R9" not in result.stderr  # the exception's message (a value) stays out

    # The same ids on a second run: a re-translation (replay) publishes nothing twice.
    again = ficus(site_dir, "translate", "-c", str(config(tmp_path, "entrypoint:zcharges")),
                  "--interface", "site-z", str(messages))
    assert [json.loads(line)["id"] for line in again.stdout.splitlines()] == [e["id"] for e in events]


@pytest.mark.parametrize(("name", "problem"), [
    ("untyped", "parameter 'msg' must be annotated canonical.usermap.Hl7Input"),
    ("wrong_return", "must be annotated to return list[CloudEvent]"),
    ("undeclared", "is not a function declared with @canonical.usermap.mapping"),
    ("nowhere", "no entry point 'nowhere' in group ficus.mappings (installed: "),
])
def test_check_refuses_a_mapping_that_is_not_typed_or_declared(
    site_dir: Path, tmp_path: Path, name: str, problem: str,
) -> None:
    cfg = config(tmp_path, f"entrypoint:{name}")
    result = ficus(site_dir, "check", "-c", str(cfg))
    assert result.returncode == 1, result.stdout
    assert f"{cfg}: interfaces[site-z].mapping: " in result.stderr
    assert problem in result.stderr
    if name == "nowhere":
        assert "zcharges" in result.stderr  # what is installed, to fix a typo
    ok = ficus(site_dir, "check", "-c", str(config(tmp_path, "entrypoint:zcharges")))
    assert ok.returncode == 0, ok.stderr



def test_check_refuses_a_site_map_beside_a_user_mapping(site_dir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, "entrypoint:zcharges")
    cfg.write_text(cfg.read_text() + '\n[interfaces.field_map.charge]\naccount_number = "ZFT-2"\n')
    result = ficus(site_dir, "check", "-c", str(cfg))
    assert result.returncode == 1, result.stdout
    assert ("field_map: a site map applies to the built-in mappings, not to entrypoint:zcharges (its code reads "
            "the fields)") in result.stderr


def record_config(tmp: Path, target: str) -> Path:
    path = tmp / "records.toml"
    path.write_text(f"""
state_dir = "{tmp / 'state'}"

[[interfaces]]
name = "site-counts"
kind = "folder"
path = "{tmp / 'drop'}"
format = "csv"
route = "modern"
after = "leave"

[interfaces.flat.layout]
kind = "csv"
header = true

[interfaces.flat.mapping]
target = "{target}"
key = ["count_id"]
facility_field = "facility"
fields = [
  {{ field = "count_id", column = "ID" }},
  {{ field = "item", column = "ITEM" }},
  {{ field = "quantity", column = "QTY", type = "integer" }},
  {{ field = "location", column = "BIN", required = false }},
  {{ field = "facility", column = "SITE" }},
]
""")
    return path


def test_record_mapping_on_a_csv_interface(site_dir: Path, tmp_path: Path) -> None:
    counts = tmp_path / "counts.csv"
    counts.write_text("ID,ITEM,QTY,BIN,SITE\n"
                      "C1,GLV,40,B-12,NORTH\n"
                      "C2,XXX,1,B-13,NORTH\n"    # no price: KeyError inside the site's code
                      "C3,MSK,0,,SOUTH\n"        # the mapping's own dead letter
                      "C4,MSK,3,,SOUTH\n"
                      "C5,GLV,many,B-1,NORTH\n")  # not an integer: the declared field type refuses it
    cfg = record_config(tmp_path, "entrypoint:zsupply")
    result = ficus(site_dir, "translate", "-c", str(cfg), "--interface", "site-counts", str(counts))
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["type"], e["subject"], e["ficusfacility"], e["data"]) for e in events] == [
        ("org.ficus.site.supply.counted.v1", "C1", "NORTH",
         {"item": "GLV", "quantity": 40, "location": "B-12", "value": "10.00"}),
        ("org.ficus.site.supply.counted.v1", "C4", "SOUTH",
         {"item": "MSK", "quantity": 3, "location": None, "value": "3.30"}),
    ]
    letters = [json.loads(line) for line in result.stderr.splitlines()]
    assert [x["line"] for x in letters] == [3, 4, 6]
    raised = "counts.csv line 3: mapping entrypoint:zsupply raised KeyError at charges.py:"
    assert letters[0]["reason"].startswith(raised)
    assert letters[1]["reason"] == ("counts.csv line 4: mapping entrypoint:zsupply: a count of zero is not sent "
                                    "by this site's scanners")
    assert letters[2]["reason"].startswith("counts.csv line 6: ") and "quantity" in letters[2]["reason"]

    # An HL7 mapping named as a record target (and the other way round) is refused at start-up.
    wrong = ficus(site_dir, "check", "-c", str(record_config(tmp_path, "entrypoint:zcharges")))
    assert wrong.returncode == 1
    assert "mapping entrypoint:zcharges is a hl7 mapping; this interface needs one declared with " \
           "@usermap.record_mapping (records)" in wrong.stderr
    wrong = ficus(site_dir, "check", "-c", str(config(tmp_path, "entrypoint:zsupply")))
    assert wrong.returncode == 1 and "interfaces[site-z].mapping: " in wrong.stderr
    assert "is a record mapping; this interface needs one declared with @usermap.mapping" in wrong.stderr


@pytest.mark.integration
@pytest.mark.usefixtures("ledger_balances")
async def test_service_dead_letters_the_exception_and_keeps_listening(
    on_path: Path, nats_server: EmbeddedNats, service_factory: ServiceFactory,
) -> None:
    cfg = make_config(nats_server.url, [{"name": "site-z", "mapping": "entrypoint:zcharges", "route": "modern"}])
    good = site_package.zch("S1", [("ACC-7", "CARDIO", "R1", "4")])
    raising = site_package.zch("S2", [("ACC-8", "CARDIO", "NOPE", "1")])
    after = site_package.zch("S3", [("ACC-9", "LAB", "R2", "1"), ("ACC-9", "LAB", "R1", "1")])
    async with service_factory(cfg) as svc:
        port = svc.interfaces["site-z"].listener.port
        async with MllpTestClient(port) as client:
            assert msa(await client.exchange(good)) == ("AA", "S1")
            reply = await client.exchange(raising)
            assert msa(reply) == ("AE", "S2")
            assert reply is not None and b"mapping entrypoint:zcharges raised KeyError" in reply
            assert msa(await client.exchange(after)) == ("AA", "S3")  # same connection, same listener
        subject = "canonical.site.zcharge.recorded"
        await wait_for(lambda: stream_count(nats_server.url, names.STREAM_CANONICAL, subject), timeout=10)
        events = await read_subject(nats_server.url, names.STREAM_CANONICAL, subject)
        assert [(e["subject"], e["data"]["amount"]) for e in events] == [
            ("S1/ZFT[1]", "50.00"), ("S3/ZFT[1]", "40.00"), ("S3/ZFT[2]", "12.50")]
        assert {e["type"] for e in events} == {ZTYPE}
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("site-z"))
        assert [(x["kind"], x["unit"]) for x in letters] == [("untranslatable", "S2")]
        assert letters[0]["reason"].startswith("mapping entrypoint:zcharges raised KeyError at charges.py:")
        assert svc.interfaces["site-z"].stats.dead_lettered == 1
        # The mapping's own type is part of the schemas consumers read.
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{svc.api_url}/api/v1/schemas/{ZTYPE}")
            assert resp.status == 200
            schema = await resp.json()
    data = schema["properties"]["data"]
    ref = data.get("$ref", "").rsplit("/", 1)[-1]
    props = (schema.get("$defs", {}).get(ref) or data)["properties"]
    assert {"account_number", "department", "rate_code", "amount"} <= set(props)


@pytest.mark.integration
async def test_batch_file_in_a_drop_folder_the_raising_message_dead_lettered_alone(
    on_path: Path, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path,
) -> None:
    for d in ("in", "archive"):
        (tmp_path / d).mkdir()
    iface = {"name": "site-files", "kind": "folder", "path": str(tmp_path / "in"), "patterns": ["*.hl7"],
             "poll_seconds": 0.2, "complete": "rename", "format": "hl7v2", "mapping": "entrypoint:zcharges",
             "after": "archive", "archive_dir": str(tmp_path / "archive"), "route": "modern"}
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    messages = [site_package.zch(f"F{i}", [(f"ACC-{i}", "LAB", "NOPE" if i == 2 else "R2", "1")]) for i in (1, 2, 3)]
    data = b"FHS|^~\\&|SITEHIS|NORTH\rBHS|^~\\&|SITEHIS|NORTH\r" + b"".join(messages) + b"BTS|3\rFTS|1\r"
    async with service_factory(cfg) as svc:
        (tmp_path / "night.hl7.part").write_bytes(data)
        (tmp_path / "night.hl7.part").rename(tmp_path / "in" / "night.hl7")
        await wait_for(lambda: (tmp_path / "archive" / "night.hl7").exists(), timeout=30)
        assert svc.interfaces["site-files"].stats.dead_lettered == 1
    events = await read_subject(nats_server.url, names.STREAM_CANONICAL, "canonical.site.zcharge.recorded")
    assert [e["subject"] for e in events] == ["F1/ZFT[1]", "F3/ZFT[1]"]
    letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("site-files"))
    assert [x["unit"] for x in letters] == ["night.hl7 message 2 (line 6)"]
    assert "mapping entrypoint:zcharges raised KeyError at charges.py:" in letters[0]["reason"]


def test_schemas_export_with_the_config_includes_the_mappings_types(site_dir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, "entrypoint:zcharges")
    result = ficus(site_dir, "schemas", "export", str(tmp_path / "with"), "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    schema = json.loads((tmp_path / "with" / f"{ZTYPE}.schema.json").read_text())
    assert schema["properties"]["type"] == {"const": ZTYPE, "type": "string", "title": "Type"}
    asyncapi = (tmp_path / "with" / "asyncapi.json").read_text()
    assert "canonical.site.zcharge.recorded" in asyncapi and "shadow.canonical.site.zcharge.recorded" in asyncapi
    plain = ficus(site_dir, "schemas", "export", str(tmp_path / "without"))
    assert plain.returncode == 0, plain.stderr
    assert not (tmp_path / "without" / f"{ZTYPE}.schema.json").exists()
    assert len(list((tmp_path / "with").iterdir())) == len(list((tmp_path / "without").iterdir())) + 1
