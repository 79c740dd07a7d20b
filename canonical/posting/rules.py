"""Posting rules: a versioned TOML file and the CSV tables it names.

The file says which canonical event types post what, and where the money lands::

    version = "2026.11-1"          # goes into every entry (rule_version) and its id
    currency = "USD"

    [entities]                     # GL facility -> legal entity
    NORTH = "E100"

    [facility_aliases]             # a facility as events name it (alias, payee NPI) -> GL facility
    "1234567893" = "NORTH"         # "*" = any facility not listed

    [tables]                       # CSV files, relative to this file
    chart_of_accounts = "chart_of_accounts.csv"
    fiscal_calendar = "fiscal_calendar.csv"
    ...

    [[rules]]
    id = "charge-posted"
    type = "org.ficus.revenue.charge.posted.v1"      # or type_prefix = "org.ficus.patient."
    post = "charge"
    debit = "1210"                 # natural accounts from the chart
    credit = "4000"

The tables (UTF-8, a header line, extra columns ignored, blank lines skipped; ``*`` in a key
column is a default, used when nothing more specific matches):

===================== ===================================== ==================================
table                 key columns                           value
===================== ===================================== ==================================
``chart_of_accounts`` account                               name, type, cost_center,
                                                            service_line (yes/no: the account
                                                            takes that segment)
``cost_centers``      facility, department                  cost_center
``service_lines``     code_type (charge/revenue), code      service_line
``bank_accounts``     payee_id, payment_method              account
``payer_ar``          payer (id, ``group:NAME`` or ``*``)   account
``cas_adjustments``   group, reason                         account
``plb_reasons``       reason                                account
``fiscal_calendar``   start, end (ISO dates, inclusive)     period
===================== ===================================== ==================================

:func:`load_rules` reads everything once and lists every problem (file and key or CSV line) in
one :class:`RulesError`, so a rules change is fixed in one round; an account named anywhere
(a rule or a table) must be in the chart of accounts. The engine (:mod:`canonical.posting.engine`)
only reads the loaded :class:`Rules`.
"""

from __future__ import annotations

import csv
import io
import itertools
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

__all__ = [
    "ACCOUNT_TYPES",
    "POST_KINDS",
    "TABLES",
    "Account",
    "Period",
    "PostKind",
    "Rule",
    "Rules",
    "RulesError",
    "check_rules",
    "load_rules",
]

PostKind = Literal[
    "charge",
    "remittance",
    "claim_payment",
    "claim_adjustments",
    "denial",
    "provider_adjustments",
    "supply_usage",
    "labor_time",
    "none",
]
#: What a rule can post, and the tables each kind reads (besides the chart and the calendar).
POST_KINDS: dict[str, tuple[str, ...]] = {
    "charge": ("cost_centers", "service_lines"),
    "remittance": ("bank_accounts",),
    "claim_payment": ("payer_ar",),
    "claim_adjustments": ("cas_adjustments", "payer_ar"),
    "denial": (),
    "provider_adjustments": ("plb_reasons",),
    "supply_usage": ("cost_centers",),
    "labor_time": ("cost_centers",),
    "none": (),
}
#: The keys each kind needs (natural accounts, except ``denials``); the other accounts come from tables.
_RULE_ACCOUNTS: dict[str, tuple[str, ...]] = {
    "charge": ("debit", "credit"),
    "remittance": ("credit",),
    "claim_payment": ("debit",),
    "claim_adjustments": (),
    "denial": ("debit", "credit"),
    "provider_adjustments": ("clearing",),
    "supply_usage": ("debit", "credit"),
    "labor_time": ("debit", "credit"),
    "none": (),
}
_RULE_KEYS = {"id", "type", "type_prefix", "post", "description", "denials", "debit", "credit", "clearing"}
ACCOUNT_TYPES = ("asset", "liability", "equity", "revenue", "contra_revenue", "expense", "memo")
_TOP_KEYS = {"version", "currency", "entities", "facility_aliases", "tables", "rules"}
ANY = "*"


