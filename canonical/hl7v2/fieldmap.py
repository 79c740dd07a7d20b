"""Declarative HL7 field maps per interface (a site map), compiled once at start-up.

A site map says, for a canonical field of the charge events (DFT^P03) or the encounter
events (ADT), where the site sends it: an HL7 path, a fallback chain of paths, a converter
and a lookup table. A canonical field named there replaces the built-in read; any other
name is a site field and goes into the event's ``extensions`` object (typed by its
converter, declared in :mod:`canonical.events`). Written in TOML, in a file named by the
interface (``field_map = "maps/north.toml"``) or inline (``[interfaces.field_map]``)::

    [charge]
    account_number = { path = "ZFT-2", fallback = ["PID-18"] }
    department = "PV1-3.4"                       # a path alone
    cost_center = { path = "ZFT-3" }              # not canonical: data.extensions.cost_center
    payer = { path = "IN1-2", convert = "coded", lookup = "payers", lookup_miss = "keep" }

    [lookups.payers]
    PPO01 = "P-100"

Paths: ``SEG[-occurrence]-field[repetition].component.subcomponent`` written
``PID-18``, ``PID-3[2].1``, ``PV1-3.4``, ``ZFT-2``, ``OBX#2-5`` (the second OBX). In a
charge map, ``FT1`` is the FT1 of the charge; another segment is the one in that FT1's
group (after it, before the next FT1) when the message has one there, else the first one
before the FT1s (message level). Everything is checked and compiled here, at
configuration time: the hot path only reads fields and converts them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from canonical.events import CodedValue, ExtensionValue, Location
from canonical.hl7v2.common import MessageReader, shared_model
from canonical.hl7v2.reader import Hl7Message, Segment
from canonical.timestamps import hl7_to_instant, hl7_to_iso

__all__ = ["FamilyMap", "FieldMap", "FieldMapError", "MessageScope", "compile_field_map", "load_field_map"]

Kind = Literal["string", "decimal", "date", "timestamp", "instant", "coded", "location"]
_CONVERTERS: dict[str, Kind] = {k: k for k in ("string", "decimal", "date", "timestamp", "coded", "location")}

# Canonical fields a site map may set, with the converter their type needs.
CHARGE_FIELDS: dict[str, Kind] = {
    "transaction_id": "string", "transaction_batch_id": "string", "transaction_type": "string",
    "service_date": "timestamp", "posting_date": "timestamp", "charge_code": "coded",
    "procedure_code": "coded", "quantity": "decimal", "amount": "decimal", "currency": "string",
    "unit_amount": "decimal", "department": "string", "performing_provider_id": "string",
    "ordering_provider_id": "string", "account_number": "string", "encounter_number": "string",
    "patient_id": "string",
}
ENCOUNTER_FIELDS: dict[str, Kind] = {
    "encounter_number": "string", "account_number": "string", "patient_id": "string",
    "patient_class": "string", "location": "location", "prior_location": "location",
    "attending_provider_id": "string", "hospital_service": "string", "admit_time": "timestamp",
    "discharge_time": "timestamp", "event_time": "instant",
}
# Canonical fields Ficus computes: a site map naming them is refused, with why.
_COMPUTED: dict[str, str] = {
    "control_id": "MSH-10, the message's identity",
    "ft1_index": "the FT1's position",
    "trigger": "MSH-9.2",
    "net_amount": "the signed amount, computed from the amount and the transaction type",
    "erp": "enrichment from the reference tables",
    "facility": "MSH-4 (else PV1-3.4): routes and facility flips depend on it",
    "extensions": "the object the site fields go into",
}
FAMILIES: dict[str, dict[str, Kind]] = {"charge": CHARGE_FIELDS, "encounter": ENCOUNTER_FIELDS}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PATH = re.compile(r"([A-Z][A-Z0-9]{2})(?:#(\d{1,3}))?-(\d{1,3})(?:\[(\d{1,3})\])?(?:\.(\d{1,3})(?:\.(\d{1,3}))?)?")
_RULE_KEYS = frozenset(("path", "fallback", "convert", "lookup", "lookup_miss", "default", "required"))
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


class FieldMapError(ValueError):
    """A site map that cannot be compiled; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class HlPath:
    """One compiled path."""

    text: str
    segment: str
    occurrence: int  # 0: by the charge's group (else the first)
    field: int
    repetition: int
    component: int
    subcomponent: int

    def leaf(self, seg: Segment) -> str | None:
        """The value at this path, stripped; None when empty or ``""``."""
        if self.repetition == 1 and self.component == 1 and self.subcomponent == 1:
            return seg.leaf(self.field)
        value = seg.get(self.field, self.repetition, self.component, self.subcomponent).strip()
        return value if value and value != '""' else None

    def parts(self, seg: Segment, count: int) -> list[str | None]:
        """The first ``count`` components of the field (a coded value, a location)."""
        out: list[str | None] = []
        for c in range(1, count + 1):
            value = seg.get(self.field, self.repetition, c).strip()
            out.append(value if value and value != '""' else None)
        return out


