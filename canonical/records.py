"""Config-declared mapping from a record (a flat-file line, a database row) to canonical events.

A :class:`RecordMapping` (part of an interface's TOML config) names a *target*
(``charges``, ``labor_time``, ``supply_usage``, ``purchase_orders``) and lists
:class:`FieldSpec` entries: which canonical field comes from which column,
with which type. Readers hand :func:`map_record` the raw values keyed by
canonical field name - strings from flat files (:mod:`canonical.flat`),
already-typed values from a database driver (see :func:`row_values`).

Event ids are a hash of interface, unit (file hash, table name), the record key
(else the record position) and the event type, so re-reading a file or
re-polling a row gives the same ids and JetStream keeps one copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from canonical import usermap
from canonical.context import TranslationContext
from canonical.envelope import EVENT_CLASSES, CloudEvent, event_id, source_for
from canonical.errors import CanonicalError, TranslationError
from canonical.record_events import RECORD_EVENT_CLASSES
from canonical.record_targets import TARGETS, FieldType, TargetName
from canonical.timestamps import zone

__all__ = ["FieldSpec", "RecordError", "RecordMapping", "convert", "map_record", "row_values"]

_CONFIG = ConfigDict(frozen=True, extra="forbid")
_CLASSES: dict[str, type[CloudEvent]] = {**EVENT_CLASSES, **RECORD_EVENT_CLASSES}
# Plain decimal notation only: thousands separators, exponents, currency signs
# and NaN are errors, so "1,234.50" can never become 123450 or 1.2345.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_INTEGER = re.compile(r"[+-]?\d+")
# Names that smell of free text: refused with a reason rather than "unknown field".
_FREE_TEXT = re.compile(r"description|name|comment|note|text|address", re.IGNORECASE)


class RecordError(CanonicalError, ValueError):
    """One field of a record cannot be converted; ``reason`` never contains the value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class FieldSpec(BaseModel):
    """Where one canonical field comes from and how its value is read.

    ``column`` is a CSV header name or a database column; ``index`` a 0-based CSV
    column when the file has no header; ``start`` (1-based) and ``length`` a
    fixed-width slice. ``format`` is a ``strptime`` format for dates and times not
    in ISO 8601. An absent or blank value takes ``default`` (a string, read like a
    value) and is an error when ``required``.
    """

    model_config = _CONFIG

    field: str = Field(min_length=1, description="canonical field name")
    column: str | None = Field(None, min_length=1)
    index: int | None = Field(None, ge=0)
    start: int | None = Field(None, ge=1)
    length: int | None = Field(None, ge=1)
    type: FieldType = "string"
    format: str | None = Field(None, min_length=1)
    required: bool = True
    default: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.column is not None and self.index is not None:
            raise ValueError(f"{self.field}: give column or index, not both")
        if (self.start is None) != (self.length is None):
            raise ValueError(f"{self.field}: fixed-width needs both start and length")
        if self.format is not None and self.type not in ("date", "datetime"):
            raise ValueError(f"{self.field}: format applies to date and datetime only")
        return self


class RecordMapping(BaseModel):
    """How records of one interface become events of one target.

    ``key`` lists the canonical fields that identify a record (event ids, error
    context); empty, or all blank in a record, means the record's position is
    used. ``facility_field`` is the field whose value is the event's facility.
    ``timezone`` is the zone of date-times sent without an offset. A field's
    ``type`` may be omitted: the target's type for that field is used.
    """

    model_config = _CONFIG

    # A built-in target, or "entrypoint:NAME": a site's record mapping (canonical/usermap.py).
    target: TargetName | str
    key: list[str] = Field(default_factory=list)
    fields: list[FieldSpec] = Field(min_length=1)
    facility_field: str | None = None
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _default_types(cls, data: Any) -> Any:
        # Saves a `type = "decimal"` on every amount; an explicit type is still checked.
        if not isinstance(data, dict) or data.get("target") not in TARGETS:
            return data
        catalog = TARGETS[data["target"]].fields
        fields = data.get("fields")
        if isinstance(fields, list):
            data = {**data, "fields": [_with_type(f, catalog) for f in fields]}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Self:
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _with_type(spec: Any, catalog: Mapping[str, tuple[FieldType, ...]]) -> Any:
    if isinstance(spec, dict) and "type" not in spec and spec.get("field") in catalog:
        return {**spec, "type": catalog[spec["field"]][0]}
    return spec


