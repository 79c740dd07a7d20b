"""The public entry point: raw HL7 v2 bytes -> canonical events.

The router calls :func:`check_mapping` once per interface at configuration time
and :func:`translate_hl7` for every message. Nothing here does I/O.

Errors (all :class:`~canonical.errors.CanonicalError`, reasons free of patient data):

* :class:`NotHl7Error` - not an HL7 v2 message (no MSH, unusable delimiters, no MSH-9);
* :class:`UnsupportedMessageError` - a message type/trigger the mapping does not handle;
* :class:`TranslationError` - a handled message that cannot be translated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from canonical import usermap
from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.errors import NotHl7Error, TranslationError, UnsupportedMessageError
from canonical.hl7v2 import adt, dft
from canonical.hl7v2.common import MapFn
from canonical.hl7v2.fieldmap import FieldMap
from canonical.hl7v2.reader import Hl7Message, MshHeader, decode_text, peek_header

__all__ = [
    "MAPPINGS",
    "Hl7Mapping",
    "NotHl7Error",
    "Translation",
    "TranslationContext",
    "TranslationError",
    "UnsupportedMessageError",
    "check_mapping",
    "translate_hl7",
    "with_field_map",
]


@dataclass(frozen=True)
class Hl7Mapping:
    """A named mapping: which (MSH-9.1, MSH-9.2) pairs it handles, and how."""

    name: str
    handlers: Mapping[tuple[str, str], MapFn] = field(repr=False)

    @property
    def supported(self) -> frozenset[tuple[str, str]]:
        """The (message type, trigger) pairs handled."""
        return frozenset(self.handlers)

    def handler_for(self, header: MshHeader) -> MapFn:
        """The mapping function for a header; UnsupportedMessageError when none."""
        found = self.handlers.get((header.message_type, header.trigger))
        if found is not None:
            return found
        known_type = any(t == header.message_type for t, _ in self.handlers)
        # MSH-9 as sent stays out of the reason; a type the mapping knows may be named.
        what = f"trigger event of {header.message_type}" if known_type else "message type"
        raise UnsupportedMessageError(
            f"MSH-9 {what} is not handled by mapping {self.name}",
            message_type=header.message_type,
            trigger=header.trigger,
            hl7_code="201" if known_type else "200",
        )


_ADT: dict[tuple[str, str], MapFn] = {pair: adt.map_adt for pair in adt.SUPPORTED}
_DFT: dict[tuple[str, str], MapFn] = {pair: dft.map_dft_p03 for pair in dft.SUPPORTED}

#: Every mapping an interface may name in its ``mapping`` setting.
MAPPINGS: dict[str, Hl7Mapping] = {
    "hl7v2.adt": Hl7Mapping("hl7v2.adt", _ADT),
    "hl7v2.dft_p03": Hl7Mapping("hl7v2.dft_p03", _DFT),
    "hl7v2": Hl7Mapping("hl7v2", {**_ADT, **_DFT}),
}


def with_field_map(base: str, site: FieldMap) -> Hl7Mapping:
    """The mapping ``base`` under an interface's site map, compiled once (at configuration time):
    its DFT handlers read the map's charge fields, its ADT handlers its encounter fields; a family
    the map leaves out keeps the built-in handler. Reasons still name ``base``."""
    if base.startswith(usermap.PREFIX):
        # Its code reads what it reads: a site map beside it would be silently ignored.
        raise ValueError(f"a site map applies to the built-in mappings, not to {base} (its code reads the fields)")
    handlers: dict[tuple[str, str], MapFn] = {}
    for pair, handler in check_mapping(base).handlers.items():
        # Only the built-in handlers read a site map (a user mapping reads what it reads).
        if handler is dft.map_dft_p03 and site.charge is not None:
            handler = partial(dft.map_dft_p03, site=site.charge)
        elif handler is adt.map_adt and site.encounter is not None:
            handler = partial(adt.map_adt, site=site.encounter)
        handlers[pair] = handler
    return Hl7Mapping(base, handlers)


@dataclass(frozen=True)
class Translation:
    """The result of one message: its header (for the ACK) and its events."""

    header: MshHeader
    events: list[CloudEvent]


def check_mapping(name: str) -> Hl7Mapping:
    """The mapping called ``name``; ValueError naming the known ones when unknown."""
    found = MAPPINGS.get(name)
    if found is not None:
        return found
    if name.startswith(usermap.PREFIX):
        return _user_mapping(name)
    known = ", ".join(sorted(MAPPINGS))
    raise ValueError(f"unknown HL7 v2 mapping {name!r} (known: {known}, or {usermap.PREFIX}NAME: a "
                     f"{usermap.ENTRY_POINT_GROUP} entry point)")


def _user_mapping(name: str) -> Hl7Mapping:
    """``entrypoint:NAME``: the installed user mapping, loaded and type-checked on first use
    (the config's validation), then cached (UserMappingError, a ValueError, when unusable)."""
    loaded = usermap.load(name.removeprefix(usermap.PREFIX))
    found = _USER.get(name)
    if found is None or found[0] is not loaded:  # usermap.forget() and a reload make a new one
        found = _USER[name] = (loaded, Hl7Mapping(name, dict.fromkeys(loaded.messages, loaded.handler)))
    return found[1]


_USER: dict[str, tuple[usermap.LoadedMapping, Hl7Mapping]] = {}


def translate_hl7(
    raw: bytes,
    mapping: str | Hl7Mapping,
    ctx: TranslationContext,
    *,
    encoding: str = "utf-8",
    fallback: str | None = "windows-1252",
    header: MshHeader | None = None,
) -> Translation:
    """Translate one raw HL7 v2 message with the named mapping (or a compiled one, such as
    :func:`with_field_map` gives).

    The type check comes before decoding, so unsupported traffic costs only the
    MSH read. ``encoding`` is the interface's default when MSH-18 is empty or
    unknown, ``fallback`` the codec tried when that fails. A caller that already
    ran :func:`peek_header` on ``raw`` may pass its ``header`` to skip a second read.
    """
    if header is None:
        header = peek_header(raw)
    handler = (check_mapping(mapping) if isinstance(mapping, str) else mapping).handler_for(header)
    if not header.control_id:
        raise TranslationError(
            f"{header.message_type}^{header.trigger} has an empty MSH-10 control id",
            control_id="",
            locator="MSH-10",
            hl7_code="101",
        )
    text, codec = decode_text(raw, header, encoding, fallback)
    msg = Hl7Message(text, hex_codec=codec)
    return Translation(header, handler(header, msg, ctx))