def parse_path(text: str, key: str) -> HlPath:
    """A path as written in a site map; FieldMapError naming ``key`` when it is not one."""
    found = _PATH.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise FieldMapError(f"{key}: {text!r} is not an HL7 path (SEG-field[repetition].component.subcomponent, "
                            "e.g. PID-18, PV1-3.4, PID-3[2].1, ZFT-2, OBX#2-5)")
    seg, occ, fld, rep, comp, sub = found.groups()
    numbers = [int(fld), int(rep or 1), int(comp or 1), int(sub or 1), int(occ or 1)]
    if min(numbers) < 1:
        raise FieldMapError(f"{key}: {text!r}: positions start at 1")
    return HlPath(text, seg, int(occ or 0), *numbers[:4])


@dataclass(frozen=True, slots=True)
class Rule:
    """One field of a site map, checked."""

    name: str
    canonical: bool
    kind: Kind
    paths: tuple[HlPath, ...]
    lookup: Mapping[str, str] | None
    lookup_name: str
    lookup_miss: str
    default: str | None
    required: bool


# Segments of a DFT^P03 FT1 group (v2.5 FINANCIAL: procedures, orders, observations) and the
# site's Z-segments: read from the charge's own group when its FT1 has one there.
_GROUP_SEGMENTS = frozenset(("PR1", "ROL", "ORC", "TQ1", "TQ2", "OBR", "NTE", "OBX"))
# Segments after the FT1 groups that belong to the whole message: they end the last group.
_TRAILER = ("DG1", "DRG", "GT1", "IN1", "IN2", "IN3", "ACC")
_NO_END = 1 << 30


def _by_group(name: str) -> bool:
    return name.startswith("Z") or name in _GROUP_SEGMENTS


class MessageScope:
    """What a site map finds once per message: the FT1 groups, the segments read, the
    message-level values (shared by every charge of the message). The FT1 groups are found
    only when a segment of a group is in the message (most messages have none)."""

    __slots__ = ("_anchored", "_end", "_starts", "cache", "groups", "msg", "shared")

    def __init__(self, msg: Hl7Message, anchored: bool) -> None:
        self.msg = msg
        self._anchored = anchored
        self._starts: list[int] | None = None
        self.cache: dict[tuple[str, int], Segment | None] = {}
        self.shared: tuple[object, ...] | None = None
        self.groups: dict[tuple[str, ...], bool] = {}
        self._end = -1

    @property
    def starts(self) -> list[int]:
        """Where the FT1s are (none when the map reads no segment of a group)."""
        if self._starts is None:
            self._starts = self.msg.positions("FT1") if self._anchored else []
        return self._starts

    def grouped(self, name: str, index: int) -> Segment | None:
        """Segment ``name`` of the ``index``-th FT1's group, else the one before the first FT1."""
        key = (name, index)
        if key in self.cache:
            return self.cache[key]
        positions = self.msg.positions(name)
        starts = self.starts
        chosen: int | None = None
        if positions and starts and index:
            lo = starts[index - 1]
            hi = starts[index] if index < len(starts) else self._last_end()
            chosen = next((p for p in positions if lo < p < hi), None)
            if chosen is None and positions[0] < starts[0]:
                chosen = positions[0]  # the message-level one, before the FT1s
        elif positions:
            chosen = positions[0]
        seg = None if chosen is None else self.msg.segment_at(chosen, name)
        self.cache[key] = seg
        return seg

    def in_groups(self, names: tuple[str, ...]) -> bool:
        """True when a segment of ``names`` sits among the FT1 groups of this message."""
        found = self.groups.get(names)
        if found is None:
            starts = self.starts
            found = self.groups[names] = bool(starts) and any(
                (at := self.msg.positions(name)) and at[-1] > starts[0] for name in names)
        return found

    def _last_end(self) -> int:
        if self._end < 0:
            last = self.starts[-1]
            after = [p for name in _TRAILER for p in self.msg.positions(name) if p > last]
            self._end = min(after) if after else _NO_END
        return self._end


