"""The lazy HL7 v2 message model: segments split once, fields split on first read.

Field numbering follows HL7: in MSH (and BHS/FHS) field 1 is the field separator
itself and field 2 the encoding characters, so ``get("MSH", 9)`` is MSH-9. Values
are split first and unescaped last (an escape sequence never holds a delimiter).
Plain ``str.find``/``str.split`` throughout: this runs on the ACK path.
"""

from __future__ import annotations

from canonical.errors import NotHl7Error
from canonical.hl7v2.escapes import Delimiters, delimiters_for, unescape

__all__ = ["Hl7Message", "Segment", "first_leaf", "nth"]

_LEADING_TEXT = "\ufeff \t\r\n\x0b\x0c"
# Segments whose field 1 is the field separator and field 2 the encoding characters.
_HEADER_SEGMENTS = frozenset(("MSH", "BHS", "FHS"))


def first_leaf(value: str, d: Delimiters, hex_codec: str = "latin-1") -> str:
    """First repetition, first component, first subcomponent, unescaped."""
    if not value:
        return value
    cut = value.find(d.repetition)
    if cut >= 0:
        value = value[:cut]
    cut = value.find(d.component)
    if cut >= 0:
        value = value[:cut]
    cut = value.find(d.subcomponent)
    if cut >= 0:
        value = value[:cut]
    return unescape(value, d, hex_codec) if d.escape in value else value


def nth(value: str, sep: str, n: int) -> str:
    """The ``n``-th (1-based) piece of ``value`` split on ``sep``; "" when absent."""
    if n == 1:
        cut = value.find(sep)
        return value if cut < 0 else value[:cut]
    parts = value.split(sep)
    return parts[n - 1] if 0 < n <= len(parts) else ""


def _name(line: str, fs: str) -> str:
    # A segment's name is the text before its first field separator (as in hl7):
    # a damaged line gets a name that never passes for a real segment.
    cut = line.find(fs)
    return line if cut < 0 else line[:cut]


