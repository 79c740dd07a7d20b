"""User code mappings: a site's own Python function, installed as an entry point, maps HL7 v2.

A site package declares, in its metadata::

    [project.entry-points."ficus.mappings"]
    zcharges = "site_maps.charges:zcharges"

and an interface names it: ``mapping = "entrypoint:zcharges"``. The function takes one
:class:`Hl7Input` and returns the message's events (built with :meth:`Hl7Input.event`) or a
:class:`DeadLetter`; it is declared with :func:`mapping`, which names the (MSH-9.1, MSH-9.2)
pairs it handles and the event types it emits, each with its data model (its own, for a new
type: that is the mapping's contribution to the published schemas)::

    @usermap.mapping(messages=[("DFT", "P03")], events={ZCHARGE: ZChargeData})
    def zcharges(msg: usermap.Hl7Input) -> list[CloudEvent] | usermap.DeadLetter: ...

It is loaded and type-checked once, when the config is read (signature, return annotation,
declared types): ``ficus check`` names what is wrong with the key ``mapping``. At run time
anything it raises, a dead letter it returns, or an event it was not declared to emit becomes
a :class:`TranslationError` whose reason names the mapping: the unit is dead-lettered like any
untranslatable message and the listener goes on. Reasons carry exception types and code
positions, never exception messages (they may quote patient data).
"""

from __future__ import annotations

import collections.abc
import inspect
import threading
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError, create_model

from canonical.context import TranslationContext
from canonical.envelope import EVENT_CLASSES, SOURCE_SCHEME, CloudEvent, EventOrigin, event_id
from canonical.errors import TranslationError
from canonical.hl7v2.common import MapFn, MessageReader
from canonical.hl7v2.reader import Hl7Message, MshHeader
from canonical.subjects import EventType

__all__ = [
    "ENTRY_POINT_GROUP",
    "PREFIX",
    "DeadLetter",
    "Hl7Input",
    "LoadedMapping",
    "RecordInput",
    "UserMappingError",
    "event_classes",
    "forget",
    "load",
    "mapping",
    "record_mapping",
]

#: The entry point group user mappings are installed under.
ENTRY_POINT_GROUP = "ficus.mappings"
#: How an interface's ``mapping`` names one: ``entrypoint:<name>``.
PREFIX = "entrypoint:"

_ATTR = "__ficus_mapping__"
_F = TypeVar("_F", bound=Callable[..., Any])


class UserMappingError(ValueError):
    """A user mapping that cannot be used: not installed, not loadable, wrongly declared or typed."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What a mapping returns for a message it refuses: the reason (no patient data: positions,
    codes, what is wrong), optionally where (``"ZFT-2"``) and the money held up."""

    reason: str
    locator: str | None = None
    amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class _Declaration:
    messages: frozenset[tuple[str, str]]
    events: Mapping[EventType, type[BaseModel]]
    kind: Literal["hl7", "record"] = "hl7"


def mapping(*, messages: Iterable[tuple[str, str]], events: Mapping[EventType, type[BaseModel]]) -> Callable[[_F], _F]:
    """Declares a user mapping: the (message type, trigger) pairs it handles and the event
    types it emits with their data models (a built-in type with its built-in model)."""
    declared = _Declaration(frozenset((str(t), str(e)) for t, e in messages), dict(events))

    def mark(fn: _F) -> _F:
        setattr(fn, _ATTR, declared)
        return fn

    return mark


def record_mapping(*, events: Mapping[EventType, type[BaseModel]]) -> Callable[[_F], _F]:
    """Declares a user mapping of records (CSV, fixed-width, database rows): a function of one
    :class:`RecordInput`, named by the interface's ``[interfaces.mapping]`` (or flat mapping)
    as ``target = "entrypoint:NAME"``; ``events`` as for :func:`mapping`."""
    declared = _Declaration(frozenset(), dict(events), "record")

    def mark(fn: _F) -> _F:
        setattr(fn, _ATTR, declared)
        return fn

    return mark