def _at(index: int) -> str:
    return f"FT1[{index}] " if index else ""


def _parts_reader(path: HlPath, kind: Kind) -> Callable[[Segment], list[str | None] | None]:
    """The components of a coded value (None without a code) or a location (None when empty)."""
    count = 3 if kind == "coded" else 4

    def parts(seg: Segment) -> list[str | None] | None:
        found = path.parts(seg, count)
        if count == 3:
            return found if found[0] is not None else None
        return found if any(found) else None

    return parts


_Finish = Callable[[MessageReader, Any, str, int], object]


def _finisher(rule: Rule) -> _Finish | None:
    """(reader, what the path gave, the path, index) -> the value: lookup, then converter;
    None for a plain text field (the value as read)."""
    kind, table, name, miss = rule.kind, rule.lookup, rule.name, rule.lookup_miss

    def looked_up(r: MessageReader, raw: str, where: str, index: int) -> str | None:
        assert table is not None
        found = table.get(raw)
        if found is not None:
            return found
        if miss == "keep":
            return raw
        if miss == "null":
            return None
        # The value stays out of the reason: the table's name says where to add it.
        raise r.fail(f"{_at(index)}site map field {name}: the value at {where} is not in lookup "
                     f"{rule.lookup_name}", where, "103")

    if kind == "location":
        return lambda r, parts, where, index: shared_model(Location, tuple(parts))
    if kind == "coded":
        def coded(r: MessageReader, parts: list[str | None], where: str, index: int) -> object:
            code = parts[0] if table is None else looked_up(r, parts[0] or "", where, index)
            return None if code is None else shared_model(CodedValue, (code, parts[1], parts[2]))
        return coded
    convert = _converter(rule)
    if table is None:
        return convert

    def both(r: MessageReader, raw: str, where: str, index: int) -> object:
        found = looked_up(r, raw, where, index)
        return None if found is None or convert is None else convert(r, found, where, index)

    return both if convert is not None else looked_up


def _converter(rule: Rule) -> _Finish | None:
    kind, name = rule.kind, rule.name
    if kind == "string":
        return None
    what = "a decimal" if kind == "decimal" else "a valid HL7 date" if kind == "date" else "a valid HL7 timestamp"

    def convert(r: MessageReader, value: str, where: str, index: int) -> object:
        try:
            if kind == "decimal":
                if _NUMBER.fullmatch(value) is None:
                    raise ValueError("not a number")
                return Decimal(value)
            if kind == "timestamp":
                return hl7_to_iso(value, r.tz)
            if kind == "instant":
                return hl7_to_instant(value, r.tz)
            return hl7_to_iso(value, r.tz)[:10]  # date: the day, also of a full timestamp
        except ValueError:
            raise r.fail(f"{_at(index)}site map field {name}: {where} is not {what}", where, "102") from None

    return convert


def _missing(rule: Rule, finish: _Finish | None) -> Callable[[MessageReader, int], object] | None:
    """What a field is when no path has a value: its default, an error when required; None
    (the function) when it is simply null."""
    default, name = rule.default, rule.name
    if default is not None:
        if rule.kind == "coded":
            value = shared_model(CodedValue, (default, None, None))
            return lambda r, index: value
        if rule.kind == "location":
            place = shared_model(Location, (default, None, None, None))
            return lambda r, index: place
        return lambda r, index: default if finish is None else finish(r, default, "default", index)
    if rule.required:
        where = ", ".join(p.text for p in rule.paths)

        def required(r: MessageReader, index: int) -> object:
            raise r.fail(f"{_at(index)}site map field {name}: no value at {where}", rule.paths[0].text, "101")

        return required
    return None


