"""HL7 timestamps (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``) to ISO 8601.

A value without an offset is local time of the interface, given as a zone name
(``"Europe/Berlin"``, default ``"UTC"``). Date-only values stay dates
(``2019-11-22``, ``2019-11``, ``2019``): inventing a midnight and a zone for a
service date would change its meaning. Conversions are cached because the same
few timestamps repeat within and across messages.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["hl7_to_datetime", "hl7_to_instant", "hl7_to_iso", "zone"]

_TS = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?"
)


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    """The tzinfo for a zone name; ZoneInfoNotFoundError (a KeyError) when unknown."""
    return UTC if name == "UTC" else ZoneInfo(name)


@lru_cache(maxsize=4096)
def hl7_to_iso(value: str, tz: str = "UTC") -> str:
    """ISO 8601 for an HL7 timestamp, keeping its precision; ValueError when invalid."""
    parts = _parse(value)
    if parts[3] is None:  # no hour: a (partial) date; an offset is checked, then dropped
        year, month, day = parts[0], parts[1], parts[2]
        _check_date(year, month or "01", day or "01")
        if parts[7]:
            _offset(parts[7], parts[8] or "", parts[9] or "")
        return "-".join(p for p in (year, month, day) if p)
    return _build(parts, tz).isoformat()


@lru_cache(maxsize=4096)
def hl7_to_datetime(value: str, tz: str = "UTC") -> datetime:
    """An aware datetime for an HL7 timestamp (missing parts: start of the period)."""
    return _build(_parse(value), tz)


@lru_cache(maxsize=4096)
def hl7_to_instant(value: str, tz: str = "UTC") -> str:
    """:func:`hl7_to_datetime` as ISO 8601 text (always a full time with offset)."""
    return hl7_to_datetime(value, tz).isoformat()


_Parts = tuple[str | None, ...]


def _parse(value: str) -> _Parts:
    match = _TS.fullmatch(value.strip())
    if match is None:
        raise ValueError("not an HL7 timestamp")
    return match.groups()


def _build(parts: _Parts, tz: str) -> datetime:
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = parts
    micro = int((fraction or "0").ljust(6, "0")[:6])
    info = _offset(sign, off_h or "", off_m or "") if sign else zone(tz)
    return datetime(
        int(year or 0),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=info,
    )


def _check_date(year: str | None, month: str, day: str) -> None:
    datetime(int(year or 0), int(month), int(day))  # raises ValueError when impossible


@lru_cache(maxsize=64)
def _offset(sign: str, hours: str, minutes: str) -> tzinfo:
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise ValueError("timestamp offset out of range")
    delta = timedelta(hours=h, minutes=m)
    if not delta:
        return UTC  # -0000 and +0000 both mean UTC here
    return timezone(-delta if sign == "-" else delta)
