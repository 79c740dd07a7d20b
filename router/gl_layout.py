"""The layout of a legacy GL export (`[interfaces.gl]`) and its reader; stored by router/gl_export.py.

The fields a layout may map (``GL_FIELDS``): ``posting_date`` (a date), ``facility`` and
``natural_account`` (required), the optional account segments ``entity``, ``cost_center`` and
``service_line``, the money as ``debit`` and ``credit`` or one signed ``amount`` (positive:
debit), an optional ``reference`` (a source reference, matched with the entries' business key,
source event ids or entry id) and ``currency``. Only the segments mapped are compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, BinaryIO, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from canonical.flat import Layout, LayoutError, check_layout, read_records
from canonical.records import FieldSpec, RecordError, convert

__all__ = ["GL_FIELDS", "SEGMENTS", "BadLine", "GlExportSpec", "GlLine", "LayoutError", "read_lines"]

SEGMENTS = ("entity", "facility", "natural_account", "cost_center", "service_line")
"""The account segments of a journal line (canonical.posting.model.AccountRef), in order."""
GL_FIELDS: dict[str, str] = {
    "posting_date": "date", "facility": "string", "natural_account": "string", "entity": "string",
    "cost_center": "string", "service_line": "string", "debit": "decimal", "credit": "decimal",
    "amount": "decimal", "reference": "string", "currency": "string",
}
_REQUIRED = ("posting_date", "facility", "natural_account")


class GlExportSpec(BaseModel):
    """``[interfaces.gl]``: how the legacy GL export's lines are read (``layout``, ``fields``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layout: Layout
    fields: list[FieldSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _types(cls, data: Any) -> Any:
        # Each GL field has one type; saying it again in the file is allowed, not needed.
        if isinstance(data, dict) and isinstance(data.get("fields"), list):
            data = {**data, "fields": [
                {**f, "type": GL_FIELDS[f["field"]]}
                if isinstance(f, dict) and "type" not in f and f.get("field") in GL_FIELDS else f
                for f in data["fields"]]}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Self:
        names_ = [f.field for f in self.fields]
        problems = [f"field {n!r} is not a GL export field (known: {', '.join(GL_FIELDS)})"
                    for n in names_ if n not in GL_FIELDS]
        problems += [f"field {n!r} is mapped twice" for n in sorted({n for n in names_ if names_.count(n) > 1})]
        problems += [f"field {f.field!r}: type {f.type!r}, expected {GL_FIELDS[f.field]!r}"
                     for f in self.fields if f.field in GL_FIELDS and f.type != GL_FIELDS[f.field]]
        problems += [f"a GL export needs {n!r} mapped" for n in _REQUIRED if n not in names_]
        has_amount, has_pair = "amount" in names_, "debit" in names_ and "credit" in names_
        if has_amount == has_pair or (not has_pair and ("debit" in names_ or "credit" in names_)):
            problems.append("map the money as debit and credit, or as one signed amount (positive: debit)")
        problems += check_layout(self.layout, self.fields)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def segments(self) -> tuple[str, ...]:
        """The account segments this export carries (and parity compares), in AccountRef order."""
        mapped = {f.field for f in self.fields}
        return tuple(s for s in SEGMENTS if s in mapped)


class GlLine(BaseModel):
    """One line of a GL export as stored for parity: identifiers, codes and money only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    day: str
    facility: str
    account: dict[str, str]
    """Segment -> value for the segments the export carries (absent or blank: "")."""
    debit: Decimal
    credit: Decimal
    reference: str | None = None
    currency: str | None = None
    file: str
    """The export file's SHA-256 (its original is in the raw object store)."""
    line: int
    index: int


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of the export that cannot be read: where and why (no value quoted)."""

    line: int
    index: int
    reason: str


def _text(value: object) -> str:
    return "" if value is None else str(value)


def read_lines(stream: BinaryIO, spec: GlExportSpec, sha256: str) -> Iterator[GlLine | BadLine]:
    """The lines of an export file, lazily; raises LayoutError when the file cannot fit its layout."""
    by_field = {f.field: f for f in spec.fields}
    for record in read_records(stream, spec.layout, spec.fields):
        if record.values is None:
            yield BadLine(record.line, record.index, record.error or f"line {record.line}: unreadable")
            continue
        try:
            values = {name: convert(record.values.get(name), field) for name, field in by_field.items()}
        except RecordError as exc:
            yield BadLine(record.line, record.index, f"line {record.line}: {exc}")
            continue
        posted = values["posting_date"]
        assert isinstance(posted, date)
        if "amount" in values:
            amount = values["amount"] if isinstance(values["amount"], Decimal) else Decimal(0)
            debit, credit = max(amount, Decimal(0)), max(-amount, Decimal(0))
        else:
            debit = values["debit"] if isinstance(values["debit"], Decimal) else Decimal(0)
            credit = values["credit"] if isinstance(values["credit"], Decimal) else Decimal(0)
        account = {s: _text(values.get(s)) for s in spec.segments}
        yield GlLine(day=posted.isoformat(), facility=_text(values["facility"]), account=account, debit=debit,
                     credit=credit, reference=_text(values.get("reference")) or None,
                     currency=_text(values.get("currency")) or None, file=sha256, line=record.line,
                     index=record.index)