class Segment:
    """One segment; its fields are split on first access."""

    __slots__ = ("_cuts", "_d", "_esc", "_fields", "_hex", "_shift", "name", "text")

    def __init__(self, text: str, delimiters: Delimiters, hex_codec: str = "latin-1", name: str = "") -> None:
        self.name = name or _name(text, delimiters.field)
        self.text = text
        self._d = delimiters
        self._hex = hex_codec
        self._fields: list[str] | None = None
        self._cuts: tuple[str, ...] = ()
        self._esc = True
        # In MSH the field separator itself is field 1, so split() results shift by one.
        self._shift = 1 if self.name in _HEADER_SEGMENTS else 0

    def _split(self) -> list[str]:
        d = self._d
        fields = self._fields = self.text.split(d.field)
        text = self.text
        if self._shift:  # MSH-2 holds every delimiter, so presence tells nothing
            self._cuts = (d.repetition, d.component, d.subcomponent)
        else:
            # Separators absent from the whole segment need never be searched for.
            cuts: tuple[str, ...] = (d.component,) if d.component in text else ()
            if d.subcomponent in text:
                cuts += (d.subcomponent,)
            if d.repetition in text:
                cuts += (d.repetition,)
            self._cuts = cuts
            self._esc = d.escape in text
        return fields

    def field(self, n: int) -> str:
        """Field ``n`` as sent (escapes not decoded); field 0 is the segment name."""
        if self._shift and n > 0:
            if n == 1:
                return self._d.field
            n -= 1
        fields = self._fields or self._split()
        return fields[n] if 0 <= n < len(fields) else ""

    def get(self, field: int, repetition: int = 1, component: int = 1, subcomponent: int = 1) -> str:
        """One leaf value with escapes decoded; "" when absent (1-based positions)."""
        # The hottest function on the ACK path, hence inlined rather than factored.
        if self._shift:
            if field < 3:  # MSH-1/MSH-2 are delimiters: one value, never split
                whole = repetition == 1 and component == 1 and subcomponent == 1
                return self.field(field) if whole else ""
            field -= 1
        fields = self._fields or self._split()
        if not 0 < field < len(fields):
            return ""
        value = fields[field]
        if not value:
            return value
        if repetition == 1 and component == 1 and subcomponent == 1:
            # The first leaf is the prefix up to the first separator of any level.
            for sep in self._cuts:
                cut = value.find(sep)
                if cut >= 0:
                    value = value[:cut]
        else:
            d = self._d
            value = nth(value, d.repetition, repetition)
            value = nth(value, d.component, component) if value else value
            value = nth(value, d.subcomponent, subcomponent) if value else value
        if self._esc and self._d.escape in value:
            value = unescape(value, self._d, self._hex)
        return value

    def leaf(self, field: int) -> str | None:
        """The first leaf of field ``field`` (>= 1), stripped of blanks; None when
        empty or ``""``. What mappings read most: :meth:`get` and clean-up fused."""
        if self._shift:
            if field < 3:
                return self.field(field) or None
            field -= 1
        fields = self._fields or self._split()
        try:
            value = fields[field]
        except IndexError:
            return None
        if not value:
            return None
        for sep in self._cuts:
            cut = value.find(sep)
            if cut >= 0:
                value = value[:cut]
        if self._esc and self._d.escape in value:
            value = unescape(value, self._d, self._hex)
        value = value.strip()
        return value if value and value != '""' else None

    def leaves(self, fields: tuple[int, ...]) -> list[str | None]:
        """:meth:`leaf` of each field in ``fields`` (>= 1, not MSH-1/MSH-2), in that order.

        For mappings that read many fields of one segment (FT1): one call instead of a
        method call per field, which was most of the cost of reading a field.
        """
        if self._shift or not fields:
            return [self.leaf(n) for n in fields]
        values = self._fields or self._split()
        count = len(values)
        cuts = self._cuts
        esc = self._d.escape if self._esc else None
        if esc is None and len(cuts) <= 1 and max(fields) < count:
            # The usual segment (components only, no escapes): one C call per field.
            sep = cuts[0] if cuts else self._d.field  # the field separator never occurs in a field
            return [None if not (v := values[n].partition(sep)[0].strip()) or v == '""' else v for n in fields]
        out: list[str | None] = []
        for n in fields:
            value = values[n] if n < count else ""
            if value:
                for sep in cuts:
                    cut = value.find(sep)
                    if cut >= 0:
                        value = value[:cut]
                if esc is not None and esc in value:
                    value = unescape(value, self._d, self._hex)
                value = value.strip()
                if value == '""':
                    value = ""
            out.append(value or None)
        return out

    def component_leaf(self, field: int, component: int) -> str | None:
        """:meth:`get` of (field, first repetition, ``component``, first subcomponent) stripped of
        blanks; None when empty or ``""``. A site map's component path in one call."""
        if self._shift:
            if field < 3:  # MSH-1/MSH-2 are delimiters: no components
                return None
            field -= 1
        fields = self._fields or self._split()
        value = fields[field] if 0 < field < len(fields) else ""
        if not value:
            return None
        d = self._d
        cut = value.find(d.repetition)
        if cut >= 0:
            value = value[:cut]
        parts = value.split(d.component, component)
        if len(parts) < component:
            return None
        value = parts[component - 1]
        cut = value.find(d.subcomponent)
        if cut >= 0:
            value = value[:cut]
        if self._esc and d.escape in value:
            value = unescape(value, d, self._hex)
        value = value.strip()
        return value if value and value != '""' else None

    def components(self, field: int, count: int) -> list[str]:
        """The first ``count`` components of the first repetition of a field
        (first subcomponent of each, escapes decoded), padded with ""."""
        value = self.field(field) if field > 2 or not self._shift else ""
        if not value:
            return [""] * count
        d = self._d
        cut = value.find(d.repetition)
        if cut >= 0:
            value = value[:cut]
        parts = value.split(d.component, count)[:count]
        if d.subcomponent in value or (self._esc and d.escape in value):
            parts = [first_leaf(part, d, self._hex) for part in parts]
        if len(parts) < count:
            parts += [""] * (count - len(parts))
        return parts

    def repetitions(self, field: int) -> int:
        """How many repetitions field ``field`` has (0 when empty)."""
        value = self.field(field)
        return value.count(self._d.repetition) + 1 if value else 0

    def __repr__(self) -> str:  # never the content: it may hold patient data
        return f"<Segment {self.name}>"


