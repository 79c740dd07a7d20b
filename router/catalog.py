"""Every canonical event type Ficus emits, across formats: the one list schema export and
the API read (the lock test reads the same through canonical.schemas.default_models)."""

from __future__ import annotations

from pydantic import BaseModel

from canonical.schemas import default_models


def event_classes() -> dict[str, type[BaseModel]]:
    """Type name -> CloudEvent class, HL7 and X12 families together."""
    return default_models()
