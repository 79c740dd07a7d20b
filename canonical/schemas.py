"""Schemas for consumers: JSON Schema per event type, one AsyncAPI document, a compatibility guard.

Everything takes the models as an argument - event type name -> CloudEvent class
(the envelope, so ``data`` is typed) - so X12 and other families are merged in by
passing a bigger mapping; :func:`default_models` is what this package emits today.

Schemas are pydantic's *serialization* schemas: they describe the JSON on the wire
(money as a decimal string), not what Python code may pass in.

The guard: a snapshot of every type's schema is committed (``fixtures/schemas/``).
A change to a model that breaks consumers - a removed property, a changed type,
a newly required property, a narrowed enum - must come with a new version in the
event ``type`` (``...v2``); :func:`check_compatible` finds such changes. Update the
snapshot with ``python -m canonical.schemas --lock fixtures/schemas``: it adds new
types and refreshes compatible ones, and refuses an incompatible change to an
existing type unless ``--force`` is given (only for a type never released).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from canonical.subjects import subject_for

__all__ = [
    "ASYNCAPI_VERSION",
    "CONTENT_TYPE",
    "JSON_SCHEMA_DIALECT",
    "MSG_ID_HEADER",
    "asyncapi_document",
    "check_compatible",
    "default_models",
    "default_subjects",
    "event_schemas",
    "export",
    "lock",
    "main",
    "schema_file_name",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
#: Events are structured-mode CloudEvents: the whole envelope is the JSON body.
CONTENT_TYPE = "application/cloudevents+json"
#: The JetStream de-duplication header; its value is the event ``id``.
MSG_ID_HEADER = "Nats-Msg-Id"
_HEADERS_SCHEMA = "NatsHeaders"
_SERVER = "nats"

Schema = dict[str, Any]


def default_models() -> dict[str, type[BaseModel]]:
    """The event types this package emits: type name -> CloudEvent class."""
    # Imported here: callers passing their own models need neither family.
    from canonical.envelope import EVENT_CLASSES
    from canonical.posting.model import POSTING_EVENT_CLASSES
    from canonical.record_events import RECORD_EVENT_CLASSES
    from canonical.usermap import event_classes
    from canonical.x12.events import REMIT_EVENT_CLASSES

    # The loaded user mappings' own types (config entrypoint:NAME) are published too.
    return {**event_classes(), **EVENT_CLASSES, **REMIT_EVENT_CLASSES, **RECORD_EVENT_CLASSES, **POSTING_EVENT_CLASSES}


def default_subjects(models: Mapping[str, type[BaseModel]]) -> dict[str, str]:
    """NATS subject -> type name, live and shadow subject of every type."""
    return {subject_for(name, mode): name for name in models for mode in ("live", "shadow")}


def schema_file_name(type_name: str) -> str:
    """``<type>.schema.json``."""
    return f"{type_name}.schema.json"


def event_schemas(models: Mapping[str, type[BaseModel]]) -> dict[str, Schema]:
    """A draft 2020-12 JSON Schema of the whole CloudEvent for each type name.

    ``type`` is pinned to the type name, so a schema accepts only its own events.
    """
    schemas: dict[str, Schema] = {}
    for name, model in sorted(models.items()):
        schema = model.model_json_schema(mode="serialization")
        schema["properties"]["type"] = {"const": name, "type": "string", "title": "Type"}
        schemas[name] = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"urn:ficus:schema:{name}", **schema}
        schemas[name]["title"] = name
    return schemas


def asyncapi_document(
    models: Mapping[str, type[BaseModel]], subjects: Mapping[str, str], *, version: str | None = None
) -> Schema:
    """One AsyncAPI 3.0.0 document: a channel and a ``send`` operation per subject.

    ``subjects`` maps a NATS subject to the type name published on it (see
    :func:`default_subjects`); every type named there must be in ``models``.
    Event schemas become ``components/schemas``, their ``$defs`` hoisted beside
    them so every ``$ref`` resolves inside the document.
    """
    components_schemas: Schema = {_HEADERS_SCHEMA: _headers_schema()}
    messages: Schema = {}
    for name, schema in event_schemas(models).items():
        components_schemas[name] = _hoist_defs(schema, components_schemas)
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (models[name].__doc__ or name).strip().splitlines()[0],
            "contentType": CONTENT_TYPE,
            "headers": {"$ref": f"#/components/schemas/{_HEADERS_SCHEMA}"},
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
    channels: Schema = {}
    operations: Schema = {}
    for subject, type_name in sorted(subjects.items()):
        if type_name not in models:
            raise KeyError(f"subject {subject} names type {type_name}, which has no model")
        channels[subject] = {
            "address": subject,
            "title": subject,
            "servers": [{"$ref": f"#/servers/{_SERVER}"}],
            "messages": {type_name: {"$ref": f"#/components/messages/{type_name}"}},
        }
        operations[f"send.{subject}"] = {
            "action": "send",
            "summary": f"Ficus publishes {type_name} on {subject}",
            "channel": {"$ref": f"#/channels/{subject}"},
            "messages": [{"$ref": f"#/channels/{subject}/messages/{type_name}"}],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Ficus canonical events",
            "version": version or _package_version(),
            "description": "CloudEvents 1.0 published by Ficus on NATS JetStream; shadow.* subjects carry "
            "events of interfaces in shadow mode.",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {_SERVER: {"host": "localhost:4222", "protocol": "nats", "description": "NATS JetStream"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components_schemas, "messages": messages},
    }


def export(directory: Path, models: Mapping[str, type[BaseModel]], subjects: Mapping[str, str]) -> list[Path]:
    """Write ``<type>.schema.json`` per event and ``asyncapi.json`` (and ``.yaml`` with PyYAML); the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [_write_json(directory / schema_file_name(n), s) for n, s in event_schemas(models).items()]
    document = asyncapi_document(models, subjects)
    written.append(_write_json(directory / "asyncapi.json", document))
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]  # optional: no dependency is added for it
    except ImportError:
        return written
    path = directory / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return [*written, path]