class Hl7Message:
    """A decoded HL7 v2 message, split lazily.

    Segments may be separated by CR, LF or CRLF; empty lines are skipped. The
    delimiters are the message's own (MSH-1/MSH-2). ``hex_codec`` decodes \\Xhh\\
    escapes and should be the codec the text was decoded with.
    """

    __slots__ = ("_hex", "_index", "_lines", "_segments", "delimiters")

    def __init__(self, text: str, *, hex_codec: str = "latin-1") -> None:
        text = text.lstrip(_LEADING_TEXT)
        if not text.startswith("MSH"):
            raise NotHl7Error("message does not start with an MSH segment")
        if "\n" in text:
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        self._lines = [line for line in text.split("\r") if line]
        first = self._lines[0]
        if len(first) < 4:
            raise NotHl7Error("MSH-1 field separator is missing")
        self.delimiters = delimiters_for(first[3], first[4:].split(first[3], 1)[0])
        self._hex = hex_codec
        self._segments: list[Segment | None] = [None] * len(self._lines)
        self._index: dict[str, list[int]] | None = None

    @property
    def hex_codec(self) -> str:
        """The codec \\Xhh\\ escapes are decoded with."""
        return self._hex

    def names(self) -> list[str]:
        """Segment names in message order."""
        return [_name(line, self.delimiters.field) for line in self._lines]

    def __len__(self) -> int:
        return len(self._lines)

    def segments(self, name: str) -> list[Segment]:
        """Every segment called ``name``, in message order."""
        return [self._segment_at(i, name) for i in self._positions(name)]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th segment called ``name`` (1-based), or None."""
        positions = self._positions(name)
        if 0 < occurrence <= len(positions):
            return self._segment_at(positions[occurrence - 1], name)
        return None

    def get(
        self,
        segment_name: str,
        field: int,
        repetition: int = 1,
        component: int = 1,
        subcomponent: int = 1,
        occurrence: int = 1,
    ) -> str:
        """One leaf value with escapes decoded, "" when absent (1-based positions)."""
        seg = self.segment(segment_name, occurrence)
        return seg.get(field, repetition, component, subcomponent) if seg else ""

    def firsts(self, names: tuple[str, ...]) -> list[Segment | None]:
        """The first segment called each of ``names`` (None for one the message lacks), in one
        call: what a site map's generated function reads once per message."""
        positions = self._positions
        return [self._segment_at(at[0], name) if (at := positions(name)) else None for name in names]

    def positions(self, name: str) -> list[int]:
        """Where the segments called ``name`` are (0-based line numbers, in message order):
        a site map finds the segments of an FT1's group with it (canonical/hl7v2/fieldmap.py)."""
        return self._positions(name)

    def segment_at(self, position: int, name: str) -> Segment:
        """The segment at ``position`` (one of :meth:`positions`' answers for ``name``)."""
        return self._segment_at(position, name)

    def _positions(self, name: str) -> list[int]:
        index = self._index
        if index is None:
            index = {}
            fs = self.delimiters.field
            for i, line in enumerate(self._lines):
                cut = line.find(fs)
                key = line if cut < 0 else line[:cut]
                found = index.get(key)
                if found is None:
                    index[key] = [i]
                else:
                    found.append(i)
            self._index = index
        return index.get(name, [])

    def _segment_at(self, i: int, name: str) -> Segment:
        seg = self._segments[i]
        if seg is None:
            seg = self._segments[i] = Segment(self._lines[i], self.delimiters, self._hex, name)
        return seg

    def __repr__(self) -> str:  # never the content: it may hold patient data
        return f"<Hl7Message {len(self._lines)} segments>"
