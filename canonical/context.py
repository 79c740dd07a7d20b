"""What a translation needs to know about where a unit came from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from canonical.subjects import Mode
from canonical.timestamps import zone

__all__ = ["TranslationContext"]


@dataclass(frozen=True)
class TranslationContext:
    """The origin of one inbound unit.

    ``interface`` is the interface slug, ``mode`` the route mode events are
    published under, ``raw_ref`` where the raw unit is archived (goes to the
    ``ficusraw`` attribute), ``received_at`` when it arrived (the event time when
    the message has none) and ``timezone`` the zone of timestamps sent without an
    offset. An unknown zone name fails here, at configuration time.
    """

    interface: str
    mode: Mode
    raw_ref: str
    received_at: datetime
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.mode not in ("live", "shadow"):
            raise ValueError(f"mode must be 'live' or 'shadow', not {self.mode!r}")
        zone(self.timezone)

    @property
    def received_iso(self) -> str:
        """``received_at`` in ISO 8601 with an offset (naive values: in ``timezone``)."""
        at = self.received_at
        if at.tzinfo is None:
            at = at.replace(tzinfo=zone(self.timezone))
        return at.isoformat()