@dataclass(slots=True)
class Hl7Input:
    """One parsed message handed to a user mapping.

    ``message`` reads any segment or field (``message.segment("ZFT")``, ``seg.leaf(2)``,
    ``seg.get(3, 1, 4)``); ``reader`` has the built-in mappings' typed reads (numbers,
    timestamps in the interface's zone, coded values, identifiers) whose failures name a
    position; ``ctx`` is where the unit came from.
    """

    header: MshHeader
    message: Hl7Message
    reader: MessageReader
    ctx: TranslationContext
    _classes: Mapping[str, type[CloudEvent]] = field(repr=False)
    _label: str = field(repr=False)
    _origin: EventOrigin | None = field(default=None, repr=False)

    def event(self, etype: EventType, data: Mapping[str, object], *, index: int, subject: str | None = None,
              time: str | None = None) -> CloudEvent:
        """A canonical event of a declared type: ``index`` its position in the message (with the
        type, it makes the event's id: the same message gives the same ids), ``subject`` default
        ``<MSH-10>/<index>``, ``time`` (ISO 8601) default MSH-7, else the receipt time."""
        cls = self._classes.get(etype.name)
        if cls is None:
            raise TranslationError(f"mapping {self._label} emits {etype.name}, which it does not declare",
                                   control_id=self.header.control_id, facility=self.reader.facility)
        if time is None:
            if self._origin is None:
                self._origin = self.reader.origin(self.reader.event_time())
            origin = self._origin
        else:
            origin = self.reader.origin(time)
        ctx = self.ctx
        try:
            event: CloudEvent = cls.__pydantic_validator__.validate_python({
                "id": event_id(ctx.interface, origin.sender, origin.control_id, etype.name, index),
                "source": origin.source, "type": etype.name,
                "subject": subject or f"{self.header.control_id}/{index}", "time": origin.time, "data": data,
                "ficusinterface": ctx.interface, "ficusfacility": origin.facility, "ficusmode": ctx.mode,
                "ficusraw": ctx.raw_ref, "ficuscorrelation": origin.correlation,
            })
            return event
        except ValidationError as exc:
            # Positions and error kinds only: pydantic's message quotes the input.
            where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])} ({e['type']})" for e in exc.errors()[:5])
            raise TranslationError(f"mapping {self._label} built an invalid {etype.name} event: {where}",
                                   control_id=self.header.control_id, facility=self.reader.facility) from None


@dataclass(slots=True)
class RecordInput:
    """One record handed to a user record mapping: ``values`` are the mapped fields converted to
    their declared types (Decimal, int, date, datetime, str; None when absent), ``key`` the
    record's key (its key fields, else its position), ``locator`` where it is for people
    (``line 42``, ``row id=1234``), ``unit`` its source (a file's SHA-256, a table)."""

    values: Mapping[str, object]
    key: str
    unit: str
    index: int
    locator: str
    facility: str | None
    ctx: TranslationContext
    _classes: Mapping[str, type[CloudEvent]] = field(repr=False)
    _label: str = field(repr=False)

    def event(self, etype: EventType, data: Mapping[str, object], *, index: int = 1, subject: str | None = None,
              time: str | None = None) -> CloudEvent:
        """A canonical event of a declared type: ``index`` its position among the record's events
        (with the type and key, it makes the id), ``subject`` default the key, ``time`` (ISO 8601)
        default the receipt time."""
        cls = self._classes.get(etype.name)
        if cls is None:
            raise TranslationError(f"{self.locator}: mapping {self._label} emits {etype.name}, which it does not "
                                   "declare", control_id=self.key, locator=self.locator, facility=self.facility)
        ctx = self.ctx
        try:
            event: CloudEvent = cls.__pydantic_validator__.validate_python({
                "id": event_id(ctx.interface, self.unit, self.key, etype.name, index),
                "source": SOURCE_SCHEME + ctx.interface, "type": etype.name, "subject": subject or self.key,
                "time": time or ctx.received_iso, "data": data, "ficusinterface": ctx.interface,
                "ficusfacility": self.facility or "", "ficusmode": ctx.mode, "ficusraw": ctx.raw_ref,
                "ficuscorrelation": f"{self.unit}:{self.key}",
            })
            return event
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])} ({e['type']})" for e in exc.errors()[:5])
            raise TranslationError(f"{self.locator}: mapping {self._label} built an invalid {etype.name} event: "
                                   f"{where}", control_id=self.key, locator=self.locator,
                                   facility=self.facility) from None


#: A checked record mapping: one record -> its events (TranslationError naming the mapping).
RecordFn = Callable[[RecordInput], list[CloudEvent]]


@dataclass(frozen=True)
class LoadedMapping:
    """A user mapping loaded and checked: its handlers and the envelope classes it adds."""

    name: str
    label: str
    kind: Literal["hl7", "record"]
    messages: frozenset[tuple[str, str]]
    handler: MapFn = field(repr=False)
    record_handler: RecordFn = field(repr=False)
    #: Type name -> envelope class, for every type it emits (built-in ones included).
    classes: Mapping[str, type[CloudEvent]] = field(repr=False)
    #: Type name -> envelope class of the types it adds to the schemas.
    contributed: Mapping[str, type[CloudEvent]] = field(repr=False)


_LOCK = threading.Lock()
_LOADED: dict[str, LoadedMapping] = {}


