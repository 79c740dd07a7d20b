"""Every wire name Ficus owns on NATS: streams, subjects, KV buckets, headers.

Call sites use these functions and constants instead of building strings, so a rename
happens in one place and a test can list what exists.
"""

from __future__ import annotations

import base64
import hashlib
import re

STREAM_RAW = "FICUS_RAW"
STREAM_CANONICAL = "FICUS_CANONICAL"
STREAM_SHADOW = "FICUS_SHADOW"
STREAM_DLQ = "FICUS_DLQ"
STREAM_AUDIT = "FICUS_AUDIT"
# Reconciliation ledger deltas (router/ledger.py): one subject per interface and UTC day.
STREAM_LEDGER = "FICUS_LEDGER"
# The event index (router/events_api.py): a copy of each event under a subject that names its
# mode, interface and facility, so the consumer API filters by them with subject filters.
STREAM_EVIDX = "FICUS_EVIDX"
# GL parity (issue 15): the legacy GL export's lines by interface and posting day (router/gl_export.py),
# and a copy of each journal entry by posting day (router/posting.py), so a day is read by subject.
STREAM_GLREF = "FICUS_GLREF"
STREAM_POSTIDX = "FICUS_POSTIDX"
# The business-key index (router/keyindex.py): a unit's keys as keyed hashes, its links, and sink deliveries.
STREAM_KEYS = "FICUS_KEYS"

SUBJECTS_RAW = "raw.>"
SUBJECTS_CANONICAL = "canonical.>"
SUBJECTS_SHADOW = "shadow.>"
SUBJECTS_DLQ = "dlq.>"
SUBJECTS_AUDIT = "ficus.audit.>"
SUBJECTS_LEDGER = "ledger.>"
SUBJECTS_EVIDX = "evidx.>"
SUBJECTS_GLREF = "glref.>"
SUBJECTS_POSTIDX = "postidx.>"
SUBJECTS_KEYS = "keys.>"

KV_ROUTES = "ficus-routes"
KV_FILES = "ficus-files"
KV_CHECKPOINTS = "ficus-checkpoints"
KV_LEASES = "ficus-leases"
"""Polling interfaces' leases (router/leases.py): values with a per-key TTL."""
OBJ_RAW_FILES = "ficus-raw-files"
KV_KEYS = "ficus-keys"
# The instance registry (router/instances.py): one entry per running Ficus, keyed by cluster.instance.
KV_INSTANCES = "ficus-instances"

HDR_MSG_ID = "Nats-Msg-Id"
HDR_INTERFACE = "Ficus-Interface"
HDR_CONTROL_ID = "Ficus-Control-Id"
HDR_PEER = "Ficus-Peer"
# On a raw copy received over mutual TLS: the client certificate's subject (RFC 4514, bounded).
HDR_PEER_CERT = "Ficus-Peer-Cert"
HDR_EVENT_TYPE = "Ficus-Event-Type"
HDR_MODE = "Ficus-Mode"
# On a raw copy whose control id was already stored with other bytes (router/mllp_pipeline.py).
HDR_REUSED = "Ficus-Reused-Control-Id"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def raw_subject(interface: str) -> str:
    """Where the raw units of an interface are archived."""
    return f"raw.{interface}"


def dlq_subject(interface: str) -> str:
    """Where the dead letters of an interface go."""
    return f"dlq.{interface}"


def subject_token(value: str | None) -> str:
    """A free-text value as one subject token: itself when it is [A-Za-z0-9_-]{1,64}, "-" for
    none, else "~" and its UTF-8 in unpadded base64url (exact, so a filter never mixes two values)."""
    if not value:
        return "-"
    if _TOKEN.match(value):
        return value
    return "~" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def evidx_subject(mode: str, interface: str, facility: str | None, event_subject: str) -> str:
    """The index subject of an event stored on `event_subject` ([shadow.]canonical.<d>.<e>.<a>):
    evidx.<live|shadow>.<interface>.<facility token>.<d>.<e>.<a>."""
    rest = event_subject.split("canonical.", 1)[1]
    return f"evidx.{mode}.{interface}.{subject_token(facility)}.{rest}"


def keys_msg_subject(interface: str, correlation_hash: str) -> str:
    """A unit's own index record (router/keyindex.py): keys.msg.<interface>.<hash of its correlation>."""
    return f"keys.msg.{interface}.{correlation_hash}"


def keys_subject(kind: str, value_hash: str) -> str:
    """The index records of one business key value: keys.<kind>.<its keyed hash>."""
    return f"keys.{kind}.{value_hash}"


_HEX = re.compile(r"^[0-9a-f]{1,64}$")


def keys_delivery_subject(event_id: str) -> str:
    """Where a sink's deliveries of an event are recorded: keys.dlv.<event id> (ids are hex hashes;
    anything else is hashed to one)."""
    token = event_id if _HEX.match(event_id) else hashlib.sha256(event_id.encode()).hexdigest()[:32]
    return f"keys.dlv.{token}"


def ledger_subject(interface: str, day: str) -> str:
    """Where the ledger deltas of an interface's units received on `day` (YYYY-MM-DD, UTC) go;
    `day` "*" matches every day."""
    return f"ledger.{interface}.{day}"


def route_audit_subject(interface: str) -> str:
    """The audit trail of route flips of an interface."""
    return f"ficus.audit.routes.{interface}"


def raw_ref(stream: str, seq: int) -> str:
    """The `ficusraw` reference of a stored raw unit."""
    return f"jetstream://{stream}/{seq}"


def parse_raw_ref(ref: str) -> tuple[str, int]:
    """Inverse of `raw_ref`; raises ValueError on anything else."""
    prefix = "jetstream://"
    if not ref.startswith(prefix):
        raise ValueError(f"not a raw reference: {ref!r}")
    stream, _, seq = ref[len(prefix) :].partition("/")
    return stream, int(seq)