def _problems(mapping: RecordMapping) -> list[str]:
    names = [f.field for f in mapping.fields]
    mapped = set(names)
    problems = [f"field {n!r} is mapped twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if mapping.target not in TARGETS:
        return problems + _user_problems(mapping, mapped)
    target = TARGETS[mapping.target]
    for spec in mapping.fields:
        allowed = target.fields.get(spec.field)
        if allowed is None and _FREE_TEXT.search(spec.field):
            problems.append(f"field {spec.field!r}: free text is never carried by canonical events; map codes only")
        elif allowed is None:
            problems.append(f"field {spec.field!r} is not a {mapping.target} field (known: {', '.join(target.fields)})")
        elif spec.type not in allowed:
            problems.append(f"field {spec.field!r}: type {spec.type!r} not allowed (use {' or '.join(allowed)})")
    missing = sorted(target.required - mapped)
    if missing:
        problems.append(f"{mapping.target} needs these fields mapped: {', '.join(missing)}")
    problems += [f"{mapping.target} needs one of: {', '.join(sorted(g))}" for g in target.one_of if not g & mapped]
    problems += [f"key field {k!r} is not mapped" for k in mapping.key if k not in mapped]
    if mapping.facility_field is not None and mapping.facility_field not in mapped:
        problems.append(f"facility_field {mapping.facility_field!r} is not mapped")
    try:
        zone(mapping.timezone)
    except (KeyError, ValueError):
        problems.append(f"unknown timezone {mapping.timezone!r}")
    return problems


def _user_problems(mapping: RecordMapping, mapped: set[str]) -> list[str]:
    """A user record mapping's fields are its own (typed as declared; free text still refused),
    and its entry point must load and be a record mapping."""
    if not mapping.target.startswith(usermap.PREFIX):
        return [f"target {mapping.target!r} is not one of {', '.join(TARGETS)} nor {usermap.PREFIX}NAME"]
    problems = [f"field {spec.field!r}: free text is never carried by canonical events; map codes only"
                for spec in mapping.fields if _FREE_TEXT.search(spec.field)]
    problems += [f"key field {k!r} is not mapped" for k in mapping.key if k not in mapped]
    if mapping.facility_field is not None and mapping.facility_field not in mapped:
        problems.append(f"facility_field {mapping.facility_field!r} is not mapped")
    try:
        usermap.load(mapping.target.removeprefix(usermap.PREFIX), "record")
    except usermap.UserMappingError as exc:
        problems.append(str(exc))
    return problems


# --- value conversion ------------------------------------------------------------------


def convert(value: object, spec: FieldSpec) -> object:
    """``value`` as the Python type of ``spec.type``; None when absent and optional.

    Strings are stripped; blank counts as absent. Database values are checked, not
    coerced blindly: a float becomes ``Decimal(str(f))`` (what it prints as, not
    its binary expansion), a datetime is a date only at midnight. Raises
    :class:`RecordError` naming the field, never the value.
    """
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        if spec.default is not None and spec.default.strip():
            value = spec.default.strip()
        elif spec.required:
            raise RecordError(spec.field, "missing")
        else:
            return None
    if isinstance(value, bool):  # a subclass of int, never what a mapping means
        raise RecordError(spec.field, f"a boolean is not a {spec.type}")
    return _CONVERTERS[spec.type](value, spec)


def _to_string(value: object, spec: FieldSpec) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")  # NUMERIC(10,0) ids: "1234", never "1.234E+3"
    if isinstance(value, int | float | date):
        return value.isoformat() if isinstance(value, date) else str(value)
    raise RecordError(spec.field, f"unsupported value type {type(value).__name__}")


def _to_decimal(value: object, spec: FieldSpec) -> Decimal:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise RecordError(spec.field, "not a plain decimal number")
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        try:
            number = Decimal(str(value))
        except InvalidOperation as exc:
            raise RecordError(spec.field, "not a decimal number") from exc
    else:
        raise RecordError(spec.field, f"a {type(value).__name__} is not a decimal")
    if not number.is_finite():
        raise RecordError(spec.field, "not a finite number")
    return number


def _to_integer(value: object, spec: FieldSpec) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, Decimal | float) and not isinstance(value, str):
        number = _to_decimal(value, spec)
        if number == number.to_integral_value():
            return int(number)
    raise RecordError(spec.field, "not an integer")


