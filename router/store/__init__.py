"""JetStream behind one door: streams, KV and the object store, with Ficus's own errors.

Nothing above this package imports nats-py (tests/test_store_door.py keeps it so), except
router/publisher.py and router/fast_ingest.py, the hot paths the store drives. Errors: `StoreError` and its kinds
`StoreUnavailable` (retry later), `NotFound`, `RevisionConflict`, `StoreRejected`.
"""

from nats.js.api import PubAck

from router.store.core import (
    FALLBACK,
    FAST,
    INGEST,
    INGEST_OFF,
    Store,
    StoredMsg,
    connect,
    event_message,
    index_message,
    stream_configs,
)
from router.store.errors import NotFound, RevisionConflict, StoreError, StoreRejected, StoreUnavailable
from router.store.kv import Bucket, Entry
from router.store.objects import Objects
from router.store.outgoing import Outgoing

__all__ = [
    "FALLBACK",
    "FAST",
    "INGEST",
    "INGEST_OFF",
    "Bucket",
    "Entry",
    "NotFound",
    "Objects",
    "Outgoing",
    "PubAck",
    "RevisionConflict",
    "Store",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "StoredMsg",
    "connect",
    "event_message",
    "index_message",
    "stream_configs",
]
