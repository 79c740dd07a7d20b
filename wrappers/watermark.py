"""Watermark logic for database polling: the checkpoint, the SQL around the user's query,
and the safety lag for incrementing keys. Pure functions and one small class, no I/O.

The query contract. The configured query is any SELECT (joins, aliases, filters; no
ORDER BY, no LIMIT/TOP) whose output columns include the key column and, in
``timestamp+key`` mode, the timestamp column. Ficus never edits it: it wraps it as a
derived table and puts the watermark predicate, the order and the row limit outside::

    SELECT * FROM (<query>) ficus_src
    WHERE <key> > ?                                              -- incrementing
    WHERE <ts> >= ? AND (<ts> > ? OR <key> > ?) AND <ts> <= ?   -- timestamp+key
    ORDER BY <key>  |  ORDER BY <ts>, <key>
    OFFSET 0 ROWS FETCH NEXT <batch_size> ROWS ONLY             -- SQL:2008, optional

Watermark values are always ``?`` parameters; column names are checked to be plain
identifiers and written unquoted. ``OFFSET ... FETCH`` is standard SQL accepted by
PostgreSQL, SQL Server 2012+, Oracle 12c+, DB2 and MariaDB 10.6+ (not MySQL): it keeps
the server from producing the whole backlog when only one batch is read. Where it is
not accepted, ``limit_clause="none"`` relies on ``fetchmany`` alone (see odbc_poller).
The planners of PostgreSQL, MariaDB and SQL Server push the outer predicate into a
simple derived table, so an index on the key (or on ts, key) is used.

Safety lag for incrementing keys. A key allocated by an earlier transaction can commit
after a later one; a poller that had moved past it would skip it forever (the
kafka-connect-jdbc bug). Rule: a row is emitted only when its key is the integer right
after the previous emitted key, or when the row has been visible to the poller for at
least ``safety_lag`` seconds. A gap in the sequence therefore holds back the rows after
it until they are that old: a late commit landing in the gap inside that time is
emitted in order; a gap still open after the lag is accepted as a genuine hole
(rollback, sequence cache, identity jump) and passed. Limits: a transaction that stays
open longer than the lag still loses its row; every genuine hole costs up to one lag of
latency; non-integer keys are never "adjacent", so every such row waits out the lag.
First-seen times are kept in memory only (monotonic clock): a restart forgets them and
waits again, which delays but never skips.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

Mode = Literal["incrementing", "timestamp+key"]
LimitClause = Literal["offset-fetch", "none"]
Key = int | str

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where reading resumes: the last emitted key and, in timestamp mode, its timestamp.

    ``Checkpoint()`` means "from the beginning". The poller never stores it; whoever
    stores the batch's events stores ``Batch.checkpoint_after`` afterwards.
    """

    last_key: Key | None = None
    last_ts: str | None = None
    """ISO 8601 text of the last emitted row's timestamp (``datetime.isoformat``)."""

    def to_json(self) -> str:
        """Compact JSON text, stable across versions (two fields)."""
        return json.dumps({"last_key": self.last_key, "last_ts": self.last_ts}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        """Parse :meth:`to_json` output; ValueError on anything else."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("checkpoint JSON must be an object")
        key, ts = data.get("last_key"), data.get("last_ts")
        if key is not None and (isinstance(key, bool) or not isinstance(key, int | str)):
            raise ValueError("checkpoint last_key must be an integer, a string or null")
        if ts is not None:
            if not isinstance(ts, str):
                raise ValueError("checkpoint last_ts must be an ISO string or null")
            datetime.fromisoformat(ts)  # reject text the query could not use
        return cls(last_key=key, last_ts=ts)


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier (written unquoted), else ValueError."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"column name {name!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def normalise_key(value: object) -> Key:
    """A key value as stored in a checkpoint: int (also from an integral Decimal) or str."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a usable key")
    if isinstance(value, int | str):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    raise TypeError(f"key values of type {type(value).__name__} are not supported (integer or string)")


def timestamp_text(value: object) -> str:
    """A timestamp value as stored in a checkpoint (ISO text); TypeError for non-dates."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"timestamp values of type {type(value).__name__} are not supported (date or datetime)")


def wrap(query: str) -> str:
    """The user's query as a derived table (trailing semicolons and blanks removed)."""
    return f"SELECT * FROM ({query.strip().rstrip(';').strip()}) ficus_src"