def _to_date(value: object, spec: FieldSpec) -> date:
    if isinstance(value, datetime):
        if value.time() != datetime.min.time():
            raise RecordError(spec.field, "a date-time with a time of day, not a date")
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return _parse_date(value, spec.format)
        except ValueError as exc:
            raise RecordError(spec.field, _expected("date", spec)) from exc
    raise RecordError(spec.field, f"a {type(value).__name__} is not a date")


def _to_datetime(value: object, spec: FieldSpec) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return _parse_datetime(value, spec.format)
        except ValueError as exc:
            raise RecordError(spec.field, _expected("date-time", spec)) from exc
    raise RecordError(spec.field, f"a {type(value).__name__} is not a date-time")


# Cached: strptime is the slowest step of a record, and an export repeats a few dates
# (service, posting) on every line. Values are immutable, so sharing them is safe.
@lru_cache(maxsize=4096)
def _parse_date(value: str, fmt: str | None) -> date:
    return date.fromisoformat(value) if fmt is None else datetime.strptime(value, fmt).date()


@lru_cache(maxsize=4096)
def _parse_datetime(value: str, fmt: str | None) -> datetime:
    return datetime.fromisoformat(value) if fmt is None else datetime.strptime(value, fmt)


def _expected(what: str, spec: FieldSpec) -> str:
    return f"not a {what} in format {spec.format}" if spec.format else f"not an ISO 8601 {what}"


_CONVERTERS: dict[str, Any] = {
    "string": _to_string,
    "decimal": _to_decimal,
    "integer": _to_integer,
    "date": _to_date,
    "datetime": _to_datetime,
}


# --- records to events -----------------------------------------------------------------


def row_values(row: Mapping[str, object], fields: Sequence[FieldSpec]) -> dict[str, object]:
    """A database row (column -> value) keyed by canonical field, for :func:`map_record`.

    Columns are matched exactly, then case-insensitively (SQL names are); a field
    without ``column`` reads the column of its own name. Absent columns give None.
    """
    folded: dict[str, object] | None = None
    found: dict[str, object] = {}
    for spec in fields:
        column = spec.column or spec.field
        if column in row:
            found[spec.field] = row[column]
            continue
        if folded is None:  # drivers mostly return the names as written: fold only on a miss
            folded = {name.casefold(): value for name, value in row.items()}
        found[spec.field] = folded.get(column.casefold())
    return found


Reader = Callable[[object], object]
"""A raw value -> the converted value as the builder gets it (dates and times as ISO text)."""


def _reader(spec: FieldSpec, tz: str) -> Reader:
    """``_iso(convert(value, spec), tz)``, with the checks for ``spec.type`` chosen once.

    A stripped, non-blank ``str`` (every flat-file value) takes a path made for the
    declared type, with the same checks and messages as :func:`convert`; anything
    else (database values, blanks, ``str`` subclasses) goes through :func:`convert`.
    """

    def general(value: object) -> object:
        return _iso(convert(value, spec), tz)

    # Absent values read the same every time: the default's conversion, None, or an error
    # (left to `general` so that each record gets its own RecordError).
    try:
        absent: tuple[object] | None = (general(None),)
    except RecordError:
        absent = None
    text = _TEXT_READERS[spec.type](spec, tz)
    native = _native_reader(spec, tz, general)

    def read(value: object) -> object:
        if value.__class__ is str:
            value = value.strip()
            if value:
                return text(value)
        elif value is not None:
            return native(value)
        return general(value) if absent is None else absent[0]

    if spec.type == "string":  # the most common field: no call per value on the usual path

        def read_string(value: object) -> object:
            if value.__class__ is str:
                value = value.strip()
                if value:
                    return value
            elif value is not None:
                return general(value)
            return general(value) if absent is None else absent[0]

        return read_string
    return read


