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

from canonical import subjects
from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, make_event
from canonical.hl7v2.common import Fields, MessageReader
from canonical.hl7v2.reader import Hl7Message, MshHeader
from canonical.subjects import EventType

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


def map_adt(header: MshHeader, msg: Hl7Message, ctx: TranslationContext) -> list[CloudEvent]:
    """One encounter event for an ADT A01/A02/A03/A04/A08/A11/A13 message."""
    etype = ADT_ACTIONS[header.trigger]
    r = MessageReader(header, msg, ctx)
    pid = r.require("PID")
    pv1 = r.require("PV1")
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