def load(name: str, kind: Literal["hl7", "record"] = "hl7") -> LoadedMapping:
    """The user mapping installed as entry point ``name``, loaded and checked once (then cached);
    UserMappingError when it is not usable, or not of ``kind`` (an HL7 or a record mapping)."""
    found = _LOADED.get(name)
    if found is None:
        with _LOCK:
            found = _LOADED.get(name)
            if found is None:
                found = _LOADED[name] = _load(name)
    if found.kind != kind:
        wanted = "@usermap.mapping (HL7 v2 messages)" if kind == "hl7" else "@usermap.record_mapping (records)"
        raise UserMappingError(f"mapping {found.label} is a {found.kind} mapping; this interface needs one declared "
                               f"with {wanted}")
    return found


def forget() -> None:
    """Drops every loaded mapping (tests; a config reload that names other packages)."""
    with _LOCK:
        _LOADED.clear()


def event_classes() -> dict[str, type[CloudEvent]]:
    """Type name -> envelope class of the event types the loaded user mappings add."""
    out: dict[str, type[CloudEvent]] = {}
    for loaded in list(_LOADED.values()):
        out.update(loaded.contributed)
    return out


def _load(name: str) -> LoadedMapping:
    label = PREFIX + name
    points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not points:
        installed = sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
        raise UserMappingError(f"no entry point {name!r} in group {ENTRY_POINT_GROUP} (installed: "
                               f"{', '.join(installed) or 'none'})")
    if len({ep.value for ep in points}) > 1:
        raise UserMappingError(f"entry point {name!r} of group {ENTRY_POINT_GROUP} is installed by more than one "
                               f"package: {', '.join(sorted(ep.value for ep in points))}")
    try:
        fn = points[0].load()
    except Exception as exc:  # a site package's import may fail any way; the config names it
        detail = f": {exc}" if isinstance(exc, ImportError) else ""
        raise UserMappingError(f"entry point {name!r} ({points[0].value}) cannot be loaded: "
                               f"{type(exc).__name__}{detail}") from exc
    declared = getattr(fn, _ATTR, None)
    if not callable(fn) or not isinstance(declared, _Declaration):
        raise UserMappingError(f"entry point {name!r} ({points[0].value}) is not a function declared with "
                               "@canonical.usermap.mapping(messages=..., events=...) or record_mapping(events=...)")
    _check_signature(fn, name, Hl7Input if declared.kind == "hl7" else RecordInput)
    classes, contributed = _classes(declared, name)
    if declared.kind == "hl7" and not declared.messages:
        raise UserMappingError(f"mapping {label} declares no message types (messages=[(type, trigger), ...])")
    return LoadedMapping(name, label, declared.kind, declared.messages, _handler(fn, label, classes),
                         _record_handler(fn, label, classes), classes, contributed)


def _check_signature(fn: Callable[..., Any], name: str, param: type) -> None:
    """One positional parameter typed ``param``; returns a list of events and/or a DeadLetter."""
    label = PREFIX + name
    try:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
    except Exception as exc:  # an annotation naming what its module lacks: the check's own finding
        raise UserMappingError(f"mapping {label}: its annotations cannot be resolved ({type(exc).__name__})") from exc
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if len(required) != 1 or required[0].kind not in positional:
        raise UserMappingError(f"mapping {label} must take exactly one positional parameter ({param.__name__}); "
                               f"it takes {len(required)} without default")
    if hints.get(required[0].name) is not param:
        raise UserMappingError(f"mapping {label}: parameter {required[0].name!r} must be annotated "
                               f"canonical.usermap.{param.__name__}")
    if "return" not in hints or not _return_ok(hints["return"]):
        raise UserMappingError(f"mapping {label} must be annotated to return list[CloudEvent] "
                               "(or list[CloudEvent] | DeadLetter)")