def _native_reader(spec: FieldSpec, tz: str, general: Reader) -> Reader:
    """For values a database driver hands over already typed: the usual type of each
    declared type is taken as it is (what :func:`convert` and :func:`_iso` would give);
    any other value goes through ``general``."""
    if spec.type == "decimal":

        def decimal(value: object) -> object:
            if value.__class__ is Decimal and value.is_finite():
                return value
            return general(value)

        return decimal
    if spec.type == "integer":

        def integer(value: object) -> object:
            return value if value.__class__ is int else general(value)  # bool is not int here

        return integer
    if spec.type == "datetime":
        tzinfo = zone(tz)

        def timestamp(value: object) -> object:
            if value.__class__ is datetime:
                return (value if value.tzinfo else value.replace(tzinfo=tzinfo)).isoformat()
            return general(value)

        return timestamp
    return general


def _text_decimal(spec: FieldSpec, tz: str) -> Callable[[str], object]:
    field, match = spec.field, _DECIMAL.fullmatch

    def text(value: str) -> object:
        if match(value):
            return Decimal(value)  # finite: the pattern admits no NaN or Infinity
        raise RecordError(field, "not a plain decimal number")

    return text


def _text_integer(spec: FieldSpec, tz: str) -> Callable[[str], object]:
    field, match = spec.field, _INTEGER.fullmatch

    def text(value: str) -> object:
        if match(value):
            return int(value)
        raise RecordError(field, "not an integer")

    return text


def _text_date(spec: FieldSpec, tz: str) -> Callable[[str], object]:
    field, fmt = spec.field, spec.format

    def text(value: str) -> object:
        try:
            return _date_text(value, fmt)
        except ValueError as exc:
            raise RecordError(field, _expected("date", spec)) from exc

    return text


def _text_datetime(spec: FieldSpec, tz: str) -> Callable[[str], object]:
    field, fmt = spec.field, spec.format

    def text(value: str) -> object:
        try:
            return _datetime_text(value, fmt, tz)
        except ValueError as exc:
            raise RecordError(field, _expected("date-time", spec)) from exc

    return text


def _text_string(spec: FieldSpec, tz: str) -> Callable[[str], object]:
    return str


_TEXT_READERS: dict[str, Callable[[FieldSpec, str], Callable[[str], object]]] = {
    "string": _text_string,
    "decimal": _text_decimal,
    "integer": _text_integer,
    "date": _text_date,
    "datetime": _text_datetime,
}


# The ISO text itself is cached, not only the parse: a file repeats a few dates on every line.
@lru_cache(maxsize=4096)
def _date_text(value: str, fmt: str | None) -> str:
    return _parse_date(value, fmt).isoformat()


@lru_cache(maxsize=4096)
def _datetime_text(value: str, fmt: str | None, tz: str) -> str:
    parsed = _parse_datetime(value, fmt)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=zone(tz))).isoformat()


class _Plan:
    """A mapping compiled for :func:`map_record`: what each record repeats, worked out once."""

    __slots__ = ("amount_field", "build", "context", "facility_field", "key", "mapping", "readers", "user")

    def __init__(self, mapping: RecordMapping) -> None:
        self.mapping = mapping  # held, so its id() is not reused while this plan is cached
        self.readers = tuple((spec.field, _reader(spec, mapping.timezone)) for spec in mapping.fields)
        self.key = tuple(mapping.key)
        self.facility_field = mapping.facility_field
        target = TARGETS.get(mapping.target)
        # A user record mapping (checked with the config): its function builds the events.
        self.user = None if target else usermap.load(mapping.target.removeprefix(usermap.PREFIX), "record")
        self.amount_field = target.amount_field if target else ""
        self.build = target.build if target else None
        # (context, source, time) of the last context seen: a file or a batch shares one.
        self.context: tuple[TranslationContext, str, str] | None = None

    def envelope_of(self, ctx: TranslationContext) -> tuple[str, str]:
        """(source, time) of ``ctx``'s events."""
        cached = self.context
        if cached is None or cached[0] is not ctx:
            cached = (ctx, source_for(ctx.interface), ctx.received_iso)
            self.context = cached  # one assignment: safe when threads share the plan
        return cached[1], cached[2]