@dataclass(frozen=True, slots=True)
class _TableSpec:
    key: tuple[str, ...]
    values: tuple[str, ...]


#: Table name -> its key columns and value columns.
TABLES: dict[str, _TableSpec] = {
    "chart_of_accounts": _TableSpec(("account",), ("name", "type", "cost_center", "service_line")),
    "cost_centers": _TableSpec(("facility", "department"), ("cost_center",)),
    "service_lines": _TableSpec(("code_type", "code"), ("service_line",)),
    "bank_accounts": _TableSpec(("payee_id", "payment_method"), ("account",)),
    "payer_ar": _TableSpec(("payer",), ("account",)),
    "cas_adjustments": _TableSpec(("group", "reason"), ("account",)),
    "plb_reasons": _TableSpec(("reason",), ("account",)),
    "fiscal_calendar": _TableSpec(("start", "end"), ("period",)),
}
_REQUIRED_TABLES = ("chart_of_accounts", "fiscal_calendar")
#: Table -> the value column naming a natural account (checked against the chart).
_ACCOUNT_COLUMNS = {"bank_accounts", "payer_ar", "cas_adjustments", "plb_reasons"}


class RulesError(ValueError):
    """The rules cannot be used; ``problems`` lists each, naming file and key or CSV line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Account:
    """A row of the chart of accounts."""

    account: str
    name: str
    type: str
    takes_cost_center: bool
    takes_service_line: bool


@dataclass(frozen=True, slots=True)
class Period:
    """A fiscal period: the dates from ``start`` to ``end`` (both included)."""

    start: date
    end: date
    period: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rules]]`` table: which event types it matches and what they post."""

    id: str
    post: PostKind
    type: str | None = None
    type_prefix: str | None = None
    description: str = ""
    denials: Literal["memo", "account"] = "memo"
    debit: str | None = None
    credit: str | None = None
    clearing: str | None = None

    def matches(self, event_type: str) -> bool:
        """Exact type, else the prefix."""
        if self.type is not None:
            return event_type == self.type
        return self.type_prefix is not None and event_type.startswith(self.type_prefix)


@dataclass(frozen=True)
class Rules:
    """A loaded, validated rules file and its tables (immutable; load again to change)."""

    path: Path
    version: str
    currency: str
    entities: Mapping[str, str]
    facility_aliases: Mapping[str, str]
    rules: tuple[Rule, ...]
    accounts: Mapping[str, Account]
    #: table name -> key tuple -> value (one value column: cost_center, service_line, account)
    tables: Mapping[str, Mapping[tuple[str, ...], str]] = field(default_factory=dict)
    calendar: tuple[Period, ...] = ()

    def rule_for(self, event_type: str) -> Rule | None:
        """The rule for a type: an exact ``type`` first, else the longest matching ``type_prefix``."""
        exact = [r for r in self.rules if r.type == event_type]
        if exact:
            return exact[0]
        prefixed = [r for r in self.rules if r.type_prefix is not None and event_type.startswith(r.type_prefix)]
        return max(prefixed, key=lambda r: len(r.type_prefix or ""), default=None)

    def lookup(self, table: str, *key: str) -> str | None:
        """A table's value for ``key``: exact, else with trailing key columns as ``*``, else ``*`` everywhere.

        For a two-column key ``(a, b)`` the order is ``(a, b)``, ``(a, *)``, ``(*, b)``, ``(*, *)``.
        """
        rows = self.tables.get(table, {})
        for candidate in _candidates(key):
            found = rows.get(candidate)
            if found is not None:
                return found
        return None

    def period_of(self, day: date) -> str | None:
        """The fiscal period holding ``day``, or None."""
        for p in self.calendar:
            if p.start <= day <= p.end:
                return p.period
        return None