def _write_json(path: Path, document: Schema) -> Path:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _package_version() -> str:
    try:
        return metadata.version("ficus")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _headers_schema() -> Schema:
    return {
        "type": "object",
        "properties": {
            MSG_ID_HEADER: {
                "type": "string",
                "description": "the event id; JetStream drops a second message with the same id",
            }
        },
        "required": [MSG_ID_HEADER],
    }


def _hoist_defs(schema: Schema, target: Schema) -> Schema:
    """The schema without ``$defs``/``$schema``/``$id``, its defs moved into ``target``.

    Refs ``#/$defs/X`` become ``#/components/schemas/X``; a def whose name is taken by a
    different schema gets a suffix, so two families with a ``Location`` never collide.
    """
    body = {k: v for k, v in schema.items() if k not in ("$defs", "$schema", "$id")}
    defs: Schema = schema.get("$defs", {})
    # Compared as they would be stored (refs rewritten), so the same def from another type is shared.
    as_stored = {name: _rewrite_refs(definition, {d: d for d in defs}) for name, definition in defs.items()}
    renames: dict[str, str] = {}
    for def_name in defs:
        final, n = def_name, 1
        while final in target and target[final] != as_stored[def_name]:
            n += 1
            final = f"{def_name}{n}"
        renames[def_name] = final
    rewritten = _rewrite_refs(body, renames)
    for def_name, definition in defs.items():
        target[renames[def_name]] = _rewrite_refs(definition, renames)
    result: Schema = rewritten
    return result