def _return_ok(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    members = typing.get_args(tp) if origin in (typing.Union, types.UnionType) else (tp,)
    lists = 0
    for member in members:
        if member is DeadLetter:
            continue
        if typing.get_origin(member) not in (list, collections.abc.Sequence):
            return False
        (item,) = typing.get_args(member) or (None,)
        if not (isinstance(item, type) and issubclass(item, CloudEvent)):
            return False
        lists += 1
    return lists > 0


def _classes(declared: _Declaration, name: str) -> tuple[dict[str, type[CloudEvent]], dict[str, type[CloudEvent]]]:
    """The envelope class of each declared type: built-in types keep theirs (with their model);
    a new type gets a CloudEvent whose ``data`` is the declared model."""
    from canonical.schemas import default_models

    label = PREFIX + name
    if not declared.events:
        raise UserMappingError(f"mapping {label} declares no event types (events={{EventType: Model}})")
    builtin = default_models()
    classes: dict[str, type[CloudEvent]] = {}
    contributed: dict[str, type[CloudEvent]] = {}
    for etype, model in declared.events.items():
        if not isinstance(etype, EventType) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise UserMappingError(f"mapping {label}: events maps canonical.subjects.EventType to a pydantic "
                                   "model")
        known = builtin.get(etype.name)
        if known is not None:
            known_data = known.model_fields["data"].annotation
            if known_data is not model or not issubclass(known, CloudEvent):
                raise UserMappingError(f"mapping {label}: {etype.name} is a built-in type; declare it with its "
                                       f"built-in model {getattr(known_data, '__name__', known_data)}")
            classes[etype.name] = EVENT_CLASSES.get(etype.name, known)
            continue
        cls = create_model(f"{model.__name__}Event", __base__=CloudEvent, __module__=model.__module__,
                           data=(model, ...))
        cls.__doc__ = f"A CloudEvent of type {etype.name} (user mapping {label}): data is {model.__name__}."
        classes[etype.name] = contributed[etype.name] = cls
    return classes, contributed


def _handler(fn: Callable[[Hl7Input], object], label: str, classes: Mapping[str, type[CloudEvent]]) -> MapFn:
    """The MapFn around a user function: every way it can go wrong is a TranslationError naming it."""

    def run(header: MshHeader, msg: Hl7Message, ctx: TranslationContext) -> list[CloudEvent]:
        reader = MessageReader(header, msg, ctx)
        try:
            result = fn(Hl7Input(header, msg, reader, ctx, classes, label))
        except TranslationError as exc:  # a typed read (reader) or an event that did not validate
            reason = exc.reason if exc.reason.startswith(f"mapping {label}") else f"mapping {label}: {exc.reason}"
            raise TranslationError(reason, control_id=header.control_id, locator=exc.locator,
                                   facility=exc.facility or reader.facility, amount=exc.amount,
                                   hl7_code=exc.hl7_code) from exc
        except Exception as exc:  # the site's code may raise anything: a dead letter, never a crash
            raise TranslationError(f"mapping {label} raised {type(exc).__name__}{_where(exc)}",
                                   control_id=header.control_id, facility=reader.facility) from exc
        if isinstance(result, DeadLetter):
            raise TranslationError(f"mapping {label}: {result.reason}", control_id=header.control_id,
                                   locator=result.locator, facility=reader.facility, amount=result.amount)
        if not isinstance(result, (list, tuple)):
            raise TranslationError(f"mapping {label} returned {type(result).__name__}, not a list of events or "
                                   "a DeadLetter", control_id=header.control_id, facility=reader.facility)
        seen: set[str] = set()
        for event in result:
            if not isinstance(event, CloudEvent) or event.type not in classes:
                what = event.type if isinstance(event, CloudEvent) else type(event).__name__
                raise TranslationError(f"mapping {label} returned an event it does not declare ({what})",
                                       control_id=header.control_id, facility=reader.facility)
            if event.id in seen:  # same type and index: the second would be dropped as a duplicate
                raise TranslationError(f"mapping {label} returned two {event.type} events with the same index",
                                       control_id=header.control_id, facility=reader.facility)
            seen.add(event.id)
        return list(result)

    return run


def _record_handler(fn: Callable[[RecordInput], object], label: str,
                    classes: Mapping[str, type[CloudEvent]]) -> RecordFn:
    """The RecordFn around a user function (see :func:`_handler`); reasons start with the locator."""

    def run(record: RecordInput) -> list[CloudEvent]:
        def fail(reason: str, amount: Decimal | None = None, locator: str | None = None) -> TranslationError:
            return TranslationError(f"{record.locator}: {reason}", control_id=record.key,
                                    locator=locator or record.locator, facility=record.facility, amount=amount)

        try:
            result = fn(record)
        except TranslationError:  # an event that did not validate: already names the mapping
            raise
        except Exception as exc:  # the site's code may raise anything: a dead letter, never a crash
            raise fail(f"mapping {label} raised {type(exc).__name__}{_where(exc)}") from exc
        if isinstance(result, DeadLetter):
            raise fail(f"mapping {label}: {result.reason}", result.amount, result.locator)
        if not isinstance(result, (list, tuple)):
            raise fail(f"mapping {label} returned {type(result).__name__}, not a list of events or a DeadLetter")
        seen: set[str] = set()
        for event in result:
            if not isinstance(event, CloudEvent) or event.type not in classes:
                what = event.type if isinstance(event, CloudEvent) else type(event).__name__
                raise fail(f"mapping {label} returned an event it does not declare ({what})")
            if event.id in seen:
                raise fail(f"mapping {label} returned two {event.type} events with the same index")
            seen.add(event.id)
        return list(result)

    run.__name__ = f"record mapping {label}"
    return run


def _where(exc: BaseException) -> str:
    """`` at file.py:12``: the innermost frame of the traceback (a position, not a value)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if len(frames) < 2:  # only run() itself
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno}"