def _candidates(key: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    if len(key) == 1:
        yield key
        yield (ANY,)
        return
    a, b = key[0], key[1]
    yield (a, b)
    yield (a, ANY)
    yield (ANY, b)
    yield (ANY, ANY)


def check_rules(path: Path) -> list[str]:
    """Every problem of a rules file and its tables (accounts missing from the chart included); [] when fine."""
    try:
        load_rules(path)
    except RulesError as exc:
        return exc.problems
    return []


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file and every table it names; :class:`RulesError` lists all problems."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError([f"{path}: cannot read the rules file: {exc.strerror or exc}"]) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise RulesError([f"{path}: not UTF-8 (byte offset {exc.start})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulesError([f"{path}: not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    where = str(path)
    for key in sorted(set(doc) - _TOP_KEYS):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    version = _string(doc, "version", where, problems)
    currency = _string(doc, "currency", where, problems)
    if currency and (len(currency) != 3 or not currency.isalpha() or not currency.isupper()):
        problems.append(f"{where}: currency {currency!r} is not an ISO 4217 code (e.g. USD)")
    entities = _string_map(doc, "entities", where, problems, required=True)
    aliases = _string_map(doc, "facility_aliases", where, problems, required=False)
    for alias, facility in aliases.items():
        if facility not in entities:
            problems.append(f"{where}: facility_aliases.{alias} = {facility!r} is not in [entities]")
    rules = _rules(doc.get("rules"), where, problems)
    tables, accounts, calendar = _tables(doc.get("tables"), path, rules, problems)
    if accounts is not None:
        _check_accounts(rules, tables, accounts, where, problems)
    if problems:
        raise RulesError(problems)
    return Rules(
        path=path,
        version=version,
        currency=currency,
        entities=entities,
        facility_aliases=aliases,
        rules=tuple(rules),
        accounts=accounts or {},
        tables=tables,
        calendar=calendar,
    )


def _string(doc: Mapping[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {key} must be a non-empty string")
        return ""
    return value.strip()


def _string_map(doc: Mapping[str, Any], key: str, where: str, problems: list[str], *, required: bool) -> dict[str, str]:
    value = doc.get(key)
    if value is None:
        if required:
            problems.append(f"{where}: [{key}] is missing")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: {key} must be a table of strings")
        return {}
    out: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(item, str) or not item.strip():
            problems.append(f"{where}: {key}.{name} must be a non-empty string")
        else:
            out[str(name)] = item.strip()
    if required and not out and not problems:
        problems.append(f"{where}: [{key}] is empty")
    return out


def _rules(value: Any, where: str, problems: list[str]) -> list[Rule]:
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: no [[rules]]")
        return []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    matchers: dict[tuple[str, str], str] = {}
    for n, item in enumerate(value, 1):
        at = f"{where}: rules[{n}]"
        if not isinstance(item, dict):
            problems.append(f"{at}: must be a table")
            continue
        rid = item.get("id")
        if not isinstance(rid, str) or not rid.strip():
            problems.append(f"{at}: id must be a non-empty string")
            continue
        at = f"{where}: rules[{n}] (id {rid})"
        if rid in seen:
            problems.append(f"{at}: id repeated (first rules[{seen[rid]}])")
        seen[rid] = n
        for key in sorted(set(item) - _RULE_KEYS):
            problems.append(f"{at}: unknown key {key!r}")
        etype, prefix = item.get("type"), item.get("type_prefix")
        if (etype is None) == (prefix is None):
            problems.append(f"{at}: give exactly one of type (exact) or type_prefix")
        for key, val in (("type", etype), ("type_prefix", prefix)):
            if val is None:
                continue
            if not isinstance(val, str) or not val.startswith("org.ficus."):
                problems.append(f"{at}: {key} must be a string starting with org.ficus.")
                continue
            other = matchers.get((key, val))
            if other is not None:
                problems.append(f"{at}: {key} {val!r} is already matched by rule {other}")
            matchers[(key, val)] = rid
        post = item.get("post")
        if post not in POST_KINDS:
            problems.append(f"{at}: post must be one of {', '.join(POST_KINDS)}")
            continue
        denials = item.get("denials", "memo")
        if denials not in ("memo", "account"):
            problems.append(f"{at}: denials must be \"memo\" or \"account\"")
            denials = "memo"
        accounts: dict[str, str | None] = {}
        for key in ("debit", "credit", "clearing"):
            val = item.get(key)
            if val is not None and (not isinstance(val, str) or not val.strip()):
                problems.append(f"{at}: {key} must be a natural account (a non-empty string)")
                val = None
            if val is not None and key not in _RULE_ACCOUNTS[post]:
                problems.append(f"{at}: post = {post!r} takes no {key}")
            accounts[key] = val.strip() if isinstance(val, str) else None
        for key in _RULE_ACCOUNTS[post]:
            if accounts.get(key) is None:
                problems.append(f"{at}: post = {post!r} needs {key} (a natural account)")
        description = item.get("description", "")
        if not isinstance(description, str):
            problems.append(f"{at}: description must be a string")
            description = ""
        rules.append(
            Rule(
                id=rid.strip(),
                post=cast(PostKind, post),
                type=etype if isinstance(etype, str) else None,
                type_prefix=prefix if isinstance(prefix, str) else None,
                description=description,
                denials=cast(Literal["memo", "account"], denials),
                debit=accounts["debit"],
                credit=accounts["credit"],
                clearing=accounts["clearing"],
            )
        )
    return rules


def _tables(
    value: Any, path: Path, rules: list[Rule], problems: list[str]
) -> tuple[dict[str, dict[tuple[str, ...], str]], dict[str, Account] | None, tuple[Period, ...]]:
    where = str(path)
    if not isinstance(value, dict):
        problems.append(f"{where}: [tables] is missing (chart_of_accounts and fiscal_calendar at least)")
        return {}, None, ()
    for key in sorted(set(value) - set(TABLES)):
        problems.append(f"{where}: tables.{key}: unknown table (known: {', '.join(TABLES)})")
    needed = set(_REQUIRED_TABLES) | {t for r in rules for t in POST_KINDS[r.post]}
    for name in sorted(needed - set(value)):
        users = sorted(r.id for r in rules if name in POST_KINDS[r.post])
        why = f" (rules {', '.join(users)} read it)" if users else ""
        problems.append(f"{where}: tables.{name} is missing{why}")
    tables: dict[str, dict[tuple[str, ...], str]] = {}
    accounts: dict[str, Account] | None = None
    calendar: tuple[Period, ...] = ()
    for name in TABLES:
        if name not in value:
            continue
        rel = value[name]
        if not isinstance(rel, str) or not rel.strip():
            problems.append(f"{where}: tables.{name} must be a file name")
            continue
        file = (path.parent / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        rows = _read_csv(file, name, problems)
        if rows is None:
            continue
        if name == "chart_of_accounts":
            accounts = _chart(rows, file, problems)
        elif name == "fiscal_calendar":
            calendar = _calendar(rows, file, problems)
        else:
            spec = TABLES[name]
            tables[name] = {key: row[spec.values[0]] for key, (row, _line) in rows.items()}
            for key, (row, line) in rows.items():
                if not row[spec.values[0]]:
                    problems.append(f"{file}: line {line}: empty {spec.values[0]}")
                if name == "service_lines" and key[0] not in ("charge", "revenue", ANY):
                    problems.append(f"{file}: line {line}: code_type must be charge or revenue")
    return tables, accounts, calendar


_Rows = dict[tuple[str, ...], tuple[dict[str, str], int]]


def _read_csv(file: Path, name: str, problems: list[str]) -> _Rows | None:
    """key tuple -> (row, line); problems appended (file and line) and None when unreadable."""
    spec = TABLES[name]
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        problems.append(f"{file}: cannot read {name} table: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.append(f"{file}: not UTF-8 (byte offset {exc.start})")
        return None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        problems.append(f"{file}: empty file, expected a header line")
        return None
    except csv.Error as exc:
        problems.append(f"{file}: line 1: {exc}")
        return None
    missing = [c for c in (*spec.key, *spec.values) if c not in header]
    if missing:
        problems.append(f"{file}: line 1: {name} table is missing column(s) {', '.join(missing)}")
        return None
    rows: _Rows = {}
    line = 1
    try:
        for record in reader:
            line = reader.line_num
            if not any(v.strip() for v in record):
                continue
            if len(record) != len(header):
                problems.append(f"{file}: line {line}: {len(record)} field(s), the header has {len(header)}")
                continue
            row = {h: v.strip() for h, v in zip(header, record, strict=True)}
            key = tuple(row[c] for c in spec.key)
            if not all(key):
                problems.append(f"{file}: line {line}: empty {', '.join(c for c in spec.key if not row[c])}")
                continue
            if key in rows:
                problems.append(f"{file}: line {line}: duplicate {'/'.join(key)} (first on line {rows[key][1]})")
                continue
            rows[key] = (row, line)
    except csv.Error as exc:
        problems.append(f"{file}: line {line + 1}: {exc}")
    return rows


def _yes(value: str) -> bool | None:
    low = value.lower()
    return True if low in ("yes", "y", "true", "1") else False if low in ("no", "n", "false", "0", "") else None


def _chart(rows: _Rows, file: Path, problems: list[str]) -> dict[str, Account]:
    chart: dict[str, Account] = {}
    for (account,), (row, line) in rows.items():
        if row["type"] not in ACCOUNT_TYPES:
            problems.append(f"{file}: line {line}: account {account}: type must be one of {', '.join(ACCOUNT_TYPES)}")
        if not row["name"]:
            problems.append(f"{file}: line {line}: account {account}: empty name")
        cc, sl = _yes(row["cost_center"]), _yes(row["service_line"])
        if cc is None or sl is None:
            problems.append(f"{file}: line {line}: account {account}: cost_center and service_line are yes or no")
        chart[account] = Account(account, row["name"], row["type"], bool(cc), bool(sl))
    if not chart:
        problems.append(f"{file}: the chart of accounts is empty")
    return chart


def _calendar(rows: _Rows, file: Path, problems: list[str]) -> tuple[Period, ...]:
    periods: list[tuple[Period, int]] = []
    for (start, end), (row, line) in rows.items():
        try:
            p = Period(date.fromisoformat(start), date.fromisoformat(end), row["period"])
        except ValueError:
            problems.append(f"{file}: line {line}: start and end must be ISO dates (YYYY-MM-DD)")
            continue
        if p.end < p.start:
            problems.append(f"{file}: line {line}: end {end} is before start {start}")
        if not p.period:
            problems.append(f"{file}: line {line}: empty period")
        periods.append((p, line))
    periods.sort(key=lambda pl: pl[0].start)
    for (a, _), (b, line) in itertools.pairwise(periods):
        if b.start <= a.end:
            problems.append(f"{file}: line {line}: period {b.period} overlaps {a.period}")
    if not periods:
        problems.append(f"{file}: the fiscal calendar is empty")
    return tuple(p for p, _ in periods)


def _check_accounts(
    rules: list[Rule],
    tables: Mapping[str, Mapping[tuple[str, ...], str]],
    accounts: Mapping[str, Account],
    where: str,
    problems: list[str],
) -> None:
    """Every account a rule or a table names is in the chart of accounts."""
    for rule in rules:
        for role in ("debit", "credit", "clearing"):
            account = getattr(rule, role)
            if account is not None and account not in accounts:
                problems.append(f"{where}: rule {rule.id}: {role} {account!r} is not in the chart of accounts")
    for name in sorted(_ACCOUNT_COLUMNS & set(tables)):
        for key, account in tables[name].items():
            if account and account not in accounts:
                problems.append(f"{where}: tables.{name} {'/'.join(key)}: account {account!r} "
                                "is not in the chart of accounts")
