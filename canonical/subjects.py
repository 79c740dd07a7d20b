"""Every canonical event type name and NATS subject, in one place.

A type name is ``org.ficus.<domain>.<entity>.<action>.v<N>``; its live subject is
``canonical.<domain>.<entity>.<action>`` and its shadow subject the same with a
``shadow.`` prefix. Call sites use the constants below, never f-strings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ALL_EVENT_TYPES",
    "CANONICAL_PREFIX",
    "CHARGE_CREDITED",
    "CHARGE_POSTED",
    "ENCOUNTER_ADMISSION_CANCELLED",
    "ENCOUNTER_ADMITTED",
    "ENCOUNTER_DISCHARGED",
    "ENCOUNTER_DISCHARGE_CANCELLED",
    "ENCOUNTER_REGISTERED",
    "ENCOUNTER_TRANSFERRED",
    "ENCOUNTER_UPDATED",
    "EVENT_TYPES",
    "LIVE_WILDCARD",
    "SHADOW_PREFIX",
    "SHADOW_WILDCARD",
    "TYPE_PREFIX",
    "EventType",
    "Mode",
    "subject_for",
]

Mode = Literal["live", "shadow"]

TYPE_PREFIX = "org.ficus"
CANONICAL_PREFIX = "canonical"
SHADOW_PREFIX = "shadow.canonical"
#: Subject filters covering every live / shadow canonical event (stream config).
LIVE_WILDCARD = f"{CANONICAL_PREFIX}.>"
SHADOW_WILDCARD = f"{SHADOW_PREFIX}.>"


@dataclass(frozen=True, slots=True)
class EventType:
    """One canonical event type: its CloudEvents ``type`` and its NATS subjects."""

    domain: str
    entity: str
    action: str
    version: int
    #: The CloudEvents ``type``, e.g. ``org.ficus.revenue.charge.posted.v1``.
    name: str = field(init=False)
    #: ``canonical.<domain>.<entity>.<action>``.
    live_subject: str = field(init=False)
    #: ``shadow.canonical.<domain>.<entity>.<action>``.
    shadow_subject: str = field(init=False)

    def __post_init__(self) -> None:
        # Computed once: these strings are read for every event on the hot path.
        tail = f"{self.domain}.{self.entity}.{self.action}"
        object.__setattr__(self, "name", f"{TYPE_PREFIX}.{tail}.v{self.version}")
        object.__setattr__(self, "live_subject", f"{CANONICAL_PREFIX}.{tail}")
        object.__setattr__(self, "shadow_subject", f"{SHADOW_PREFIX}.{tail}")

    def subject(self, mode: Mode) -> str:
        """The subject for a route mode."""
        return self.shadow_subject if mode == "shadow" else self.live_subject


CHARGE_POSTED = EventType("revenue", "charge", "posted", 1)
CHARGE_CREDITED = EventType("revenue", "charge", "credited", 1)

ENCOUNTER_ADMITTED = EventType("patient", "encounter", "admitted", 1)
ENCOUNTER_TRANSFERRED = EventType("patient", "encounter", "transferred", 1)
ENCOUNTER_DISCHARGED = EventType("patient", "encounter", "discharged", 1)
ENCOUNTER_REGISTERED = EventType("patient", "encounter", "registered", 1)
ENCOUNTER_UPDATED = EventType("patient", "encounter", "updated", 1)
ENCOUNTER_ADMISSION_CANCELLED = EventType("patient", "encounter", "admission_cancelled", 1)
ENCOUNTER_DISCHARGE_CANCELLED = EventType("patient", "encounter", "discharge_cancelled", 1)

ALL_EVENT_TYPES: tuple[EventType, ...] = (
    CHARGE_POSTED,
    CHARGE_CREDITED,
    ENCOUNTER_ADMITTED,
    ENCOUNTER_TRANSFERRED,
    ENCOUNTER_DISCHARGED,
    ENCOUNTER_REGISTERED,
    ENCOUNTER_UPDATED,
    ENCOUNTER_ADMISSION_CANCELLED,
    ENCOUNTER_DISCHARGE_CANCELLED,
)

#: Type name -> EventType, for the types this package emits.
EVENT_TYPES: dict[str, EventType] = {t.name: t for t in ALL_EVENT_TYPES}


def subject_for(type_name: str, mode: Mode) -> str:
    """The NATS subject of a type name (known or any well-formed one)."""
    known = EVENT_TYPES.get(type_name)
    return (known if known is not None else _parsed(type_name)).subject(mode)


@functools.lru_cache(maxsize=1024)
def _parsed(type_name: str) -> EventType:
    """A type name not in EVENT_TYPES (the record targets' supply usage...), parsed once, not
    per event (a row of an odbc batch paid ~15 us for it); bounded, since names come from configs."""
    parts = type_name.split(".")
    if len(parts) != 6 or ".".join(parts[:2]) != TYPE_PREFIX or not parts[5][:1] == "v":
        raise ValueError(f"not a Ficus event type: {type_name!r}")
    return EventType(parts[2], parts[3], parts[4], int(parts[5][1:]))