def _rewrite_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node = {**node, "$ref": "#/components/schemas/" + renames[ref.removeprefix("#/$defs/")]}
        return {k: _rewrite_refs(v, renames) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node


# --- compatibility -----------------------------------------------------------------


def check_compatible(old: Schema, new: Schema) -> list[str]:
    """Changes from ``old`` to ``new`` (schemas of one type name) that break consumers; [] when none.

    Reported: a removed property, a changed set of JSON types, a newly required
    property, a narrowed enum or changed const. Adding an optional property, or
    relaxing a required one, is compatible.
    """
    return list(_compare(_Doc(old), old, _Doc(new), new, "", set()))


class _Doc:
    """A schema document, to resolve its local ``$ref``s."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, node: Schema) -> Schema:
        seen: set[str] = set()
        while isinstance(node.get("$ref"), str) and node["$ref"] not in seen:
            ref = node["$ref"]
            seen.add(ref)
            target: Any = self.root
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node


def _compare(od: _Doc, old: Schema, nd: _Doc, new: Schema, path: str, seen: set[tuple[int, int]]) -> Iterator[str]:
    old, new = od.resolve(old), nd.resolve(new)
    if (id(old), id(new)) in seen:
        return
    seen.add((id(old), id(new)))
    where = path or "(root)"
    old_types, new_types = _types(od, old), _types(nd, new)
    if old_types != new_types:
        yield f"{where}: type changed from {_show(old_types)} to {_show(new_types)}"
    old_values, new_values = _values(od, old), _values(nd, new)
    if old_values is not None:
        lost = old_values - new_values if new_values is not None else set()
        if lost:
            yield f"{where}: enum narrowed, {_show(lost)} no longer allowed"
    old_props, new_props = _properties(od, old), _properties(nd, new)
    for name in sorted(set(old_props) - set(new_props)):
        yield f"{_join(path, name)}: property removed"
    for name in sorted(_required(nd, new) - _required(od, old)):
        yield f"{_join(path, name)}: property newly required"
    for name in sorted(set(old_props) & set(new_props)):
        yield from _compare(od, old_props[name], nd, new_props[name], _join(path, name), seen)
    old_items, new_items = _branches_key(od, old, "items"), _branches_key(nd, new, "items")
    if old_items is not None and new_items is not None:
        yield from _compare(od, old_items, nd, new_items, path + "[]", seen)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(values: set[str]) -> str:
    return "[" + ", ".join(sorted(values)) + "]"


def _branches(doc: _Doc, node: Schema) -> list[Schema]:
    """The node and, recursively, its anyOf/oneOf/allOf branches, refs resolved."""
    node = doc.resolve(node)
    found = [node]
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in node.get(key, []):
            found.extend(_branches(doc, branch))
    return found


def _types(doc: _Doc, node: Schema) -> set[str]:
    kinds: set[str] = set()
    for branch in _branches(doc, node):
        declared = branch.get("type")
        if isinstance(declared, str):
            kinds.add(declared)
        elif isinstance(declared, list):
            kinds.update(str(t) for t in declared)
        elif "properties" in branch:
            kinds.add("object")
    return kinds


def _values(doc: _Doc, node: Schema) -> set[str] | None:
    """The allowed values when every branch is an enum/const (or null); None when open."""
    values: set[str] = set()
    for branch in _branches(doc, node):
        if "enum" in branch:
            values.update(json.dumps(v) for v in branch["enum"])
        elif "const" in branch:
            values.add(json.dumps(branch["const"]))
        elif branch.get("type") == "null":
            values.add("null")
        elif any(k in branch for k in ("type", "properties", "items")):
            return None
    return values or None


def _properties(doc: _Doc, node: Schema) -> dict[str, Schema]:
    props: dict[str, Schema] = {}
    for branch in _branches(doc, node):
        props.update(branch.get("properties", {}))
    return props


def _required(doc: _Doc, node: Schema) -> set[str]:
    return {name for branch in _branches(doc, node) for name in branch.get("required", [])}


def _branches_key(doc: _Doc, node: Schema, key: str) -> Schema | None:
    for branch in _branches(doc, node):
        if isinstance(branch.get(key), dict):
            found: Schema = branch[key]
            return found
    return None


# --- snapshot lock -------------------------------------------------------------------


def lock(directory: Path, models: Mapping[str, type[BaseModel]], *, force: bool = False) -> list[str]:
    """Write the snapshot of every type's schema; the incompatible changes that stopped it.

    Nothing is written when an existing snapshot would change incompatibly, unless ``force``.
    """
    schemas = event_schemas(models)
    problems = []
    for name, schema in schemas.items():
        path = directory / schema_file_name(name)
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            problems += [f"{name}: {p}" for p in check_compatible(old, schema)]
    if problems and not force:
        return problems
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        _write_json(directory / schema_file_name(name), schema)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m canonical.schemas --lock DIR [--force]`` or ``--export DIR``."""
    parser = argparse.ArgumentParser(prog="python -m canonical.schemas", description="Ficus event schemas")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--lock", type=Path, metavar="DIR", help="write the compatibility snapshot")
    group.add_argument("--export", type=Path, metavar="DIR", help="write JSON Schemas and the AsyncAPI document")
    parser.add_argument("--force", action="store_true", help="with --lock: overwrite incompatible snapshots")
    args = parser.parse_args(argv)
    models = default_models()
    if args.export is not None:
        for path in export(args.export, models, default_subjects(models)):
            print(path)
        return 0
    problems = lock(args.lock, models, force=args.force)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("incompatible: give the changed model a new version in its type, or --force", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
