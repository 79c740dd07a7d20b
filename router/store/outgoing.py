"""One message to store, the unit every publish of the store takes (a leaf: objects.py and
core.py both build them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to store: subject, payload, its dedupe id and extra headers."""

    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] = field(default_factory=dict)
