"""Reference data: the small CSV tables that enrich canonical events.

Four tables, each named in the config and keyed by one column:

=============== ============ ===================================================
table           key          columns
=============== ============ ===================================================
``payers``      payer_id     erp_customer_id, payer_group
``charge_codes`` charge_code revenue_code, gl_account, cost_center, service_line
``departments`` department   cost_center
``facilities``  alias        facility
=============== ============ ===================================================

A file is UTF-8 (a byte-order mark is tolerated, as spreadsheets write one), has a
header line, may have extra columns (ignored) and blank lines (skipped). Keys are
compared exactly after trimming spaces: payer ``00430`` is not payer ``430``.

Loading reports every problem of a file at once (:class:`ReferenceError`), each
naming file and line, so an operator fixes a table in one round. A lookup that
finds nothing raises :class:`UnmappedError`, a :class:`TranslationError`, so the
router dead-letters the unit with the business context like any other.

:class:`ReferenceStore` re-reads a table when its file changes and keeps the last
good table when the new file is invalid. Nothing here imports the router.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from canonical.errors import TranslationError
from canonical.safe_text import bounded_id

__all__ = [
    "SPECS",
    "ChargeRef",
    "DepartmentRef",
    "FacilityRef",
    "PayerRef",
    "ReferenceData",
    "ReferenceDataError",
    "ReferenceError",
    "ReferenceStore",
    "ReferenceTable",
    "TableSpec",
    "UnmappedError",
    "load_table",
    "validate_tables",
]

# Files whose mtime is this close to the moment they were read may change again within
# the same mtime tick with the same size; they are re-hashed on the next check ("racy
# clean" in git's terms), which stays cheap because it only lasts a couple of seconds.
_RACY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A table's name, its key column and every column it must have (key included)."""

    name: str
    key: str
    columns: tuple[str, ...]


#: The tables Ficus knows, by the name used in the config.
SPECS: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("payers", "payer_id", ("payer_id", "erp_customer_id", "payer_group")),
        TableSpec(
            "charge_codes",
            "charge_code",
            ("charge_code", "revenue_code", "gl_account", "cost_center", "service_line"),
        ),
        TableSpec("departments", "department", ("department", "cost_center")),
        TableSpec("facilities", "alias", ("alias", "facility")),
    )
}


class ReferenceDataError(ValueError):
    """One or more reference tables are invalid; ``problems`` lists each, with file and line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


#: The name this error is documented under. It shadows the builtin ``ReferenceError``
#: (weak references) only where imported by name, so prefer ``ReferenceDataError``.
ReferenceError = ReferenceDataError


class UnmappedError(TranslationError):
    """A code is absent from its reference table; ``table`` and ``key`` say which."""

    def __init__(
        self,
        table: str,
        key: str,
        *,
        control_id: str = "",
        facility: str | None = None,
        amount: Decimal | None = None,
    ) -> None:
        # The key is a value the sender controls: it stays on the error (``key``) for code
        # that needs it, and out of the reason (logs, ACKs, dead letters, the dashboard).
        super().__init__(
            f"unmapped {_NOUNS.get(table, table)}: not in reference table {table}",
            control_id=control_id,
            facility=facility,
            amount=amount,
        )
        self.table = table
        self.key = key


_NOUNS = {"payers": "payer", "charge_codes": "charge code", "departments": "department", "facilities": "facility"}


@dataclass(frozen=True, slots=True)
class PayerRef:
    """A payer as the ERP knows it."""

    payer_id: str
    erp_customer_id: str
    payer_group: str


@dataclass(frozen=True, slots=True)
class ChargeRef:
    """Where a charge code lands in the general ledger."""

    charge_code: str
    revenue_code: str
    gl_account: str
    cost_center: str
    service_line: str


@dataclass(frozen=True, slots=True)
class DepartmentRef:
    """The cost center of a department."""

    department: str
    cost_center: str


@dataclass(frozen=True, slots=True)
class FacilityRef:
    """A facility alias resolved to the canonical facility name."""

    alias: str
    facility: str


@dataclass(frozen=True)
class ReferenceTable:
    """A loaded table: key -> row (column -> trimmed value), from one file."""

    spec: TableSpec
    path: Path
    rows: Mapping[str, Mapping[str, str]]

    def get(self, key: str) -> Mapping[str, str] | None:
        """The row for ``key`` (trimmed), or None."""
        return self.rows.get(key.strip())

    def __len__(self) -> int:
        return len(self.rows)


def load_table(path: Path, spec: TableSpec) -> ReferenceTable:
    """Read and check one CSV file; :class:`ReferenceError` lists every problem found."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReferenceDataError([f"{path}: cannot read {spec.name} table: {exc.strerror or exc}"]) from exc
    return _parse(raw, path, spec)


