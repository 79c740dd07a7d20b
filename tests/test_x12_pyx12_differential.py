"""Differential test: Ficus's 835 translator against pyx12 over the corpus and fixtures/x12.

For every 835 file, each transaction (ST..SE, paired by position in the file
and ST02) is summarised twice and the summaries compared:

* **pyx12** (``X12ContextReader.iter_segments``): the segments its 835 map
  places - CLP in loop 2100, SVC in loop 2110, CAS at claim level (2100) or
  line level (2110) by the loop the map puts it in, PLB in the footer, BPR in
  the header. Nothing of Ficus's code is used on this side.
  A segment the map cannot place is placed by the 835's order instead, and
  counted as a difference to explain.
* **Ficus** (``translate_835``): the events of a balanced transaction, read back
  from their JSON (what downstream sees). A transaction Ficus dead-letters for
  being out of balance or for its SE01/SE02 was read whole, so its parsed record
  is compared too; a transaction dead-lettered for a parse error is not
  compared (the rejection is listed; when Ficus says an amount is missing or
  not a number, pyx12 must find one too). File-level notices (an IEA02 that differs
  from ISA13) belong to no transaction and are left out.

Compared per transaction: BPR02, the number of claims, per claim CLP01-CLP05,
its claim-level CAS (group, reason, amount) in order, the number of service
lines, per line SVC02/SVC03 and its CAS; the sum of the PLB amounts. Amounts are
``Decimal``. pyx12's figures are also checked against the balancing rules,
written out here independently of ``canonical.x12.balance``: a transaction Ficus
accepts must balance on pyx12's figures, and one Ficus dead-letters as out of
balance must not.

Every difference is a line of text; :data:`EXPLAINED` maps each file that has
any to the patterns its lines match and why (Ficus's deliberate rejections
included). Each file's test asserts its lines are exactly explained: a new
difference in any file, or an explained one that went away, fails.

pyx12 only reads an interchange with a fixed-width ISA whose version (ISA12,
GS08) it has a map for. For the files listed in :data:`PYX12_ENVELOPE` the test
rewrites the envelope - never a segment between ST and SE - before pyx12 reads
it; the text is decoded as UTF-8 with its BOM dropped (pyx12 takes text).
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
import pyx12.error_handler  # type: ignore[import-untyped]
import pyx12.params  # type: ignore[import-untyped]
import pyx12.x12context  # type: ignore[import-untyped]

from canonical.context import TranslationContext
from canonical.x12 import translate_835
from canonical.x12.balance import check_transaction
from canonical.x12.model import Transaction
from tests.conftest import REPO, corpus_root

_SE_CHECK = re.compile(r"SE0[12] ")
_UNREADABLE_AMOUNT = re.compile(r"(BPR02|CLP0[345]|SVC0[23]|CAS\d\d) is (missing|not a number)")
CTX = TranslationContext("payer-835", "shadow", "raw.payer-835/differential", datetime(2024, 1, 1, tzinfo=UTC))
_ST_835 = re.compile(r"(?:^|\W)ST\W835\W")


def _is_835(path: Path) -> bool:
    return _ST_835.search(path.read_bytes().decode("utf-8", "replace")) is not None


def _files() -> list[Path]:
    roots = [REPO / "fixtures" / "x12"]
    corpus = corpus_root()
    if corpus is not None and (corpus / "x12").is_dir():
        roots.append(corpus / "x12")
    found = sorted((p for root in roots for p in root.rglob("*") if p.is_file() and _is_835(p)), key=lambda p: p.name)
    names = [p.name for p in found]
    assert len(set(names)) == len(names), "file names must be unique: EXPLAINED is keyed by name"
    return found


FILES = _files()
CORPUS_PRESENT = corpus_root() is not None


# --- the summary both sides are reduced to -------------------------------------------------

Cas = tuple[str, str, Decimal | str]


@dataclass
class Line:
    """One service line: SVC02, SVC03 and its CAS triples."""

    charge: Decimal | str
    paid: Decimal | str
    cas: list[Cas] = field(default_factory=list)


@dataclass
class Claim:
    """One claim: CLP01-CLP05, claim-level CAS triples and lines."""

    clp: tuple[str, str, Decimal | str, Decimal | str, Decimal | str | None]
    cas: list[Cas] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)


@dataclass
class Tx:
    """One transaction.

    ``rejected`` is Ficus's dead-letter reason, ``compared`` False when Ficus could
    not read it whole, ``unplaced`` the segments pyx12's map did not place.
    """

    st: str
    bpr02: Decimal | str | None = None
    bpr03: str = "C"
    claims: list[Claim] = field(default_factory=list)
    plb_total: Decimal = Decimal(0)
    rejected: str | None = None
    compared: bool = True
    unplaced: list[str] = field(default_factory=list)


def _dec(text: str | None) -> Decimal | str:
    """An amount as a Decimal; text that is not a number stays text (and differs from any Decimal)."""
    try:
        return Decimal(text or "")
    except InvalidOperation:
        return f"not a number: {text!r}"


# --- pyx12's side ---------------------------------------------------------------------------

#: ISA01-ISA16 widths: pyx12 reads the ISA by offsets.
_ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
_VERSIONS = {"00401": "004010X091A1", "00501": "005010X221A1"}

#: file -> why pyx12 reads a rewritten envelope (the segments from ST to SE are never touched).
PYX12_ENVELOPE = {
    "exhaustive_sample.txt": "no ISA/GS envelope (starts at ST): wrapped in a 5010 one",
    "blue_cross_nc_sample.txt": "no ISA/GS envelope (starts at ST): wrapped in a 5010 one",
    "nevada_medicaid.txt": "ISA elements not padded to width: padded",
    "835_DeIdent_01.dat": "ISA12 and GS08 masked (99999, 999999X999X9): set to 00401 / 004010X091A1",
    "835_DeIdent_02.dat": "ISA12 and GS08 masked (99999, 999999X999X9): set to 00401 / 004010X091A1",
    "Example1.txt": "GS08 is '5010' under ISA12 00401: set to 004010X091A1",
}


def _pyx12_text(name: str, text: str) -> str:
    """The text pyx12 reads: as decoded, or with the envelope rewritten for a file of :data:`PYX12_ENVELOPE`."""
    if name not in PYX12_ENVELOPE:
        return text
    original = text
    if text.startswith("ST"):
        end = "~" if "~" in text else "\n"
        isa = ["00", "", "00", "", "ZZ", "SENDER", "ZZ", "RECEIVER", "240101", "1200", "^", "00501", "1", "0", "P", ":"]
        count = len(_ST_835.findall(text))
        text = f"ISA*{'*'.join(isa)}{end}GS*HP*SENDER*RECEIVER*20240101*1200*1*X*005010X221A1{end}{text}"
        text += f"GE*{count}*1{end}IEA*1*000000001{end}"
    sep = text[3]
    # The terminator follows ISA16, the character after the 16th separator.
    at = 3
    for _ in range(15):
        at = text.index(sep, at + 1)
    end = text[at + 2]
    segments = text.split(end)
    version = "00501"
    for n, segment in enumerate(segments):
        elements = segment.split(sep)
        sid = elements[0].strip()
        if sid == "ISA":
            elements[1:] = [e.ljust(w) for e, w in zip(elements[1:], _ISA_WIDTHS, strict=True)]
            elements[12] = version = elements[12] if elements[12] in _VERSIONS else "00401"
            elements[13] = elements[13].strip().rjust(9, "0")
        elif sid == "GS" and elements[8] not in _VERSIONS.values():
            elements[8] = _VERSIONS[version]
        segments[n] = sep.join(elements)
    text = end.join(segments)
    assert text != original, f"{name}: listed in PYX12_ENVELOPE but nothing rewritten"
    return text


def _cas_triples(seg: Any) -> list[Cas]:
    """Every (group, reason, amount) of a CAS: the triples whose reason (CAS02, 05, ... 17) is not empty."""
    group = seg.get_value("CAS01") or ""
    triples: list[Cas] = []
    for start in range(2, 20, 3):
        reason = seg.get_value(f"CAS{start:02d}")
        if reason:
            triples.append((group, reason, _dec(seg.get_value(f"CAS{start + 1:02d}"))))
    return triples


def _plb_total(seg: Any) -> Decimal:
    """Sum of PLB04, 06, ... 14 (the amount of each adjustment of a PLB)."""
    total = Decimal(0)
    for position in range(4, 15, 2):
        value = seg.get_value(f"PLB{position:02d}")
        if value:
            amount = _dec(value)
            assert isinstance(amount, Decimal), f"PLB{position:02d} {value!r}"
            total += amount
    return total


class Pyx12Failure(Exception):
    """pyx12 raised while reading a file (its message names the segment number and the exception type)."""


def pyx12_transactions(path: Path) -> list[Tx]:
    """The transactions of ``path`` as pyx12 reads them.

    Each segment sits in the loop pyx12's 835 map places it in. A segment the map
    cannot place (pyx12 then reports it under the previous segment's map node -
    an SVC whose SVC01-1 is not a known qualifier, and the CAS after it) is
    placed by the 835's order instead - an SVC opens a line of the current
    claim, a CAS belongs to the open line, else to the claim - and noted in
    ``unplaced``, which is a difference to explain.
    """
    text = _pyx12_text(path.name, path.read_bytes().decode("utf-8-sig"))
    errh = pyx12.error_handler.errh_null()
    reader = pyx12.x12context.X12ContextReader(pyx12.params.params(), errh, io.StringIO(text))
    found: list[Tx] = []
    tx: Tx | None = None
    claim: Claim | None = None
    line: Line | None = None
    nodes = reader.iter_segments()
    count = 0
    while True:
        try:
            node = next(nodes, None)
        except Exception as exc:  # a crash of pyx12 is a difference to explain
            raise Pyx12Failure(f"pyx12 fails at segment {count + 1}: {type(exc).__name__}") from exc
        if node is None:
            break
        count += 1
        seg = node.seg_data
        sid = seg.get_seg_id()
        loop = node.x12_map_node.x12path.loop_list[-1] if node.x12_map_node.id == sid else None
        if sid == "ST":
            tx, claim, line = Tx(seg.get_value("ST02") or ""), None, None
            found.append(tx)
            continue
        if tx is None or sid not in ("BPR", "CLP", "SVC", "CAS", "PLB"):
            continue
        if loop is None:
            tx.unplaced.append(sid)
        if sid == "BPR":
            tx.bpr02, tx.bpr03 = _dec(seg.get_value("BPR02")), seg.get_value("BPR03") or ""
        elif sid == "CLP":
            clp05 = seg.get_value("CLP05")
            clp01, clp02 = seg.get_value("CLP01") or "", seg.get_value("CLP02") or ""
            amounts = _dec(seg.get_value("CLP03")), _dec(seg.get_value("CLP04"))
            claim, line = Claim((clp01, clp02, *amounts, _dec(clp05) if clp05 else None)), None
            tx.claims.append(claim)
        elif sid == "SVC" and claim is not None:
            line = Line(_dec(seg.get_value("SVC02")), _dec(seg.get_value("SVC03")))
            claim.lines.append(line)
        elif sid == "CAS" and line is not None and loop != "2110":
            if loop is not None:
                tx.unplaced.append(f"CAS in loop {loop} after an SVC")
            line.cas += _cas_triples(seg)
        elif sid == "CAS" and line is not None:
            line.cas += _cas_triples(seg)
        elif sid == "CAS" and claim is not None:
            claim.cas += _cas_triples(seg)
        elif sid == "PLB":
            claim = line = None
            tx.plb_total += _plb_total(seg)
        else:
            tx.unplaced.append(f"{sid} outside a claim")
    return found


# --- Ficus's side ---------------------------------------------------------------------------


def _from_record(st: str, record: Transaction) -> Tx:
    """The summary of a transaction's parsed record (for one dead-lettered as out of balance)."""
    tx = Tx(st, record.bpr_amount)
    for c in record.claims:
        claim = Claim((c.elements[1], c.status, c.charge, c.paid, c.patient_responsibility))
        claim.cas = [(a.group, a.reason, a.amount) for a in c.adjustments]
        for item in c.lines:
            claim.lines.append(Line(item.charge, item.paid, [(a.group, a.reason, a.amount) for a in item.adjustments]))
        tx.claims.append(claim)
    tx.plb_total = sum((item[2] for plb in record.plbs for item in plb.items), Decimal(0))
    return tx


