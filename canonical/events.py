"""Canonical event payloads (the CloudEvents ``data``), pydantic v2.

Rules every model follows:

* no names, birth dates, addresses or free text about a patient - identifiers
  (patient id, account and encounter numbers) and codes only;
* money is ``Decimal``, serialised as a JSON string, never a float;
* dates and times are ISO 8601 strings: a timestamp carries its offset, a date
  sent without a time stays a date (``2019-11-22``);
* absent values are ``null``, never ``""``;
* each model has a ``VERSION`` that is the ``v<N>`` of its event types; a change
  that breaks consumers is a new model and a new type name.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from canonical import subjects

__all__ = [
    "EVENT_MODELS",
    "ChargeData",
    "ChargeErp",
    "CodedValue",
    "EncounterData",
    "EventData",
    "ExtensionValue",
    "Extensions",
    "Location",
    "Money",
]

#: A decimal amount; JSON carries it as a string ("12.50").
Money = Annotated[Decimal, Field(allow_inf_nan=False)]

_CONFIG = ConfigDict(frozen=True, extra="forbid")


class CodedValue(BaseModel):
    """A coded element (HL7 CE/CWE): code, its display text, its coding system."""

    model_config = _CONFIG

    code: str
    text: str | None = None
    system: str | None = None


class Location(BaseModel):
    """A patient location (HL7 PL): point of care, room, bed, facility."""

    model_config = _CONFIG

    point_of_care: str | None = None
    room: str | None = None
    bed: str | None = None
    facility: str | None = None


#: One value of a site's own field (canonical/hl7v2/fieldmap.py): text, a decimal (as a JSON
#: string), a coded value or a location, as the site map's converter made it.
ExtensionValue = str | Money | CodedValue | Location | None

def _no_default(schema: dict[str, Any]) -> None:
    """``extensions`` is left out of the JSON when there are none: no ``default`` to document."""
    schema.pop("default", None)


_TEXT = {"type": ["string", "null"]}
_EXTENSIONS_SCHEMA: dict[str, Any] = {
    "title": "Extensions",
    "description": "the interface's site map fields that are not canonical ones (declared in its field map): "
                   "text, a decimal as a string, a coded value or a location, by the field's converter",
    "type": "object",
    "propertyNames": {"pattern": "^[a-z][a-z0-9_]{0,63}$"},
    "additionalProperties": {"anyOf": [
        {"type": "string"},
        {"type": "object", "title": "CodedValue", "additionalProperties": False, "required": ["code"],
         "properties": {"code": {"type": "string"}, "text": _TEXT, "system": _TEXT}},
        {"type": "object", "title": "Location", "additionalProperties": False,
         "properties": {"point_of_care": _TEXT, "room": _TEXT, "bed": _TEXT, "facility": _TEXT}},
        {"type": "null"},
    ]},
}

#: A site map's fields that are not canonical ones, by name; absent (not null) from the JSON of an
#: interface without a site map, so its events stay byte for byte what they were. The values are
#: made by the map's converters only (typed there); held as Any here because pydantic's union
#: serialiser costs ~6 us an event, more than the whole site map (bench/translate_hl7.py --site-map).
Extensions = Annotated[
    dict[str, Any] | None,
    WithJsonSchema(_EXTENSIONS_SCHEMA, mode="serialization"),
    WithJsonSchema(_EXTENSIONS_SCHEMA, mode="validation"),
    Field(None, exclude_if=lambda value: value is None, json_schema_extra=_no_default),
]


class ChargeErp(BaseModel):
    """Where the ERP books a charge, from the reference tables (absent when none are configured)."""

    model_config = _CONFIG

    revenue_code: str = Field(description="from the charge_codes table")
    gl_account: str = Field(description="from the charge_codes table")
    cost_center: str = Field(description="the department's cost center, else the charge code's")
    service_line: str = Field(description="from the charge_codes table")


class ChargeData(BaseModel):
    """One financial transaction line (one FT1) posted to or credited from an account.

    ``action`` is in the event type: ``posted`` for a charge, ``credited`` when
    FT1-6 is a credit type (CD, CR) or the quantity or amount is negative.
    ``quantity``, ``amount`` and ``unit_amount`` are exactly as sent (sign kept);
    ``net_amount`` is the effect on the account: ``+|amount|`` when posted,
    ``-|amount|`` when credited.
    """

    model_config = _CONFIG
    VERSION: ClassVar[int] = 1

    control_id: str = Field(description="MSH-10 of the message that carried the charge")
    ft1_index: int = Field(ge=1, description="position of the FT1 among the message's FT1s")
    transaction_id: str | None = Field(None, description="FT1-2")
    transaction_batch_id: str | None = Field(None, description="FT1-3")
    transaction_type: str = Field(description="FT1-6 (HL7 table 0017: CG, CD, ...)")
    service_date: str | None = Field(None, description="FT1-4, ISO 8601")
    posting_date: str | None = Field(None, description="FT1-5, ISO 8601")
    charge_code: CodedValue | None = Field(None, description="FT1-7 transaction code")
    procedure_code: CodedValue | None = Field(None, description="FT1-25 procedure code")
    quantity: Money | None = Field(None, description="FT1-10")
    amount: Money | None = Field(None, description="FT1-11 extended amount")
    currency: str | None = Field(None, description="FT1-11 denomination, when sent")
    net_amount: Money | None = Field(None, description="signed effect on the account")
    unit_amount: Money | None = Field(None, description="FT1-12 unit amount")
    department: str | None = Field(None, description="FT1-13")
    performing_provider_id: str | None = Field(None, description="FT1-20 id")
    ordering_provider_id: str | None = Field(None, description="FT1-21 id")
    account_number: str | None = Field(None, description="PID-18")
    encounter_number: str | None = Field(None, description="PV1-19")
    patient_id: str | None = Field(None, description="PID-3, first identifier")
    facility: str | None = Field(None, description="MSH-4, else PV1-3 facility")
    erp: ChargeErp | None = Field(None, description="ERP coding from the reference tables")
    extensions: Extensions = None


class EncounterData(BaseModel):
    """A patient encounter changed state (ADT A01/A02/A03/A04/A08/A11/A13)."""

    model_config = _CONFIG
    VERSION: ClassVar[int] = 1

    control_id: str = Field(description="MSH-10 of the message")
    trigger: str = Field(description="MSH-9.2, e.g. A01")
    encounter_number: str | None = Field(None, description="PV1-19")
    account_number: str | None = Field(None, description="PID-18")
    patient_id: str | None = Field(None, description="PID-3, first identifier")
    patient_class: str | None = Field(None, description="PV1-2 (HL7 table 0004)")
    location: Location | None = Field(None, description="PV1-3")
    prior_location: Location | None = Field(None, description="PV1-6, transfers only")
    attending_provider_id: str | None = Field(None, description="PV1-7 id")
    hospital_service: str | None = Field(None, description="PV1-10")
    admit_time: str | None = Field(None, description="PV1-44, ISO 8601")
    discharge_time: str | None = Field(None, description="PV1-45, ISO 8601")
    event_time: str = Field(description="EVN-2, else MSH-7, else receipt time; ISO 8601")
    facility: str | None = Field(None, description="MSH-4, else PV1-3 facility")
    extensions: Extensions = None


#: The payload of any event this package emits.
EventData = ChargeData | EncounterData

#: Type name -> payload model, for schema export and for reading events back.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    subjects.CHARGE_POSTED.name: ChargeData,
    subjects.CHARGE_CREDITED.name: ChargeData,
    **{t.name: EncounterData for t in subjects.ALL_EVENT_TYPES if (t.domain, t.entity) == ("patient", "encounter")},
}