# By id(), since a mapping holds lists and is not hashable; bounded, as configs can be reloaded.
_PLANS: dict[int, _Plan] = {}
_MAX_PLANS = 256


def _plan(mapping: RecordMapping) -> _Plan:
    plan = _PLANS.get(id(mapping))
    if plan is None or plan.mapping is not mapping:
        plan = _Plan(mapping)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[id(mapping)] = plan
    return plan


def map_record(
    values: Mapping[str, object],
    mapping: RecordMapping,
    ctx: TranslationContext,
    *,
    unit: str,
    index: int,
    locator: str,
) -> list[CloudEvent]:
    """The canonical events of one record (one event today; a list so targets may grow).

    ``values`` are keyed by canonical field name. ``unit`` names the source (a
    file's SHA-256, a table), ``index`` the record's position in it and
    ``locator`` where it is for people (``"line 42"``, ``"row id=1234"``). Raises
    :class:`TranslationError` whose reason names the locator and every bad field.
    """
    plan = _plan(mapping)
    converted: dict[str, Any] = {}
    problems: list[RecordError] = []
    get = values.get
    for name, read in plan.readers:
        try:
            converted[name] = read(get(name))
        except RecordError as exc:
            problems.append(exc)
    position = f"{unit}:{index}"
    key = _record_key(converted, plan.key) or position
    found = converted.get(plan.facility_field) if plan.facility_field else None
    facility = None if found is None else str(found)
    if problems:
        found = converted.get(plan.amount_field)
        amount = found if isinstance(found, Decimal) else None
        reason = f"{locator}: " + "; ".join(str(p) for p in problems)
        raise TranslationError(
            reason, control_id=key, locator=f"{locator} {problems[0].field}", facility=facility, amount=amount
        )
    if plan.build is None:
        assert plan.user is not None
        user = plan.user
        return user.record_handler(usermap.RecordInput(converted, key, unit, index, locator, facility, ctx,
                                                       user.classes, user.label))
    etype, data = plan.build(converted, key, position)
    source, time = plan.envelope_of(ctx)
    envelope = {
        "id": event_id(ctx.interface, unit, key, etype.name, 1),
        "source": source,
        "type": etype.name,
        "subject": key,
        "time": time,
        "data": data,
        "ficusinterface": ctx.interface,
        "ficusfacility": facility or "",
        "ficusmode": ctx.mode,
        "ficusraw": ctx.raw_ref,
        "ficuscorrelation": f"{unit}:{key}",
    }
    try:
        event: CloudEvent = _CLASSES[etype.name].__pydantic_validator__.validate_python(envelope)
    except ValidationError as exc:
        found = converted.get(plan.amount_field)
        amount = found if isinstance(found, Decimal) else None
        # Messages only, never the input (pydantic's str() would echo it).
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        raise TranslationError(
            f"{locator}: {where}", control_id=key, locator=locator, facility=facility, amount=amount
        ) from exc
    return [event]


def _iso(value: object, tz: str) -> object:
    """Dates and times as ISO 8601 (naive date-times are in the mapping's zone)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=zone(tz))).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _record_key(values: Mapping[str, Any], key: Sequence[str]) -> str:
    if len(key) == 1:  # the usual key: one id column
        value = values.get(key[0])
        return "" if value is None else str(value)
    parts = ["" if values.get(k) is None else str(values[k]) for k in key]
    return "|".join(parts) if any(parts) else ""