def _from_events(st: str, docs: list[dict[str, Any]]) -> Tx:
    """The summary of a balanced transaction's events, read back from JSON."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs:
        by_type[doc["type"].split(".")[3]].append(doc["data"])
    [remittance] = by_type["remittance"]
    assert remittance["claim_count"] == len(by_type["claim"])
    tx = Tx(st, Decimal(remittance["amount"]))
    claims: dict[int, Claim] = {}
    for data in by_type["claim"]:
        clp05 = data["patient_responsibility"]
        clp = (
            data["patient_control_number"],
            data["status_code"],
            Decimal(data["charge"]),
            Decimal(data["paid"]),
            None if clp05 is None else Decimal(clp05),
        )
        claims[data["claim_index"]] = Claim(clp)
    lines: dict[tuple[int, int], Line] = {}
    for data in by_type["service_line"]:
        line = lines[data["claim_index"], data["line_index"]] = Line(Decimal(data["charge"]), Decimal(data["paid"]))
        claims[data["claim_index"]].lines.append(line)
    for data in by_type["adjustment"]:
        triple = (data["group_code"], data["reason_code"], Decimal(data["amount"]))
        if data["line_index"] is None:
            claims[data["claim_index"]].cas.append(triple)
        else:
            lines[data["claim_index"], data["line_index"]].cas.append(triple)
    tx.claims = [claims[index] for index in sorted(claims)]
    tx.plb_total = sum((Decimal(data["total"]) for data in by_type["provider_adjustment"]), Decimal(0))
    return tx


def ficus_transactions(path: Path) -> list[Tx]:
    """The transactions of ``path`` as Ficus translates them (file-level notices, with no ST, left out)."""
    found: list[Tx] = []
    with path.open("rb") as stream:
        for result in translate_835(stream, CTX, source_name=path.name):
            st = result.st_control
            if st is None:
                continue
            if result.events is not None:
                found.append(_from_events(st, [json.loads(event.to_json()) for event in result.events]))
                continue
            assert result.error is not None
            record = result.transaction
            # Read whole: SE01/SE02 and the balancing rules are checked once every segment was read.
            reason = result.error.reason.removeprefix(f"ST {st} of {path.name}: ")
            imbalance = check_transaction(record) if record is not None and record.bpr else None
            if record is not None and (reason == imbalance or _SE_CHECK.match(reason)):
                tx = _from_record(st, record)
            else:
                tx = Tx(st, compared=False)
            tx.rejected = reason
            found.append(tx)
    return found


# --- the comparison -------------------------------------------------------------------------


def _pyx12_imbalance(tx: Tx) -> str | None:
    """The first balancing rule pyx12's figures break (see canonical.x12.balance), None when they balance.

    Written out here rather than calling Ficus's rules, so the figures Ficus
    accepts or dead-letters are judged independently.
    """
    paid = Decimal(0)
    for n, claim in enumerate(tx.claims, 1):
        charge, claim_paid = claim.clp[2], claim.clp[3]
        lines = [(line.charge, line.paid, _amounts(line.cas)) for line in claim.lines]
        cas = _amounts(claim.cas)
        if not isinstance(charge, Decimal) or not isinstance(claim_paid, Decimal) or cas is None:
            return f"claim {n}: an amount is not a number"
        for line_charge, line_paid, line_cas in lines:
            if not isinstance(line_charge, Decimal) or not isinstance(line_paid, Decimal) or line_cas is None:
                return f"claim {n}: an amount is not a number"
            if line_charge - line_cas != line_paid:
                return f"claim {n}: SVC02 - CAS != SVC03"
            cas += line_cas
        if charge - cas != claim_paid:
            return f"claim {n}: CLP03 - CAS != CLP04"
        paid += claim_paid
    if not isinstance(tx.bpr02, Decimal):
        return "BPR02 is not a number"
    bpr = -tx.bpr02 if tx.bpr03 == "D" else tx.bpr02
    return None if bpr == paid - tx.plb_total else "BPR02 != sum(CLP04) - PLB"


def _amounts(cas: list[Cas]) -> Decimal | None:
    """The sum of the CAS amounts, None when one is not a number."""
    total = Decimal(0)
    for _, _, amount in cas:
        if not isinstance(amount, Decimal):
            return None
        total += amount
    return total


def _compare_cas(where: str, ours: list[Cas], theirs: list[Cas]) -> list[str]:
    return [] if ours == theirs else [f"{where}: CAS pyx12 {_show(theirs)}, Ficus {_show(ours)}"]


def _show(cas: list[Cas]) -> str:
    return " ".join(f"{g}-{r} {a}" for g, r, a in cas) or "none"


def differences(path: Path) -> list[str]:
    """Every difference between pyx12's and Ficus's reading of ``path``, one line each."""
    try:
        theirs = pyx12_transactions(path)
    except Pyx12Failure as exc:
        return [str(exc)]
    return compare(theirs, ficus_transactions(path))


def compare(theirs: list[Tx], ours: list[Tx]) -> list[str]:
    """The differences between pyx12's transactions and Ficus's, one line each."""
    found: list[str] = []
    if len(theirs) != len(ours):
        found.append(f"transactions: pyx12 {len(theirs)}, Ficus {len(ours)}")
    for t, o in zip(theirs, ours, strict=False):
        where = f"ST {t.st}"
        if t.st != o.st:
            found.append(f"{where}: ST02 pyx12 {t.st}, Ficus {o.st}")
        if t.unplaced:
            counts = {sid: t.unplaced.count(sid) for sid in t.unplaced}
            found.append(f"{where}: pyx12's map does not place " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        if o.rejected is not None:
            read = "read whole" if o.compared else "not compared"
            found.append(f"{where}: Ficus dead-letters it ({read}): {o.rejected}")
        imbalance = _pyx12_imbalance(t)
        if not o.compared:
            # An amount Ficus cannot read must be unreadable on pyx12's side too.
            if _UNREADABLE_AMOUNT.match(o.rejected or "") and "not a number" not in (imbalance or ""):
                found.append(f"{where}: Ficus cannot read an amount, pyx12 reads every one")
            continue
        if o.rejected is None and imbalance is not None:
            found.append(f"{where}: Ficus accepts it, pyx12's figures do not balance ({imbalance})")
        if o.rejected is not None and imbalance is None and not _SE_CHECK.match(o.rejected):
            found.append(f"{where}: Ficus dead-letters it, pyx12's figures balance")
        if t.bpr02 != o.bpr02:
            found.append(f"{where}: BPR02 pyx12 {t.bpr02}, Ficus {o.bpr02}")
        if t.plb_total != o.plb_total:
            found.append(f"{where}: PLB total pyx12 {t.plb_total}, Ficus {o.plb_total}")
        if len(t.claims) != len(o.claims):
            found.append(f"{where}: claims pyx12 {len(t.claims)}, Ficus {len(o.claims)}")
        for n, (tc, oc) in enumerate(zip(t.claims, o.claims, strict=False), 1):
            at = f"{where} claim {n}"
            for label, a, b in zip(("CLP01", "CLP02", "CLP03", "CLP04", "CLP05"), tc.clp, oc.clp, strict=True):
                if a != b:
                    found.append(f"{at}: {label} pyx12 {a}, Ficus {b}")
            found += _compare_cas(at, oc.cas, tc.cas)
            if len(tc.lines) != len(oc.lines):
                found.append(f"{at}: service lines pyx12 {len(tc.lines)}, Ficus {len(oc.lines)}")
            for m, (tl, ol) in enumerate(zip(tc.lines, oc.lines, strict=False), 1):
                if (tl.charge, tl.paid) != (ol.charge, ol.paid):
                    found.append(f"{at} line {m}: SVC02/03 pyx12 {tl.charge}/{tl.paid}, Ficus {ol.charge}/{ol.paid}")
                found += _compare_cas(f"{at} line {m}", ol.cas, tl.cas)
    return found


@dataclass(frozen=True)
class Explained:
    """Why a file differs, and regular expressions its difference lines match (each at least once)."""

    why: str
    patterns: tuple[str, ...]


_MASKED_SVC = (
    "SVC01-1 is the masked qualifier 'XX', which pyx12's 835 map does not know, so it places neither that SVC nor "
    "the CAS after it (pyx12 reports them under the previous segment's map node); placed by the 835's order, "
    "every amount agrees. "
)
_NOT_PLACED = r"^ST \d+: pyx12's map does not place \d+ SVC, \d+ CAS$"
_PIPE_IN_SVC = (
    "SVC01 uses '>' between components while ISA16 declares ':', so SVC01-1 reads 'HC>...', a qualifier pyx12's "
    "map does not know: it places neither the SVC nor its CAS. Ficus reads SVC02/SVC03 by position (its SVC01 "
    "stays one component, which no amount depends on); placed by the 835's order, every amount agrees."
)

#: file -> every difference of that file and why. Exactly the files that differ.
EXPLAINED: dict[str, Explained] = {
    "835_DeIdent_01.dat": Explained(
        _MASKED_SVC + "BPR02 is masked (99999.99), so the transaction cannot balance: Ficus dead-letters it, and "
        "pyx12's figures (equal to Ficus's) do not balance either.",
        (
            _NOT_PLACED,
            r"^ST 999999: Ficus dead-letters it \(read whole\): BPR02 99999\.99 != sum\(CLP04\) 66417\.62 - PLB 0$",
        ),
    ),
    "835_DeIdent_02.dat": Explained(
        _MASKED_SVC + "Masking breaks every one of its six transactions, each read whole with pyx12's figures: "
        "the first line of ST ...1 and ...4 does not balance (masked SVC03 0), BPR02 of ...2, ...3 and ...5 is a "
        "masked 99999.99 / 99.99, and SE02 of ...6 is a masked 999999999.",
        (
            _NOT_PLACED,
            r"^ST 999999999[14]: Ficus dead-letters it \(read whole\): claim 1 .* line 1 .*: "
            r"SVC02 \S+ - CAS \S+ != SVC03 0$",
            r"^ST 999999999[235]: Ficus dead-letters it \(read whole\): BPR02 \S+ != sum\(CLP04\) \S+ - PLB \S+$",
            r"^ST 9999999996: Ficus dead-letters it \(read whole\): SE02 999999999 != ST02 \(segment 13000\)$",
        ),
    ),
    "835_WithMultipleInterchanges.txt": Explained(
        _MASKED_SVC + "De-identification also left each BPR02 unrelated to its claims (999.99, 9999.99, 482.13): "
        "Ficus dead-letters all three transactions, pyx12's figures agree and do not balance either.",
        (_NOT_PLACED, r"^ST \d+: Ficus dead-letters it \(read whole\): BPR02 \S+ != sum\(CLP04\) \S+ - PLB 0$"),
    ),
    "Example1.txt": Explained(
        "A claim has an empty CLP03 (required): Ficus dead-letters the transaction on purpose "
        "(tests/test_x12_corpus.py); pyx12 reads it, nothing to compare.",
        (r"^ST 07504123: Ficus dead-letters it \(not compared\): CLP03 is missing \(segment 98\)$",),
    ),
    "blue_cross_nc_sample.txt": Explained(
        "A service line has an empty SVC02 (required): Ficus dead-letters the transaction on purpose; nothing to "
        "compare.",
        (r"^ST 1234: Ficus dead-letters it \(not compared\): SVC02 is missing \(segment 28\)$",),
    ),
    "cob-contractural-adjustment.835": Explained(_PIPE_IN_SVC, (_NOT_PLACED,)),
    "secondary-payment.835": Explained(_PIPE_IN_SVC, (_NOT_PLACED,)),
    "exhaustive_sample.txt": Explained(
        "No envelope: the test wraps it in one declaring ':' (Ficus's assumption for a file without ISA16), but "
        "the file's SVC01 uses '>', so pyx12's map does not know SVC01-1 and places neither the SVC nor its CAS; "
        "placed by the 835's order, every amount agrees.",
        (_NOT_PLACED,),
    ),
    "managed-care.835": Explained(
        "BPR16 is 20002316 (month 23), not a CCYYMMDD date: Ficus dead-letters the transaction on purpose; "
        "nothing to compare (pyx12's amounts balance, the date is the only fault).",
        (r"^ST 112233: Ficus dead-letters it \(not compared\): BPR16 is not a CCYYMMDD date \(segment 4\)$",),
    ),
    "sample_835.txt": Explained(
        "pyx12 raises IndexError validating PLB*1001*...*resnCode>adjID>5 (a PLB03 with three components where its "
        "map has two), a pyx12 defect; Ficus dead-letters both transactions anyway (template placeholders as CAS "
        "amounts, tests/test_x12_corpus.py).",
        (r"^pyx12 fails at segment 162: IndexError$",),
    ),
    "sample_835_with_interests.txt": Explained(
        "Template placeholders: 'CAS*grp_code*reason_code*amount*quantity' (pyx12's map does not place a CAS "
        "whose CAS01 is no group code; Ficus dead-letters ST 1002: CAS03 is not a number) and a broken segment "
        "'resnCode>adjID>5***' (Ficus dead-letters ST 1001); nothing to compare.",
        (
            r"^ST 1002: pyx12's map does not place 2 CAS$",
            r"^ST 1002: Ficus dead-letters it \(not compared\): CAS03 is not a number \(segment 23\)$",
            r"^ST 1001: Ficus dead-letters it \(not compared\): broken segment id \(segment 165\)$",
        ),
    ),
    "tertiary-payment.835": Explained(
        "The file's service line does not balance (24599.00 - 1579.00 != 1766.50): Ficus dead-letters it, "
        "pyx12's figures are the same and do not balance either.",
        (
            r"^ST 0001: Ficus dead-letters it \(read whole\): claim 1 .* "
            r"SVC02 24599\.00 - CAS 1579\.00 != SVC03 1766\.50$",
        ),
    ),
    "unbalanced.835": Explained(
        "The fixture is out of balance on purpose (the PLB is not deducted from BPR02): Ficus dead-letters it, "
        "pyx12's figures are the same and do not balance either.",
        (r"^ST 0001: Ficus dead-letters it \(read whole\): BPR02 150\.00 != sum\(CLP04\) 150\.00 - PLB 10\.00$",),
    ),
}


def file_id(path: Path | None) -> str:
    return "no-files" if path is None else path.name


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_ficus_reads_what_pyx12_reads(path: Path) -> None:
    found = differences(path)
    expected = EXPLAINED.get(path.name)
    if expected is None:
        assert found == [], f"{path.name}: unexplained differences"
        return
    assert found, f"{path.name}: no difference any more; drop it from EXPLAINED"
    unmatched = [line for line in found if not any(re.search(p, line) for p in expected.patterns)]
    assert unmatched == [], f"{path.name}: differences EXPLAINED does not cover"
    unused = [p for p in expected.patterns if not any(re.search(p, line) for line in found)]
    assert unused == [], f"{path.name}: EXPLAINED patterns that match no difference"


def test_explanations_name_files_that_exist() -> None:
    names = {p.name for p in FILES}
    listed = set(EXPLAINED) | set(PYX12_ENVELOPE)
    if not CORPUS_PRESENT:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    assert listed - names == set()


def test_the_comparison_sees_a_changed_amount() -> None:
    """The differential itself: a changed CAS amount, CLP04 or line count on one side is each reported."""
    path = REPO / "fixtures" / "x12" / "balanced_2claims_plb.835"
    theirs, ours = pyx12_transactions(path), ficus_transactions(path)
    assert compare(theirs, ours) == []
    assert [len(c.lines) for c in ours[0].claims] == [1, 0] and len(ours[0].claims[1].cas) == 1
    changed = copy.deepcopy(ours[0])
    group, reason, amount = changed.claims[1].cas[0]
    assert isinstance(amount, Decimal)
    changed.claims[1].cas[0] = (group, reason, amount + Decimal("0.01"))
    changed.claims[0].clp = (*changed.claims[0].clp[:3], Decimal("1"), changed.claims[0].clp[4])
    changed.claims[0].lines.append(Line(Decimal(1), Decimal(1)))
    assert compare(theirs, [changed]) == [
        f"ST 0001 claim 1: CLP04 pyx12 {theirs[0].claims[0].clp[3]}, Ficus 1",
        "ST 0001 claim 1: service lines pyx12 1, Ficus 2",
        "ST 0001 claim 2: CAS pyx12 CO-50 100.00, Ficus CO-50 100.01",
    ]