def _parse(raw: bytes, path: Path, spec: TableSpec) -> ReferenceTable:
    try:
        # utf-8-sig drops a leading byte-order mark and is plain UTF-8 otherwise.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ReferenceDataError([f"{path}: line {line}: not UTF-8 (byte offset {exc.start})"]) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ReferenceDataError([f"{path}: empty file, expected a header line"]) from None
    except csv.Error as exc:
        raise ReferenceDataError([f"{path}: line 1: {exc}"]) from exc
    problems = _header_problems(path, spec, header)
    if problems:
        raise ReferenceDataError(problems)
    rows, problems = _read_rows(reader, path, spec, header)
    if problems:
        raise ReferenceDataError(problems)
    return ReferenceTable(spec, path, rows)


def _header_problems(path: Path, spec: TableSpec, header: list[str]) -> list[str]:
    problems = []
    missing = [column for column in spec.columns if column not in header]
    if missing:
        problems.append(f"{path}: line 1: {spec.name} table is missing column(s) {', '.join(missing)}")
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        problems.append(f"{path}: line 1: repeated column(s) {', '.join(repeated)}")
    return problems


def _read_rows(
    reader: _CsvReader, path: Path, spec: TableSpec, header: list[str]
) -> tuple[dict[str, dict[str, str]], list[str]]:
    rows: dict[str, dict[str, str]] = {}
    first_seen: dict[str, int] = {}
    problems: list[str] = []
    line = 1
    try:
        for record in reader:
            # line_num counts physical lines, so a quoted newline keeps numbers true to the file.
            line = reader.line_num
            if not any(value.strip() for value in record):
                continue
            if len(record) != len(header):
                problems.append(f"{path}: line {line}: {len(record)} field(s), the header has {len(header)}")
                continue
            row = {name: value.strip() for name, value in zip(header, record, strict=True) if name in spec.columns}
            key = row[spec.key]
            if not key:
                problems.append(f"{path}: line {line}: empty {spec.key}")
            elif key in first_seen:
                problems.append(
                    f"{path}: line {line}: duplicate {spec.key} {bounded_id(key, 32)} (first on line {first_seen[key]})"
                )
            else:
                first_seen[key] = line
                rows[key] = row
    except csv.Error as exc:
        problems.append(f"{path}: line {line + 1}: {exc}")
    return rows, problems


class _CsvReader(Protocol):
    """What ``_read_rows`` needs of a csv reader: rows and the physical line number."""

    @property
    def line_num(self) -> int: ...

    def __iter__(self) -> Iterator[list[str]]: ...


@dataclass(frozen=True)
class ReferenceData:
    """An immutable snapshot of the tables; the lookups the mappings and the router use.

    A table not configured behaves as an empty one: every lookup in it is unmapped.
    ``facility`` and ``amount`` (and ``control_id``) are only carried into the
    :class:`UnmappedError`, for the dead-letter queue.
    """

    tables: Mapping[str, ReferenceTable] = field(default_factory=dict)

    def lookup_payer(
        self, payer_id: str, *, control_id: str = "", facility: str | None = None, amount: Decimal | None = None
    ) -> PayerRef:
        """The ERP customer and payer group of a payer id (e.g. ``87726``)."""
        row = self._row("payers", payer_id, control_id, facility, amount)
        return PayerRef(row["payer_id"], row["erp_customer_id"], row["payer_group"])

    def lookup_charge(
        self, code: str, *, control_id: str = "", facility: str | None = None, amount: Decimal | None = None
    ) -> ChargeRef:
        """Revenue code, GL account, cost center and service line of a charge code."""
        row = self._row("charge_codes", code, control_id, facility, amount)
        return ChargeRef(
            row["charge_code"], row["revenue_code"], row["gl_account"], row["cost_center"], row["service_line"]
        )

    def lookup_department(
        self, department: str, *, control_id: str = "", facility: str | None = None, amount: Decimal | None = None
    ) -> DepartmentRef:
        """The cost center of a department code (e.g. ``LAB``)."""
        row = self._row("departments", department, control_id, facility, amount)
        return DepartmentRef(row["department"], row["cost_center"])

    def facility(self, alias: str, *, control_id: str = "", amount: Decimal | None = None) -> FacilityRef:
        """The canonical facility for an alias; a canonical name is accepted as its own alias."""
        table = self.tables.get("facilities")
        if table is not None:
            row = table.get(alias)
            if row is not None:
                return FacilityRef(row["alias"], row["facility"])
            wanted = alias.strip()
            # A sender already using the canonical name needs no alias line of its own.
            if any(r["facility"] == wanted for r in table.rows.values()):
                return FacilityRef(wanted, wanted)
        raise UnmappedError("facilities", alias.strip(), control_id=control_id, facility=alias, amount=amount)

    def _row(
        self, table_name: str, key: str, control_id: str, facility: str | None, amount: Decimal | None
    ) -> Mapping[str, str]:
        table = self.tables.get(table_name)
        row = table.get(key) if table is not None else None
        if row is None:
            raise UnmappedError(table_name, key.strip(), control_id=control_id, facility=facility, amount=amount)
        return row


@dataclass(frozen=True, slots=True)
class _Signature:
    """What identifies a file's content cheaply (stat) and surely (sha256)."""

    mtime_ns: int
    size: int
    sha256: str


