"""Every HL7 file of the public corpus through a real listener in modern mode: nothing
crashes it, and each message is translated, or rejected/dead-lettered with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from canonical.errors import NotHl7Error
from canonical.hl7v2.batch import split_batch
from canonical.hl7v2.reader import peek_header
from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count
from tests.mllp_client import MllpTestClient, msa

pytestmark = pytest.mark.integration


def expected_control_id(raw: bytes) -> str:
    try:
        return peek_header(raw).control_id
    except NotHl7Error:
        return ""


async def test_every_corpus_message_through_the_listener(
    corpus: Path, nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    files = sorted(p for p in (corpus / "hl7").rglob("*") if p.is_file())
    assert len(files) > 50
    cfg = make_config(nats_server.url, [{"name": "corpus", "mapping": "hl7v2", "route": "modern"}])
    outcomes: dict[str, int] = {}
    async with service_factory(cfg) as svc:
        port = svc.interfaces["corpus"].listener.port
        async with MllpTestClient(port) as client:
            for path in files:
                for item in split_batch(path.read_bytes()):
                    reply = await client.exchange(item.raw)
                    code, echoed = msa(reply)
                    where = f"{path.relative_to(corpus)} message {item.index + 1} (line {item.line})"
                    assert code in ("AA", "AE", "AR", "CA", "CE", "CR"), where
                    assert echoed == expected_control_id(item.raw), where
                    if code not in ("AA", "CA"):
                        assert reply is not None and any(seg.startswith(b"ERR") for seg in reply.split(b"\r")), where
                    outcomes[code] = outcomes.get(code, 0) + 1
            # Whole files as single frames (batches, garbage): answered, never a crash.
            for path in files:
                reply = await client.exchange(path.read_bytes())
                assert msa(reply)[0] in ("AA", "AE", "AR", "CA", "CE", "CR"), path.name
        stats = svc.interfaces["corpus"].stats
        assert stats.received == sum(outcomes.values()) + len(files)
        failures = stats.received - stats.acked
    print("corpus outcomes:", outcomes)
    assert outcomes.get("AA", 0) + outcomes.get("CA", 0) > 50, outcomes
    letters = await stream_count(nats_server.url, names.STREAM_DLQ)
    # Identical dead letters (same bytes, same reason) are stored once.
    assert 0 < letters <= failures
