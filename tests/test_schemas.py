"""Schema export: JSON Schemas that accept real events, a well-formed AsyncAPI document, the compatibility lock."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, create_model

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.errors import CanonicalError
from canonical.schemas import (
    CONTENT_TYPE,
    MSG_ID_HEADER,
    asyncapi_document,
    check_compatible,
    default_models,
    default_subjects,
    event_schemas,
    export,
    lock,
    main,
    schema_file_name,
)
from canonical.translate import translate_hl7

ROOT = Path(__file__).resolve().parent.parent
HL7 = ROOT / "fixtures" / "hl7"
LOCKED = ROOT / "fixtures" / "schemas"
MODELS = default_models()
SUBJECTS = default_subjects(MODELS)


def fixture_events(mode: Literal["live", "shadow"] = "live") -> list[CloudEvent]:
    ctx = TranslationContext("his-charges", mode, "raw.his-charges/1", datetime(2024, 3, 5, 15, 0, tzinfo=UTC))
    events: list[CloudEvent] = []
    for path in sorted(HL7.glob("*.hl7")):
        try:
            events.extend(translate_hl7(path.read_bytes(), "hl7v2", ctx).events)
        except CanonicalError:
            continue  # fixtures of error cases
    return events


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schemas")
    export(directory, MODELS, SUBJECTS)
    return directory


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def test_export_writes_one_schema_per_type_and_the_asyncapi_document(exported: Path) -> None:
    expected = {schema_file_name(name) for name in MODELS} | {"asyncapi.json"}
    if importlib.util.find_spec("yaml") is not None:
        expected.add("asyncapi.yaml")
    assert {p.name for p in exported.iterdir()} == expected
    for name in MODELS:
        schema = load(exported / schema_file_name(name))
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_fixture_events_validate_against_exported_schemas(exported: Path) -> None:
    events = fixture_events() + fixture_events("shadow")
    assert {e.type for e in events} >= {"org.ficus.revenue.charge.posted.v1", "org.ficus.patient.encounter.admitted.v1"}
    for event in events:
        validator = jsonschema.Draft202012Validator(load(exported / schema_file_name(event.type)))
        validator.validate(json.loads(event.to_json()))


def test_schemas_reject_wrong_type_float_money_and_unknown_keys(exported: Path) -> None:
    charge = next(e for e in fixture_events() if e.type == "org.ficus.revenue.charge.posted.v1")
    body = json.loads(charge.to_json())
    own = jsonschema.Draft202012Validator(load(exported / schema_file_name(charge.type)))
    other = jsonschema.Draft202012Validator(load(exported / schema_file_name("org.ficus.revenue.charge.credited.v1")))
    assert not other.is_valid(body)  # type is pinned per schema
    assert not own.is_valid({**body, "data": {**body["data"], "amount": 12.5}})  # money is a string
    assert not own.is_valid({**body, "extra": 1})


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_asyncapi_document_structure(exported: Path) -> None:
    # No maintained PyPI package ships the official AsyncAPI 3.0.0 JSON schema, so
    # this checks what consumers and tools rely on, structurally.
    doc = load(exported / "asyncapi.json")
    assert doc == asyncapi_document(MODELS, SUBJECTS)
    assert doc["asyncapi"] == "3.0.0"
    assert {"info", "servers", "channels", "operations", "components"} <= set(doc)
    assert doc["info"]["title"] == "Ficus canonical events" and doc["info"]["version"]
    assert doc["servers"]["nats"]["protocol"] == "nats" and doc["servers"]["nats"]["host"]
    for ref in refs(doc):
        resolve(doc, ref)
    for subject in ("canonical.revenue.charge.posted", "shadow.canonical.revenue.charge.posted"):
        assert doc["channels"][subject]["address"] == subject
    assert set(doc["channels"]) == set(SUBJECTS)
    for op in doc["operations"].values():
        assert op["action"] == "send"
        channel_ref = op["channel"]["$ref"]
        # AsyncAPI 3: an operation's messages must be messages of its channel.
        assert all(m["$ref"].startswith(channel_ref + "/messages/") for m in op["messages"])
    for name, message in doc["components"]["messages"].items():
        assert message["contentType"] in (CONTENT_TYPE, "application/json")
        assert resolve(doc, message["payload"]["$ref"])["properties"]["type"]["const"] == name
        assert MSG_ID_HEADER in resolve(doc, message["headers"]["$ref"])["required"]


def test_asyncapi_payload_schemas_accept_fixture_events() -> None:
    doc = asyncapi_document(MODELS, SUBJECTS)
    for event in fixture_events():
        # Refs inside the payload point at #/components/schemas/..., so validate from a root that has them.
        schema = {"$ref": f"#/components/schemas/{event.type}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(json.loads(event.to_json()))


def test_locked_schemas_are_compatible_with_the_models() -> None:
    current = event_schemas(MODELS)
    missing = [name for name in current if not (LOCKED / schema_file_name(name)).exists()]
    assert missing == [], "new event types: run python -m canonical.schemas --lock fixtures/schemas"
    problems = {
        name: check_compatible(load(LOCKED / schema_file_name(name)), schema) for name, schema in current.items()
    }
    assert {name: p for name, p in problems.items() if p} == {}, (
        "an event model changed incompatibly: give it a new version in its type (...v2)"
    )


# --- check_compatible on small models ------------------------------------------------

_CFG = ConfigDict(extra="forbid")


class Item(BaseModel):
    model_config = _CFG
    code: str


class DataV1(BaseModel):
    model_config = _CFG
    kind: Literal["A", "B"]
    count: int
    note: str | None = None
    items: list[Item] = []


class EventV1(CloudEvent):
    data: DataV1  # type: ignore[assignment]


def envelope(data_model: type[BaseModel]) -> type[BaseModel]:
    built: type[BaseModel] = create_model("Event", __base__=CloudEvent, data=(data_model, ...))
    return built


def schema_of(data_model: type[BaseModel]) -> dict[str, Any]:
    return event_schemas({"org.ficus.test.thing.done.v1": envelope(data_model)})["org.ficus.test.thing.done.v1"]


def variant(**fields: Any) -> type[BaseModel]:
    """DataV1 with fields replaced by (annotation, default) - ``...`` for required - or removed (None)."""
    spec: dict[str, Any] = {
        name: (info.annotation, ... if info.is_required() else info.default)
        for name, info in DataV1.model_fields.items()
    }
    for name, change in fields.items():
        if change is None:
            spec.pop(name)
        else:
            spec[name] = change
    built: type[BaseModel] = create_model("Data", __config__=_CFG, **spec)
    return built


OLD = schema_of(DataV1)


def test_adding_an_optional_field_is_compatible() -> None:
    assert check_compatible(OLD, schema_of(variant(extra=(str | None, None)))) == []
    assert check_compatible(OLD, schema_of(variant(count=(int | None, None)))) == [
        "data.count: type changed from [integer] to [integer, null]"
    ]
    assert check_compatible(OLD, OLD) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"note": None}, "data.note: property removed"),
        ({"count": (str, ...)}, "data.count: type changed from [integer] to [string]"),
        ({"extra": (str, ...)}, "data.extra: property newly required"),
        ({"kind": (Literal["A"], ...)}, 'data.kind: enum narrowed, ["B"] no longer allowed'),
        ({"items": (list[int], [])}, "data.items[]: type changed from [object] to [integer]"),
    ],
)
def test_incompatible_changes_are_reported(change: dict[str, Any], problem: str) -> None:
    assert problem in check_compatible(OLD, schema_of(variant(**change)))


def test_lock_refuses_an_incompatible_change_unless_forced(tmp_path: Path) -> None:
    name = "org.ficus.test.thing.done.v1"
    assert lock(tmp_path, {name: EventV1}) == []
    before = (tmp_path / schema_file_name(name)).read_text(encoding="utf-8")

    broken = envelope(variant(count=None))

    assert lock(tmp_path, {name: broken}) == [f"{name}: data.count: property removed"]
    assert (tmp_path / schema_file_name(name)).read_text(encoding="utf-8") == before
    # A new version is a new type name: locked beside the old one without complaint.
    assert lock(tmp_path, {name: EventV1, name.replace(".v1", ".v2"): broken}) == []
    assert lock(tmp_path, {name: broken}, force=True) == []


def test_lock_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lock", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {schema_file_name(n) for n in MODELS}
    assert main(["--export", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "asyncapi.json").exists()
    capsys.readouterr()


def test_asyncapi_document_validates_against_the_official_specification() -> None:
    """The AsyncAPI 3.0.0 JSON Schema from the npm package @asyncapi/specs (fetched by `make`)."""
    import json
    import os
    from pathlib import Path

    import jsonschema

    from canonical.schemas import asyncapi_document, default_models, default_subjects

    default = Path(__file__).resolve().parent.parent / ".venv/asyncapi-specs/package/schemas/3.0.0-without-$id.json"
    spec_path = Path(os.environ.get("FICUS_ASYNCAPI_SCHEMA", default))
    if not spec_path.exists():
        pytest.skip(f"AsyncAPI 3.0.0 schema not found at {spec_path} (make fetches it with npm)")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    models = default_models()
    document = asyncapi_document(models, default_subjects(models))
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in jsonschema.Draft7Validator(spec).iter_errors(document)]
    assert errors == []
