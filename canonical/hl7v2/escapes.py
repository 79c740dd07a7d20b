"""HL7 v2 delimiters and escape sequences (HL7 v2.5 chapter 2.7).

Values are split first and unescaped last: an escape sequence never contains a
delimiter, so this order is safe, and most values contain no escape character at
all, which keeps the common path to one ``in`` test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from canonical.errors import NotHl7Error

__all__ = ["DEFAULT_DELIMITERS", "Delimiters", "delimiters_for", "escape", "unescape"]


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The separators of one message, from MSH-1 and MSH-2."""

    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str = ""  # the optional 5th MSH-2 character (v2.7+); "" when absent

    @property
    def encoding_chars(self) -> str:
        """MSH-2 as it would be written for these delimiters."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters("|", "^", "~", "\\", "&")

# Defaults for MSH-2 characters a sender left out (old 3-character MSH-2 such as
# "^~}" exists), in MSH-2 order: component, repetition, escape, subcomponent.
_DEFAULTS = ("^", "~", "\\", "&")


@lru_cache(maxsize=64)
def delimiters_for(field_sep: str, encoding_chars: str) -> Delimiters:
    """Validate MSH-1/MSH-2 and return the delimiters; NotHl7Error when unusable.

    Delimiters must be single punctuation characters, all different: a message
    whose MSH-2 repeats a character (``^~\\\\&``, copy-paste damage seen in the
    wild) cannot be split unambiguously, so it is refused rather than guessed.
    """
    if len(field_sep) != 1 or not _is_delimiter(field_sep):
        raise NotHl7Error("MSH-1 field separator is missing or not a delimiter character")
    if not encoding_chars:
        raise NotHl7Error("MSH-2 encoding characters are missing")
    if len(encoding_chars) > 5:
        raise NotHl7Error("MSH-2 encoding characters are more than 5 characters")
    if not all(_is_delimiter(c) for c in encoding_chars):
        raise NotHl7Error("MSH-2 encoding characters contain a non-delimiter character")
    chars = list(encoding_chars[:4]) + list(_DEFAULTS[len(encoding_chars) :])
    truncation = encoding_chars[4] if len(encoding_chars) == 5 else ""
    every = [field_sep, *chars] + ([truncation] if truncation else [])
    if len(set(every)) != len(every):
        raise NotHl7Error("MSH-1/MSH-2 delimiters are ambiguous (a character repeats)")
    component, repetition, esc, subcomponent = chars
    return Delimiters(field_sep, component, repetition, esc, subcomponent, truncation)


def _is_delimiter(char: str) -> bool:
    return not (char.isalnum() or char.isspace() or char < " " or char == "\x7f")


def unescape(value: str, d: Delimiters, hex_codec: str = "latin-1") -> str:
    """Decode HL7 escape sequences in one leaf value.

    \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (and \\P\\ when a truncation character is declared) give
    the delimiter, \\Xhh..\\ the bytes decoded with ``hex_codec`` (the message's own
    charset), \\.br\\ a newline, \\H\\ and \\N\\ (highlighting) nothing. Anything else -
    unknown, charset switches, an unterminated sequence - is kept verbatim, so no
    data is silently lost.
    """
    esc = d.escape
    if esc not in value:
        return value
    parts = value.split(esc)
    out = [parts[0]]
    last = len(parts) - 1
    i = 1
    while i < last:  # parts[i] is a complete sequence: another escape follows it
        out.append(_expand(parts[i], d, hex_codec))
        out.append(parts[i + 1])
        i += 2
    if i == last:  # an escape character that was never closed
        out.append(esc + parts[i])
    return "".join(out)


def _expand(seq: str, d: Delimiters, hex_codec: str) -> str:
    if len(seq) == 1:
        simple = _simple(seq, d)
        if simple is not None:
            return simple
    elif seq == ".br":
        return "\n"
    elif seq[:1] == "X":
        decoded = _hex(seq[1:], hex_codec)
        if decoded is not None:
            return decoded
    return d.escape + seq + d.escape


def _simple(char: str, d: Delimiters) -> str | None:
    if char == "F":
        return d.field
    if char == "S":
        return d.component
    if char == "T":
        return d.subcomponent
    if char == "R":
        return d.repetition
    if char == "E":
        return d.escape
    if char == "P" and d.truncation:
        return d.truncation
    if char in ("H", "N"):
        return ""
    return None


def _hex(digits: str, codec: str) -> str | None:
    if not digits or len(digits) % 2:
        return None
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return None
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        # A multi-byte character split over several \X..\ sequences: keep each byte.
        return data.decode("latin-1")


def escape(value: str, d: Delimiters) -> str:
    """Escape a value for writing into an HL7 message with delimiters ``d``.

    Line breaks become \\X0D\\ / \\X0A\\ so a value can never end a segment.
    """
    if not value or (value.isalnum() and _punctuation_only(d)):
        # Most echoed fields (application, facility, ids, timestamps) need no work: the ACK path.
        return value
    table = _escape_table(d)
    return value.translate(table) if _needs_escape(value, d) else value


@lru_cache(maxsize=64)
def _punctuation_only(d: Delimiters) -> bool:
    """No delimiter is a letter or digit, so an alphanumeric value holds none of them."""
    return not any(c.isalnum() for c in (d.field, d.component, d.repetition, d.escape, d.subcomponent,
                                         d.truncation or ""))


def _needs_escape(value: str, d: Delimiters) -> bool:
    for char in (d.field, d.component, d.repetition, d.escape, d.subcomponent, "\r", "\n"):
        if char in value:
            return True
    return bool(d.truncation) and d.truncation in value


@lru_cache(maxsize=64)
def _escape_table(d: Delimiters) -> dict[int, str]:
    e = d.escape
    table = {
        ord(d.escape): f"{e}E{e}",
        ord(d.field): f"{e}F{e}",
        ord(d.component): f"{e}S{e}",
        ord(d.subcomponent): f"{e}T{e}",
        ord(d.repetition): f"{e}R{e}",
        ord("\r"): f"{e}X0D{e}",
        ord("\n"): f"{e}X0A{e}",
    }
    if d.truncation:
        table[ord(d.truncation)] = f"{e}P{e}"
    return table