@dataclass
class _Watched:
    path: Path
    spec: TableSpec
    signature: _Signature | None = None
    #: When the file was last hashed (wall clock), to detect racy same-tick rewrites.
    checked_at: float = 0.0
    #: The signature of a bad file already reported, so it is reported once, not every poll.
    rejected: _Signature | None = None


class ReferenceStore:
    """Tables loaded from their files, re-read when a file changes.

    Construction loads every table and raises :class:`ReferenceError` with all
    problems of all files. Afterwards, :meth:`maybe_reload` (cheap: one ``stat`` per
    file when nothing changed) swaps in a changed table, or keeps the old one and
    returns the problems when the new file is invalid. :attr:`data` is an immutable
    snapshot: take it once per unit so one message sees one version of the tables.
    """

    def __init__(self, paths: Mapping[str, Path], specs: Mapping[str, TableSpec] = SPECS) -> None:
        problems = [
            f"unknown reference table {name!r} (known: {', '.join(sorted(specs))})"
            for name in paths
            if name not in specs
        ]
        self._watched = {name: _Watched(Path(path), specs[name]) for name, path in paths.items() if name in specs}
        tables: dict[str, ReferenceTable] = {}
        for name, watched in self._watched.items():
            try:
                tables[name] = self._load(watched)
            except ReferenceDataError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ReferenceDataError(problems)
        self._data = ReferenceData(tables)

    @property
    def data(self) -> ReferenceData:
        """The current tables."""
        return self._data

    def maybe_reload(self) -> list[str]:
        """Re-read the tables whose file changed; the problems of files that were rejected.

        A rejected file leaves its previous table in use; each distinct bad version
        is reported once. An unchanged file costs one ``stat``.
        """
        problems: list[str] = []
        tables = dict(self._data.tables)
        changed = False
        for name, watched in self._watched.items():
            try:
                table = self._reload_if_changed(watched)
            except ReferenceDataError as exc:
                problems.extend(f"{p} (keeping the previous {name} table)" for p in exc.problems)
                continue
            if table is not None:
                tables[name] = table
                changed = True
        if changed:
            # One swap of an immutable snapshot: readers never see half a reload.
            self._data = ReferenceData(tables)
        return problems

    def _reload_if_changed(self, watched: _Watched) -> ReferenceTable | None:
        try:
            stat = os.stat(watched.path)
        except OSError as exc:
            return self._reject(watched, _Signature(-1, -1, ""), [f"{watched.path}: cannot read: {exc.strerror}"])
        old = watched.signature
        racy = stat.st_mtime_ns / 1e9 >= watched.checked_at - _RACY_SECONDS
        if old is not None and (stat.st_mtime_ns, stat.st_size) == (old.mtime_ns, old.size) and not racy:
            return None
        return self._load_if_new(watched)

    def _load_if_new(self, watched: _Watched) -> ReferenceTable | None:
        checked_at = time.time()
        try:
            raw = watched.path.read_bytes()
            stat = os.stat(watched.path)
        except OSError as exc:
            return self._reject(watched, _Signature(-1, -1, ""), [f"{watched.path}: cannot read: {exc.strerror}"])
        signature = _Signature(stat.st_mtime_ns, stat.st_size, hashlib.sha256(raw).hexdigest())
        old = watched.signature
        if old is not None and old.sha256 == signature.sha256:
            # Touched or rewritten with the same bytes: nothing to swap.
            watched.signature, watched.checked_at = signature, checked_at
            return None
        if signature == watched.rejected:
            return None
        try:
            table = _parse(raw, watched.path, watched.spec)
        except ReferenceDataError as exc:
            return self._reject(watched, signature, exc.problems)
        watched.signature, watched.checked_at, watched.rejected = signature, checked_at, None
        return table

    @staticmethod
    def _reject(watched: _Watched, signature: _Signature, problems: list[str]) -> None:
        if signature == watched.rejected:
            return None
        watched.rejected = signature
        raise ReferenceDataError(problems)

    def _load(self, watched: _Watched) -> ReferenceTable:
        try:
            raw = watched.path.read_bytes()
            stat = os.stat(watched.path)
        except OSError as exc:
            raise ReferenceDataError(
                [f"{watched.path}: cannot read {watched.spec.name} table: {exc.strerror}"]
            ) from exc
        table = _parse(raw, watched.path, watched.spec)
        watched.signature = _Signature(stat.st_mtime_ns, stat.st_size, hashlib.sha256(raw).hexdigest())
        watched.checked_at = time.time()
        return table


def validate_tables(paths: Mapping[str, Path], specs: Mapping[str, TableSpec] = SPECS) -> list[str]:
    """Every problem of the configured tables (unknown names, unreadable or invalid files); [] when fine.

    For ``ficus check``: nothing is kept, nothing raised.
    """
    problems = [
        f"unknown reference table {name!r} (known: {', '.join(sorted(specs))})" for name in paths if name not in specs
    ]
    for name, path in paths.items():
        if name in specs:
            try:
                load_table(Path(path), specs[name])
            except ReferenceDataError as exc:
                problems.extend(exc.problems)
    return problems
