"""The posting engine: canonical events -> balanced journal entries, per the fixture rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from canonical.context import TranslationContext
from canonical.posting.engine import Posting, post
from canonical.posting.rules import Rules, load_rules
from canonical.translate import translate_hl7
from canonical.x12 import translate_835

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "fixtures" / "posting" / "rules.toml"
RULES = load_rules(RULES_PATH)
CTX = TranslationContext("payer-835", "live", "raw.payer-835/1", datetime(2024, 10, 15, 12, tzinfo=UTC))


def events_835(path: Path, ctx: TranslationContext = CTX) -> list[dict[str, Any]]:
    with path.open("rb") as stream:
        return [json.loads(e.to_json()) for r in translate_835(stream, ctx, source_name=path.name)
                if r.events is not None for e in r.events]


def events_hl7(path: Path) -> list[dict[str, Any]]:
    ctx = TranslationContext("his-charges", "live", "raw.his/1", datetime(2024, 3, 5, 15, tzinfo=UTC))
    return [json.loads(e.to_json()) for e in translate_hl7(path.read_bytes(), "hl7v2", ctx).events]


def post_all(events: list[dict[str, Any]], rules: Rules = RULES) -> list[Posting]:
    return [post(e, rules) for e in events]


def test_fixture_rules_load() -> None:
    assert RULES.version == "2026.11-1"
    assert RULES.path == RULES_PATH
    assert RULES.rule_for("org.ficus.patient.encounter.admitted.v1") is not None


def test_fixture_835_and_dft_post_balanced_entries() -> None:
    events = events_835(ROOT / "fixtures/x12/balanced_2claims_plb.835")
    events += events_hl7(ROOT / "fixtures/hl7/dft_p03_charge_and_credit.hl7")
    postings = post_all(events)
    assert all(p.refused is None for p in postings), [p.refused for p in postings if p.refused]
    entries = [e for p in postings for e in p.entries]
    assert entries
    for entry in entries:
        lines = entry.data.lines
        assert sum((ln.debit for ln in lines), Decimal(0)) == sum((ln.credit for ln in lines), Decimal(0))
        assert entry.data.total == sum((ln.debit for ln in lines), Decimal(0))