class _Source:
    """Python source for a family's two functions, and the objects it refers to."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.env: dict[str, Any] = {}
        self.hoisted: dict[tuple[str, int], str] = {}
        self.anchor_fields: list[int] = []  # the charge's FT1 fields read as plain leaves, in one call
        self.batches: dict[str, list[int]] = {}  # a message segment's local -> its plain fields read, in one call
        self.at_message = True  # writing the message function (else the item's)

    def ref(self, obj: object) -> str:
        name = f"_o{len(self.env)}"
        self.env[name] = obj
        return name

    def per_item(self, path: HlPath) -> bool:
        return self.family == "charge" and not path.occurrence and (path.segment == "FT1" or _by_group(path.segment))

    def segment(self, path: HlPath) -> str:
        """An expression for the segment a path reads (a local for the message's segments)."""
        if self.family == "charge" and path.segment == "FT1" and not path.occurrence:
            return "anchor"
        if self.per_item(path) and not self.at_message:
            return f"scope.grouped({path.segment!r}, index)"
        # In the message function a group's segment is the first one (read there only when
        # none sits among the FT1 groups, so the first one is before the FT1s).
        return self.first(path.segment, path.occurrence or 1)

    def first(self, name: str, occurrence: int = 1) -> str:
        """The local holding the message's ``occurrence``-th segment ``name`` (None when absent)."""
        key = (name, occurrence)
        if key not in self.hoisted:
            self.hoisted[key] = f"_s{len(self.hoisted)}"
        return self.hoisted[key]

    def segment_lines(self) -> list[str]:
        """The message function's reads of its segments: the first ones in one call."""
        firsts = [(name, var) for (name, occ), var in self.hoisted.items() if occ == 1]
        lines = []
        if firsts:
            names = tuple(name for name, _ in firsts)
            lines.append(f"{''.join(v + ', ' for _, v in firsts)}= msg.firsts({names!r})")
        lines += [f"{var} = msg.segment({name!r}, {occ})" for (name, occ), var in self.hoisted.items() if occ != 1]
        return lines

    def anchor_leaf(self, field: int) -> str:
        """An expression for the plain FT1-``field`` of the charge, read in the one ``leaves`` call."""
        if field not in self.anchor_fields:
            self.anchor_fields.append(field)
        return f"_a[{self.anchor_fields.index(field)}]"

    def batched(self, path: HlPath, kind: Kind) -> str | None:
        """For a plain field of a message-level segment: an expression for its value, read with
        the segment's other plain fields in one ``Segment.leaves`` call (None on absence)."""
        seg = self.segment(path)
        if (not seg.startswith("_s") or kind in ("coded", "location")
                or (path.field < 3 and path.segment in ("MSH", "BHS", "FHS"))  # the delimiters: not leaves
                or (path.repetition, path.component, path.subcomponent) != (1, 1, 1)):
            return None
        fields = self.batches.setdefault(seg, [])
        if path.field not in fields:
            fields.append(path.field)
        return f"_b{seg[2:]}[{fields.index(path.field)}]"

    def batch_lines(self) -> list[str]:
        """The message function's reads of the batched fields (after the segments are found)."""
        return [f"_b{seg[2:]} = {seg}.leaves({tuple(fields)!r}) if {seg} is not None else {(None,) * len(fields)!r}"
                for seg, fields in self.batches.items()]

    def extract(self, path: HlPath, kind: Kind, seg: str = "s") -> str:
        """An expression for the value a path gives from the segment in variable ``seg``."""
        if kind in ("coded", "location"):
            return f"{self.ref(_parts_reader(path, kind))}({seg})"
        if path.repetition == 1 and path.component == 1 and path.subcomponent == 1:
            if seg == "anchor":  # read with the charge's other plain FT1 fields: one Segment.leaves call
                return self.anchor_leaf(path.field)
            return f"{seg}.leaf({path.field})"
        if path.repetition == 1 and path.subcomponent == 1:
            return f"{seg}.component_leaf({path.field}, {path.component})"
        return f"{self.ref(path)}.leaf({seg})"

    def rule(self, rule: Rule, var: str) -> list[str]:
        """Statements that leave the rule's value in ``var``."""
        if _direct(rule):
            return self._direct(rule, var)
        finish = _finisher(rule)
        missing = _missing(rule, finish)
        first_is_anchor = self.segment(rule.paths[0]) == "anchor"
        lines = [] if first_is_anchor else [f"{var} = None"]  # the FT1's read sets it
        for i, path in enumerate(rule.paths):
            pad = "" if i == 0 else "    "
            if i:
                lines.append(f"if {var} is None:")
            seg = self.segment(path)
            batched = self.batched(path, rule.kind)
            if seg == "anchor" or batched is not None:  # the charge's own FT1 is always there
                lines.append(f"{pad}{var} = {batched or self.extract(path, rule.kind, 'anchor')}")
                if finish is not None:
                    lines.append(f"{pad}w = {path.text!r}")
                continue
            lines += [f"{pad}s = {seg}", f"{pad}if s is not None:",
                      f"{pad}    {var} = {self.extract(path, rule.kind)}"]
            if finish is not None:
                lines.append(f"{pad}    w = {path.text!r}")
        if finish is not None:
            fin = self.ref(finish)
            # The usual conversions inline; on a failure the finisher runs again and raises the reason.
            inline = {
                "decimal": [f"    {var} = _dec({var}) if _num({var}) is not None else {fin}(r, {var}, w, index)"],
                "timestamp": ["    try:", f"        {var} = _iso({var}, r.tz)", "    except ValueError:",
                              f"        {fin}(r, {var}, w, index)"],
                "date": ["    try:", f"        {var} = _iso({var}, r.tz)[:10]", "    except ValueError:",
                         f"        {fin}(r, {var}, w, index)"],
            }.get(rule.kind) if rule.lookup is None else None
            if rule.lookup is not None and rule.kind == "string" and rule.lookup_miss != "error":
                # A miss keeps the value or is null: one dict read, no call.
                keep = f", {var}" if rule.lookup_miss == "keep" else ""
                inline = [f"    {var} = {self.ref(rule.lookup)}.get({var}{keep})"]
            lines += [f"if {var} is not None:", *(inline or [f"    {var} = {fin}(r, {var}, w, index)"])]
            if missing is not None:
                lines += ["else:", f"    {var} = {self.ref(missing)}(r, index)"]
        elif missing is not None:
            lines += [f"if {var} is None:", f"    {var} = {self.ref(missing)}(r, index)"]
        return lines


    def _direct(self, rule: Rule, var: str) -> list[str]:
        """A coded value or a location read from whole fields as the built-in mapping reads one
        (``MessageReader.coded``, which keeps each distinct field's value: the same codes recur)."""
        read = "coded" if rule.kind == "coded" else "location"
        missing = _missing(rule, None)
        lines: list[str] = [f"{var} = None"]
        for i, path in enumerate(rule.paths):
            pad = "    " if i else ""
            if i:
                lines.append(f"if {var} is None:")
            lines.append(f"{pad}{var} = r.{read}({self.segment(path)}, {path.field})")
        if missing is not None:
            lines += [f"if {var} is None:", f"    {var} = {self.ref(missing)}(r, index)"]
        return lines


def _direct(rule: Rule) -> bool:
    """A rule read by ``MessageReader.coded``/``location``: first repetitions, no lookup."""
    return rule.kind in ("coded", "location") and rule.lookup is None and all(
        p.repetition == 1 for p in rule.paths)


def _plain_ft1(rule: Rule) -> tuple[str, int] | None:
    """(kind, n) when the rule is the charge's own FT1-n, converted and nothing else: the
    built-in read of the same field with the same converter is the same value."""
    if len(rule.paths) != 1 or rule.lookup is not None or rule.default is not None or rule.required:
        return None
    p = rule.paths[0]
    if p.segment != "FT1" or p.occurrence or (p.repetition, p.component, p.subcomponent) != (1, 1, 1):
        return None
    return (rule.kind, p.field) if rule.kind in ("timestamp", "decimal") else None


_MessageFn = Callable[[MessageReader, "MessageScope"], tuple[object, ...]]
_ItemFn = Callable[
    [MessageReader, "MessageScope", "Segment | None", int, tuple[object, ...]],
    tuple[dict[str, object], "dict[str, ExtensionValue] | None"],
]


_ChargeFn = Callable[[MessageReader, "MessageScope", "Segment", int, tuple[object, ...], Any], Any]


def _compile(family: str, rules: list[Rule]) -> tuple[_MessageFn, _ItemFn, _ChargeFn | None, str]:
    """Functions generated for one family, so that a field costs what the built-in read of a
    field costs: ``message`` reads the fields that are the same for every item of a message
    (once per message), ``item`` those of one item (its FT1, the segments of its group). For
    the charge family, ``charge`` is ``item`` and the rest of the built-in charge mapping in
    one function (:func:`canonical.hl7v2.dft.site_charge_code`): the built-in reads the map
    replaces are not done, the others share the map's one ``leaves`` call on the FT1."""
    src = _Source(family)
    names = {rule.name: f"v{i}" for i, rule in enumerate(rules)}
    message_body: list[str] = []
    item_body: list[str] = []
    in_groups: dict[tuple[str, ...], str] = {}  # segments -> the local saying whether they sit in FT1 groups
    for rule in rules:
        var = names[rule.name]
        anchored = family == "charge" and any(p.segment == "FT1" and not p.occurrence for p in rule.paths)
        groups = tuple(dict.fromkeys(p.segment for p in rule.paths if src.per_item(p) and p.segment != "FT1"))
        if anchored:
            src.at_message = False
            item_body += src.rule(rule, var)
            continue
        src.at_message = True
        if groups:  # read per charge when in this message's FT1 groups, else once here
            if groups not in in_groups:
                in_groups[groups] = f"_g{len(in_groups)}"
                # Most messages have none of these segments: then no FT1 group is looked for.
                present = " or ".join(f"{src.first(name)} is not None" for name in groups)
                message_body.append(f"{in_groups[groups]} = ({present}) and scope.in_groups({groups!r})")
            message_body += [f"if {in_groups[groups]}:", f"    {var} = None", "else:",
                             *(f"    {line}" for line in src.rule(rule, var))]
        else:
            message_body += src.rule(rule, var)
        if groups:
            # A Z-segment (or an order, an observation) inside the FT1 groups of this message is
            # read per charge; before the FT1s, or absent, it is one value for the message.
            src.at_message = False
            item_body += [f"if {in_groups[groups]}:", *(f"    {line}" for line in src.rule(rule, var))]
    src.at_message = True
    canon = ", ".join(f"{r.name!r}: {names[r.name]}" for r in rules if r.canonical)
    ext = ", ".join(f"{r.name!r}: {names[r.name]}" for r in rules if not r.canonical)
    item_fields = tuple(src.anchor_fields)
    tail: list[str] = []
    tail_env: dict[str, object] = {}
    if family == "charge":
        from canonical.hl7v2.dft import site_charge_code  # dft reads site maps: imported when one is compiled

        def builtin(path: str) -> str:
            # A built-in read of a message segment's field (the identifiers): read in its leaves call.
            found = src.batched(parse_path(path, path), "string")
            assert found is not None, path
            return found

        same = {key: names[r.name] for r in rules if (key := _plain_ft1(r)) is not None}
        tail, tail_env = site_charge_code({r.name: names[r.name] for r in rules if r.canonical},
                                          "{" + ext + "}" if ext else None, src.anchor_leaf, same, builtin)
    item_end = [f"return {{{canon}}}, {('{' + ext + '}') if ext else 'None'}"]
    # What the item functions use of the message function's work, passed on in one tuple.
    used = set(re.findall(r"\b_?[vsgb]\d+\b", "\n".join(item_body + item_end + tail)))
    message_vars = [names[r.name] for r in rules if not (family == "charge" and any(
        p.segment == "FT1" and not p.occurrence for p in r.paths))]
    made = message_vars + list(src.hoisted.values()) + list(in_groups.values())
    shared = [v for v in made + [f"_b{seg[2:]}" for seg in src.batches] if v in used]
    lines = ["def message(r, scope):", "    msg = scope.msg", "    index = 0"]
    lines += [f"    {line}" for line in src.segment_lines()]
    lines += [f"    {line}" for line in src.batch_lines()]
    lines += [f"    {line}" for line in message_body]
    lines += [f"    return ({''.join(v + ', ' for v in shared)})", ""]
    for fn, params, fields, end in (
            ("item", "r, scope, anchor, index, m", item_fields, item_end),
            ("charge", "r, scope, anchor, index, m, origin", tuple(src.anchor_fields), tail)):
        if fn == "charge" and family != "charge":
            continue
        lines.append(f"def {fn}({params}):")
        lines += [f"    {', '.join(shared)}, = m"] if shared else []
        lines += [f"    _a = anchor.leaves({fields!r})"] if fields else []
        lines += [f"    {line}" for line in item_body]
        lines += [f"    {line}" for line in end]
        lines.append("")
    source = "\n".join(lines) + "\n"
    namespace = {**src.env, **tail_env, "_dec": Decimal, "_num": _NUMBER.fullmatch, "_iso": hl7_to_iso}
    # Generated from checked names and paths only (no text of the map reaches the code unquoted).
    exec(compile(source, f"<site map {family}>", "exec"), namespace)
    found: Any = namespace
    return found["message"], found["item"], found.get("charge"), source


class FamilyMap:
    """The compiled rules of one event family (charge or encounter)."""

    __slots__ = ("_charge", "_grouped", "_item", "_message", "canonical", "extensions", "family", "rules", "source")

    def __init__(self, family: str, rules: list[Rule]) -> None:
        self.family = family
        self.rules = tuple(rules)
        self.canonical = frozenset(r.name for r in rules if r.canonical)
        self.extensions = tuple(r.name for r in rules if not r.canonical)
        self._message, self._item, self._charge, self.source = _compile(family, rules)
        # The FT1 groups are found only for a map that reads a segment of a group.
        self._grouped = family == "charge" and any(
            not p.occurrence and _by_group(p.segment) for r in rules for p in r.paths)

    def scope(self, msg: Hl7Message) -> MessageScope:
        """What one message's items share (call once per message)."""
        return MessageScope(msg, self._grouped)

    def charges(self, r: MessageReader, ft1s: list[Segment], origin: Any) -> list[Any]:
        """The charge events of a DFT under this (charge) map: one per FT1."""
        charge = self._charge
        assert charge is not None, "a charge map"
        scope = MessageScope(r.msg, self._grouped)
        shared = scope.shared = self._message(r, scope)
        return [charge(r, scope, seg, i, shared, origin) for i, seg in enumerate(ft1s, 1)]

    def values(
        self, r: MessageReader, scope: MessageScope, anchor: Segment | None = None, index: int = 0,
    ) -> tuple[dict[str, object], dict[str, ExtensionValue] | None]:
        """(canonical field -> value, extensions or None) for one item of a message."""
        shared = scope.shared
        if shared is None:
            shared = scope.shared = self._message(r, scope)
        return self._item(r, scope, anchor, index, shared)


@dataclass(frozen=True)
class FieldMap:
    """A whole site map: its charge and encounter rules (None when it has none)."""

    source: str
    charge: FamilyMap | None
    encounter: FamilyMap | None

    def describe(self) -> str:
        """``charge: 2 canonical, 1 extension; ...`` for ``ficus check``."""
        parts = []
        for fam in (self.charge, self.encounter):
            if fam is not None:
                parts.append(f"{fam.family}: {len(fam.canonical)} canonical, {len(fam.extensions)} site "
                             f"field{'s' if len(fam.extensions) != 1 else ''}")
        return "; ".join(parts) or "empty"


def _rule(family: str, name: str, spec: Any, lookups: Mapping[str, Mapping[str, str]]) -> Rule:
    key = f"{family}.{name}"
    if name in _COMPUTED:
        raise FieldMapError(f"{key}: not mapped by a site map ({_COMPUTED[name]})")
    if not _NAME.fullmatch(name):
        raise FieldMapError(f"{key}: field names are lowercase letters, digits and _ (64 at most), "
                            "starting with a letter")
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise FieldMapError(f"{key}: give a path (\"PID-18\") or a table with path = ...")
    unknown = sorted(set(spec) - _RULE_KEYS)
    if unknown:
        raise FieldMapError(f"{key}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_RULE_KEYS))})")
    if "path" not in spec:
        raise FieldMapError(f"{key}.path: missing (the HL7 path the field is read from)")
    fallback = spec.get("fallback", [])
    if isinstance(fallback, str):
        fallback = [fallback]
    if not isinstance(fallback, list):
        raise FieldMapError(f"{key}.fallback: a list of HL7 paths")
    paths = [parse_path(spec["path"], f"{key}.path")]
    paths += [parse_path(p, f"{key}.fallback[{i}]") for i, p in enumerate(fallback)]
    canonical = name in FAMILIES[family]
    convert = spec.get("convert")
    kind: Kind
    if canonical:
        kind = FAMILIES[family][name]
        expected = "timestamp" if kind == "instant" else kind
        if convert is not None and convert != expected:
            raise FieldMapError(f"{key}.convert: {name} is a canonical field read as {expected!r}, not {convert!r}")
    else:
        if convert is None:
            convert = "string"
        if convert not in _CONVERTERS:
            raise FieldMapError(f"{key}.convert: {convert!r} is not one of {', '.join(_CONVERTERS)}")
        kind = _CONVERTERS[convert]
    if kind in ("coded", "location"):
        for i, p in enumerate(paths):
            if p.component != 1 or p.subcomponent != 1:
                where = "path" if i == 0 else f"fallback[{i - 1}]"
                raise FieldMapError(f"{key}.{where}: a {kind} value is read from a whole field ({p.segment}-{p.field}"
                                    f"), not from a component")
    lookup_name = spec.get("lookup")
    lookup = None
    if lookup_name is not None:
        if kind == "location":
            raise FieldMapError(f"{key}.lookup: a location has no lookup")
        if lookup_name not in lookups:
            known = ", ".join(sorted(lookups)) or "none"
            raise FieldMapError(f"{key}.lookup: no [lookups.{lookup_name}] table (tables: {known})")
        lookup = lookups[lookup_name]
    miss = spec.get("lookup_miss", "error")
    if miss not in ("error", "keep", "null"):
        raise FieldMapError(f"{key}.lookup_miss: one of error, keep, null")
    default = spec.get("default")
    if default is not None and not isinstance(default, str):
        raise FieldMapError(f"{key}.default: a string (as it would be sent)")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise FieldMapError(f"{key}.required: true or false")
    return Rule(name, canonical, kind, tuple(paths), lookup, str(lookup_name or ""), miss, default, required)


def compile_field_map(data: Mapping[str, Any], source: str = "inline") -> FieldMap:
    """A site map from its TOML tables; FieldMapError whose message starts with the key at fault."""
    unknown = sorted(set(data) - {"charge", "encounter", "lookups"})
    if unknown:
        raise FieldMapError(f"{unknown[0]}: unknown table (a site map has [charge], [encounter] and [lookups.NAME])")
    lookups: dict[str, dict[str, str]] = {}
    raw_lookups = data.get("lookups", {})
    if not isinstance(raw_lookups, dict):
        raise FieldMapError("lookups: tables [lookups.NAME] of code = \"value\"")
    for name, table in raw_lookups.items():
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise FieldMapError(f"lookups.{name}: a table of code = \"value\" (strings)")
        lookups[name] = dict(table)
    families: dict[str, FamilyMap | None] = {"charge": None, "encounter": None}
    for family in families:
        table = data.get(family)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise FieldMapError(f"{family}: a table of field = path or field = {{ path = ... }}")
        families[family] = FamilyMap(family, [_rule(family, n, s, lookups) for n, s in table.items()])
    return FieldMap(source, families["charge"], families["encounter"])


def load_field_map(path: str | Path) -> FieldMap:
    """A site map from a TOML file; FieldMapError (naming the file) when it cannot be used."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FieldMapError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FieldMapError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FieldMapError(f"{p}: not valid TOML: {exc}") from None
    try:
        return compile_field_map(data, str(p))
    except FieldMapError as exc:
        raise FieldMapError(f"{p}: {exc}") from None
