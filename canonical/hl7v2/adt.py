"""ADT (admit, discharge, transfer) messages -> patient encounter events.

One message gives one event. The action comes from MSH-9.2 (the trigger); EVN-1
is ignored because senders get it wrong (a corpus A11 says A01 in EVN-1).

| trigger | event type |
|---|---|
| A01 | org.ficus.patient.encounter.admitted.v1 |
| A02 | org.ficus.patient.encounter.transferred.v1 (with the prior location, PV1-6) |
| A03 | org.ficus.patient.encounter.discharged.v1 |
| A04 | org.ficus.patient.encounter.registered.v1 |
| A08 | org.ficus.patient.encounter.updated.v1 |
| A11 | org.ficus.patient.encounter.admission_cancelled.v1 |
| A13 | org.ficus.patient.encounter.discharge_cancelled.v1 |

PID and PV1 are required; at least one of PID-3, PID-18, PV1-19 must be present.
Names, birth dates and addresses in PID are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from canonical import subjects
from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, make_event
from canonical.hl7v2.common import Fields, Identifiers, MessageReader
from canonical.hl7v2.reader import Hl7Message, MshHeader, Segment
from canonical.subjects import EventType

if TYPE_CHECKING:
    from canonical.hl7v2.fieldmap import FamilyMap

__all__ = ["ADT_ACTIONS", "SUPPORTED", "map_adt"]

ADT_ACTIONS: dict[str, EventType] = {
    "A01": subjects.ENCOUNTER_ADMITTED,
    "A02": subjects.ENCOUNTER_TRANSFERRED,
    "A03": subjects.ENCOUNTER_DISCHARGED,
    "A04": subjects.ENCOUNTER_REGISTERED,
    "A08": subjects.ENCOUNTER_UPDATED,
    "A11": subjects.ENCOUNTER_ADMISSION_CANCELLED,
    "A13": subjects.ENCOUNTER_DISCHARGE_CANCELLED,
}

#: (MSH-9.1, MSH-9.2) pairs this mapping handles.
SUPPORTED = frozenset(("ADT", trigger) for trigger in ADT_ACTIONS)


def map_adt(
    header: MshHeader, msg: Hl7Message, ctx: TranslationContext, site: FamilyMap | None = None,
) -> list[CloudEvent]:
    """One encounter event for an ADT A01/A02/A03/A04/A08/A11/A13 message (``site``: the
    interface's site map: its fields replace the built-in reads, the others go into ``extensions``)."""
    etype = ADT_ACTIONS[header.trigger]
    r = MessageReader(header, msg, ctx)
    pid = r.require("PID")
    pv1 = r.require("PV1")
    if site is not None:
        return _site_adt(etype, r, pid.leaf(3), pid.leaf(18), site)
    ids = r.identifiers(pid, pv1)
    event_time = r.event_time(r.text(msg.segment("EVN"), 2), "EVN-2")
    data: Fields = {  # EncounterData
        "control_id": header.control_id,
        "trigger": header.trigger,
        "encounter_number": ids.encounter_number,
        "account_number": ids.account_number,
        "patient_id": ids.patient_id,
        "patient_class": pv1.leaf(2),
        "location": r.location(pv1, 3),
        "prior_location": r.location(pv1, 6) if header.trigger == "A02" else None,
        "attending_provider_id": pv1.leaf(7),
        "hospital_service": pv1.leaf(10),
        "admit_time": r.timestamp(pv1, 44, "PV1"),
        "discharge_time": r.timestamp(pv1, 45, "PV1"),
        "event_time": event_time,
        "facility": r.facility,
    }
    subject = f"{header.control_id}/PV1"
    return [make_event(etype, data, r.origin(event_time), index=1, subject=subject)]


def _site_adt(etype: EventType, r: MessageReader, patient: str | None, account: str | None,
              site: FamilyMap) -> list[CloudEvent]:
    header, msg = r.header, r.msg
    pv1 = msg.segment("PV1")
    assert pv1 is not None  # required by map_adt
    values, extensions = site.values(r, site.scope(msg))
    # Fields the site map does not name are read as the built-in mapping reads them, and only those.
    ids = Identifiers(values.get("patient_id", patient), values.get("account_number", account),  # type: ignore[arg-type]
                      values.get("encounter_number", pv1.leaf(19)))  # type: ignore[arg-type]
    if not (ids.patient_id or ids.account_number or ids.encounter_number):
        raise r.fail(f"{r.label} has no patient id, account or visit (site map and PID-3, PID-18, PV1-19)",
                     "PID-3", "101")
    if "event_time" in values:
        event_time = values["event_time"] or r.event_time()
    else:
        event_time = r.event_time(r.text(msg.segment("EVN"), 2), "EVN-2")
    data: Fields = {  # EncounterData
        "control_id": header.control_id,
        "trigger": header.trigger,
        "encounter_number": ids.encounter_number,
        "account_number": ids.account_number,
        "patient_id": ids.patient_id,
        "patient_class": None,
        "location": None,
        "prior_location": None,
        "attending_provider_id": None,
        "hospital_service": None,
        "admit_time": None,
        "discharge_time": None,
        "event_time": event_time,
        "facility": r.facility,
    }
    for name, read in _BUILTIN_READS.items():
        data[name] = values[name] if name in values else read(r, pv1, header.trigger)
    if extensions is not None:
        data["extensions"] = extensions
    return [make_event(etype, data, r.origin(str(event_time)), index=1, subject=f"{header.control_id}/PV1")]


_BUILTIN_READS: dict[str, Callable[[MessageReader, Segment, str], object]] = {
    "patient_class": lambda r, pv1, _t: pv1.leaf(2),
    "location": lambda r, pv1, _t: r.location(pv1, 3),
    "prior_location": lambda r, pv1, trigger: r.location(pv1, 6) if trigger == "A02" else None,
    "attending_provider_id": lambda r, pv1, _t: pv1.leaf(7),
    "hospital_service": lambda r, pv1, _t: pv1.leaf(10),
    "admit_time": lambda r, pv1, _t: r.timestamp(pv1, 44, "PV1"),
    "discharge_time": lambda r, pv1, _t: r.timestamp(pv1, 45, "PV1"),
}