def probe_sql(query: str) -> str:
    """A statement returning no rows but the query's output columns."""
    return f"{wrap(query)} WHERE 1 = 0"


def select_incrementing(
    query: str, key: str, checkpoint: Checkpoint, limit: int, limit_clause: LimitClause
) -> tuple[str, list[object]]:
    """SQL and parameters for the rows after ``checkpoint.last_key``, by key."""
    params: list[object] = []
    where = ""
    if checkpoint.last_key is not None:
        where, params = f" WHERE {key} > ?", [checkpoint.last_key]
    return f"{wrap(query)}{where} ORDER BY {key}{_limit(limit, limit_clause)}", params


def select_timestamp(
    query: str,
    key: str,
    ts: str,
    checkpoint: Checkpoint,
    upper: datetime,
    limit: int,
    limit_clause: LimitClause,
    ts_as_text: bool = False,
) -> tuple[str, list[object]]:
    """SQL and parameters for rows after (last_ts, last_key) with ts <= ``upper``.

    ``ts >= ?`` comes first so that an index on ts starts its range at the watermark;
    the OR then drops the rows of the last timestamp already emitted. ``ts_as_text``
    binds timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff`` text, for drivers that drop the
    fraction of datetime parameters (MariaDB Connector/ODBC 3.1 does).
    """
    params: list[object] = []
    where = f"{ts} <= ?"
    if checkpoint.last_ts is not None:
        last_ts: object = _bindable(datetime.fromisoformat(checkpoint.last_ts), ts_as_text)
        if checkpoint.last_key is None:
            where = f"{ts} > ? AND {where}"
            params = [last_ts]
        else:
            where = f"{ts} >= ? AND ({ts} > ? OR {key} > ?) AND {where}"
            params = [last_ts, last_ts, checkpoint.last_key]
    params.append(_bindable(upper, ts_as_text))
    return f"{wrap(query)} WHERE {where} ORDER BY {ts}, {key}{_limit(limit, limit_clause)}", params


def _bindable(value: datetime, as_text: bool) -> object:
    return value.isoformat(sep=" ", timespec="microseconds") if as_text else value


def repeats_checkpoint(key: Key, ts: object, checkpoint: Checkpoint) -> bool:
    """True when a row read back is at or before ``checkpoint``: a watermark parameter
    lost precision on its way to the server, and reading would go round in circles.

    ``ts`` is None in incrementing mode. Only what Python can compare is checked
    (string keys by equality only, since collations differ).
    """
    if ts is None:
        return _key_not_after(key, checkpoint.last_key)
    if checkpoint.last_ts is None or not isinstance(ts, datetime):
        return False
    last_ts = datetime.fromisoformat(checkpoint.last_ts)
    if (ts.tzinfo is None) != (last_ts.tzinfo is None):
        return False
    return ts < last_ts or (ts == last_ts and _key_not_after(key, checkpoint.last_key))


def _key_not_after(key: Key, last_key: Key | None) -> bool:
    if isinstance(key, int) and isinstance(last_key, int):
        return key <= last_key
    return last_key is not None and key == last_key


def _limit(limit: int, limit_clause: LimitClause) -> str:
    # An int from validated settings, not user data: written inline so that every
    # driver accepts it (a parameter there is not portable).
    return f" OFFSET 0 ROWS FETCH NEXT {int(limit)} ROWS ONLY" if limit_clause == "offset-fetch" else ""


def _adjacent(previous: Key | None, key: Key) -> bool:
    return isinstance(previous, int) and isinstance(key, int) and key == previous + 1


class GapTracker:
    """Decides how many leading rows of an ordered read may be emitted (the safety lag).

    Remembers when each key of the current read window was first seen; entries for keys
    that left the window are forgotten, so memory is bounded by the batch size.
    """

    def __init__(self) -> None:
        self._first_seen: dict[Key, float] = {}

    def admit(self, keys: Sequence[Key], last_key: Key | None, now: float, lag: float) -> int:
        """Count of leading ``keys`` (ascending, all after ``last_key``) safe to emit at ``now``."""
        seen = {key: self._first_seen.get(key, now) for key in keys}
        self._first_seen = seen
        previous, count = last_key, 0
        for key in keys:
            if not (_adjacent(previous, key) or now - seen[key] >= lag):
                break
            previous, count = key, count + 1
        return count

    @property
    def held(self) -> int:
        """Keys seen but not yet emittable or not yet emitted (for diagnostics)."""
        return len(self._first_seen)
