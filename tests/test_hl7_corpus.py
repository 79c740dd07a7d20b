"""Every message of the public HL7 corpus either translates (mapping "hl7v2") or raises one
of the three CanonicalError kinds with a reason free of patient data - nothing else, ever."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from canonical.envelope import EVENT_CLASSES, CloudEvent
from canonical.errors import CanonicalError, NotHl7Error, TranslationError, UnsupportedMessageError
from canonical.hl7v2.batch import split_batch
from canonical.hl7v2.reader import Hl7Message, decode_text, peek_header
from canonical.translate import TranslationContext, translate_hl7
from tests.conftest import corpus_root

CTX = TranslationContext("corpus", "live", "raw.corpus/1", datetime(2024, 1, 1, tzinfo=UTC))
VALIDATORS = {
    name: jsonschema.Draft202012Validator(cls.model_json_schema(mode="serialization"))
    for name, cls in EVENT_CLASSES.items()
}


def corpus_files() -> list[Path]:
    root = corpus_root()
    return sorted(p for p in (root / "hl7").rglob("*") if p.is_file()) if root else []


FILES = corpus_files()


def file_id(path: Path | None) -> str:
    return "/".join(path.parts[-2:]) if path else "no-corpus"


def outcomes(path: Path) -> list[tuple[bytes, list[CloudEvent] | CanonicalError]]:
    found: list[tuple[bytes, list[CloudEvent] | CanonicalError]] = []
    for item in split_batch(path.read_bytes()):
        try:
            found.append((item.raw, translate_hl7(item.raw, "hl7v2", CTX).events))
        except CanonicalError as exc:
            found.append((item.raw, exc))
    return found


def personal_words(raw: bytes) -> set[str]:
    """Names, birth date and street of the message's patients (best effort)."""
    try:
        header = peek_header(raw)
        msg = Hl7Message(decode_text(raw, header)[0])
    except CanonicalError:
        return set()
    words = set()
    for pid in msg.segments("PID"):
        for field, component in ((5, 1), (5, 2), (6, 1), (7, 1), (11, 1)):
            value = pid.get(field, 1, component).strip()
            if len(value) >= 4:
                words.add(value)
    return words


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("path", FILES or [None], ids=file_id)
def test_every_message_translates_or_fails_with_a_reason(path: Path | None) -> None:
    if path is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    for raw, result in outcomes(path):
        private = personal_words(raw)
        if isinstance(result, CanonicalError):
            assert type(result) in (NotHl7Error, UnsupportedMessageError, TranslationError)
            assert result.reason and str(result) == result.reason
            assert not [word for word in private if word in result.reason]
            continue
        for event in result:
            body = json.loads(event.to_json())
            VALIDATORS[event.type].validate(body)
            assert not private & set(strings(body["data"]))
            assert event.nats_subject().startswith("canonical.")
        assert len({event.id for event in result}) == len(result)


def translated(corpus: Path, name: str) -> list[list[dict[str, Any]]]:
    """The events of each message of a corpus file, as JSON data payloads."""
    found = []
    for _raw, result in outcomes(corpus / "hl7" / name):
        assert not isinstance(result, CanonicalError), result
        found.append([json.loads(event.to_json()) for event in result])
    return found


def failure(corpus: Path, name: str) -> CanonicalError:
    ((_raw, result),) = outcomes(corpus / "hl7" / name)
    assert isinstance(result, CanonicalError)
    return result


def test_real_charges(corpus: Path) -> None:
    ((charge,),) = translated(corpus, "hl7-v2-to-fhir/P03-Charge-v2.3.txt")
    assert charge["type"] == "org.ficus.revenue.charge.posted.v1"
    assert charge["data"]["procedure_code"]["code"] == "99214"
    assert (charge["data"]["amount"], charge["data"]["quantity"]) == (None, "1")
    assert charge["time"] == "2019-04-16T08:47:48+00:00"
    ((first, second),) = translated(corpus, "msfhirconv/DFT-P03-02.hl7")
    assert [first["data"]["amount"], second["data"]["amount"]] == ["100", "120"]
    assert first["data"]["currency"] == "USD" and first["time"] == "2021-08-18T11:26:00+02:15"
    messages = translated(corpus, "node-hl7-complete/dft-example.hl7")
    assert [[e["data"]["charge_code"]["code"] for e in m] for m in messages] == [["73630"], ["76775"]]


def test_real_encounters(corpus: Path) -> None:
    expected = {"A01": "admitted", "A03": "discharged", "A04": "registered", "A08": "updated"}
    expected |= {"A11": "admission_cancelled", "A13": "discharge_cancelled"}
    for trigger, action in expected.items():
        name = f"msfhirconv/ADT-{trigger}-{'02' if trigger == 'A04' else '01'}.hl7"
        ((event,),) = translated(corpus, name)
        assert event["type"] == f"org.ficus.patient.encounter.{action}.v1", name
    assert len(translated(corpus, "mirth-connect/hl7.txt")) == 1  # [SOM]/[EOM] framed


def test_real_failures(corpus: Path) -> None:
    assert failure(corpus, "trusted-intermediary/empty.hl7").reason == "empty message"
    assert failure(corpus, "trusted-intermediary/msh_present_but_missing_msh-9.hl7").reason == (
        "MSH-9 message type is missing"
    )
    assert isinstance(failure(corpus, "lfh-hl7v2-fhir-converter/sample_win.hl7"), NotHl7Error)
    assert isinstance(failure(corpus, "hapi-hl7v2/uuencoded_escaped.txt"), NotHl7Error)
    assert failure(corpus, "node-hl7-complete/adt-example.hl7").reason == "ADT^A01 has no PID segment"
    unsupported = failure(corpus, "msfhirconv/ADT-A40-01.hl7")
    assert isinstance(unsupported, UnsupportedMessageError) and unsupported.hl7_code == "201"


def test_the_corpus_is_mostly_translatable_or_knowingly_unsupported(corpus: Path) -> None:
    kinds: dict[str, int] = {}
    for path in FILES:
        for _raw, result in outcomes(path):
            kind = type(result).__name__ if isinstance(result, CanonicalError) else "translated"
            kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("translated", 0) >= 80
    assert kinds.get("TranslationError", 0) <= 2
    assert sum(kinds.values()) > 280
