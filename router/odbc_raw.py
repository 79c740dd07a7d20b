"""The raw archive of an `odbc` interface: its rows as JSON chunks, and reading them back.

A batch's rows are stored in ``raw.<interface>`` as chunks that fit the NATS payload limit::

    {"interface": ..., "table": ..., "key_column": ..., "first_key": 1, "last_key": 250,
     "types": {"unit_cost": "decimal", "used_at": "datetime"}, "rows": [{...}, ...]}

under a Msg-Id from interface, table and the chunk's first and last key. Values JSON has no
type for (decimals, dates, times, bytes, UUIDs) are written as ``str()`` writes them, and
``types`` names each such column, so replay (:func:`read_chunk`) hands the mapping the values
the driver gave: ``Decimal('1.0E-7')`` is a number again, not the text "1.0E-7" a decimal
field refuses; a timestamp read into a string field keeps its ``T``. Chunks stored before
``types`` existed are read with such values as text (see :func:`read_chunk`).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as clock
from decimal import Decimal

from router import names
from router.store import Outgoing
from wrappers.watermark import Key, normalise_key

Row = dict[str, object]

_TYPE_NAMES: dict[type, str] = {
    Decimal: "decimal", datetime: "datetime", date: "date", clock: "time", bytes: "bytes", uuid.UUID: "uuid",
}


def _bytes(text: str) -> bytes:
    value = ast.literal_eval(text)  # str(b"...") is a bytes literal; literal_eval runs nothing
    if not isinstance(value, bytes):
        raise ValueError("not a bytes literal")
    return value


_DECODERS: dict[str, Callable[[str], object]] = {
    # Each the exact inverse of str() for its type (Decimal's keeps exponent and trailing zeros).
    "decimal": Decimal, "datetime": datetime.fromisoformat, "date": date.fromisoformat,
    "time": clock.fromisoformat, "bytes": _bytes, "uuid": uuid.UUID,
}


def column_types(rows: Sequence[Mapping[str, object]]) -> dict[str, str]:
    """The columns whose values are written as text, by type name. A column whose values are
    of more than one type (a variant column) is left out: read back as text."""
    seen: dict[str, type] = {}
    mixed: set[str] = set()
    for row in rows:
        for column, value in row.items():
            if value is not None and seen.setdefault(column, value.__class__) is not value.__class__:
                mixed.add(column)
    return {c: _TYPE_NAMES[cls] for c, cls in seen.items() if cls in _TYPE_NAMES and c not in mixed}


_ROW_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
"""What ``json.dumps(row, default=str, separators=...)`` does, without a new encoder per row."""


def raw_chunks(interface: str, table: str, key_column: str, rows: Sequence[Row], keys: Sequence[Key],
               limit: int) -> tuple[list[tuple[int, int]], list[Outgoing]]:
    """The rows as chunks of at most about ``limit`` bytes: the [start, end) row range of each,
    and its message (CPU work: called in a worker thread)."""
    types = json.dumps(column_types(rows), separators=(",", ":")).encode()
    limit -= len(types)
    encode = _ROW_ENCODER.encode
    # Likely to fit in one chunk (judged by the first row, so that rows too big for one are not
    # encoded twice): one encoder call for the whole batch, the bytes of ``b"[" + b",".join(encoded)
    # + b"]"`` below -- when it fits, the one chunk the loop would make, for ~0.8 us a row less.
    if rows and (len(encode(rows[0])) + 1) * len(rows) <= limit:
        whole = encode(list(rows)).encode()
        if len(whole) - 1 <= limit or len(rows) == 1:
            return [(0, len(rows))], [_chunk(interface, table, key_column, keys[0], keys[-1], types, whole)]
    encoded = [encode(row).encode() for row in rows]
    chunks: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, row in enumerate(encoded):
        if i > start and size + len(row) + 1 > limit:
            chunks.append((start, i))
            start, size = i, 0
        size += len(row) + 1
    chunks.append((start, len(encoded)))
    items = [_chunk(interface, table, key_column, keys[a], keys[b - 1], types, b"[" + b",".join(encoded[a:b]) + b"]")
             for a, b in chunks]
    return chunks, items


def _chunk(interface: str, table: str, key_column: str, first: Key, last: Key, types: bytes,
           rows: bytes) -> Outgoing:
    """The message of one chunk: ``rows`` its rows' JSON array."""
    head = json.dumps({"interface": interface, "table": table, "key_column": key_column,
                       "first_key": first, "last_key": last}, separators=(",", ":")).encode()
    payload = head[:-1] + b',"types":' + types + b',"rows":' + rows + b"}"
    raw_id = digest("raw", interface, table, str(first), str(last))
    return Outgoing(names.raw_subject(interface), payload, raw_id, {names.HDR_INTERFACE: interface})


@dataclass
class Chunk:
    """One stored chunk read back: its rows as the driver gave them, and each row's key."""

    table: str
    key_column: str
    rows: list[Row]
    keys: list[Key]


def read_chunk(data: bytes) -> Chunk:
    """A stored chunk; raises ValueError (or KeyError, TypeError) when it is not one.

    Without ``types`` (chunks stored before it) decimals, dates and times stay text. The
    mapping reads most of them as the originals: a decimal field ``"3.50"``, a date-time
    field ``"2024-05-01 10:00:00"``, a date field ``"2024-05-01"``. Not: a decimal ``str()``
    wrote with an exponent (``1.0E-7``, refused), an integral ``NUMERIC`` such as ``2.00`` in
    an integer field (refused), a timestamp in a date field (refused) or a string field
    (``' '`` for ``'T'``), a date or date-time field with a ``format``, bytes, times and UUIDs
    (accepted as text where the live path refused them).
    """
    doc = json.loads(data)
    rows: list[Row] = doc["rows"]
    decoders = [(column, _DECODERS[name]) for column, name in (doc.get("types") or {}).items()
                if name in _DECODERS]
    for row in rows:
        for column, decode in decoders:
            value = row.get(column)
            if isinstance(value, str):
                with contextlib.suppress(ValueError, ArithmeticError, SyntaxError):  # else kept as text
                    row[column] = decode(value)
    column = str(doc["key_column"]).lower()  # the poller's column names are lowercased
    keys = [normalise_key(row[column]) for row in rows]
    if isinstance(doc["first_key"], int) and keys and isinstance(keys[0], str):
        # An integral NUMERIC key in a chunk without types: the checkpoint's int, as live.
        keys = [normalise_key(Decimal(str(key))) for key in keys]
    return Chunk(str(doc["table"]), str(doc["key_column"]), rows, keys)


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
