"""HL7 table 0211 (MSH-18 character set) names mapped to Python codecs.

Senders write MSH-18 in many spellings ("8859/1", "ISO IR100", "UNICODE UTF-8",
"UTF-8", "ISO-8859-1"), so names are normalised before lookup, and a name Python
itself knows ("windows-1252") is accepted as well. Unknown names give None and the
caller falls back to the interface's default encoding.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

__all__ = ["codec_for_charset", "decode_candidates", "encode_codec"]

# Normalised name (upper case, no spaces, "-" or "_") -> Python codec.
_TABLE_0211: dict[str, str] = {
    "ASCII": "ascii",
    "ISOIR6": "ascii",
    "8859/1": "latin-1",
    "ISOIR100": "latin-1",
    "8859/2": "iso8859-2",
    "ISOIR101": "iso8859-2",
    "8859/3": "iso8859-3",
    "ISOIR109": "iso8859-3",
    "8859/4": "iso8859-4",
    "ISOIR110": "iso8859-4",
    "8859/5": "iso8859-5",
    "ISOIR144": "iso8859-5",
    "8859/6": "iso8859-6",
    "ISOIR127": "iso8859-6",
    "8859/7": "iso8859-7",
    "ISOIR126": "iso8859-7",
    "8859/8": "iso8859-8",
    "ISOIR138": "iso8859-8",
    "8859/9": "iso8859-9",
    "ISOIR148": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISOIR203": "iso8859-15",
    "ISOIR14": "shift_jis",
    "ISOIR87": "iso2022_jp",
    "ISOIR159": "iso2022_jp_2",
    "GB18030-2000": "gb18030",
    "GB18030": "gb18030",
    "KSX1001": "euc_kr",
    "BIG-5": "big5",
    "BIG5": "big5",
    "CNS11643-1992": "big5",
    "UNICODE": "utf-16",
    "UNICODEUTF-8": "utf-8",
    "UNICODEUTF-16": "utf-16",
    "UNICODEUTF-32": "utf-32",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ISOIR192": "utf-8",
}


def _normalise(name: str) -> str:
    return name.strip().upper().replace(" ", "").replace("_", "")


@lru_cache(maxsize=256)
def codec_for_charset(name: str) -> str | None:
    """The Python codec for an MSH-18 value, or None when empty or unknown."""
    if not name.strip():
        return None
    known = _TABLE_0211.get(_normalise(name))
    if known is not None:
        return known
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        return None


@lru_cache(maxsize=256)
def decode_candidates(charset: str, default: str, fallback: str | None) -> tuple[str, ...]:
    """The codecs to try, in order, for a message declaring ``charset``.

    ISO 8859-1 is tried as windows-1252 first: senders routinely declare 8859/1
    while sending Windows text (the same choice browsers make for "latin1"), and
    the two differ only in 0x80-0x9F, which are unused control codes in 8859-1.
    """
    declared = codec_for_charset(charset)
    if declared is not None and not _ascii_compatible(declared):
        # peek_header already read MSH as ASCII bytes, so a UTF-16/32 or ISO 2022
        # declaration is wrong for these bytes; decoding with it would give garbage.
        declared = None
    order: list[str] = []
    if declared is not None and codecs.lookup(declared).name == "iso8859-1":
        order.append("cp1252")
    for name in (declared, default, fallback):
        if name and name not in order:
            order.append(name)
    return tuple(order)


@lru_cache(maxsize=256)
def encode_codec(charset: str, default: str = "utf-8") -> str:
    """The codec to encode outbound text (an ACK) for a declared charset.

    Only ASCII-compatible codecs qualify: the MSH the receiver parses must stay
    readable, so UTF-16/32 and ISO 2022 declarations fall back to ``default``.
    """
    codec = codec_for_charset(charset)
    return codec if codec is not None and _ascii_compatible(codec) else default


def _ascii_compatible(codec: str) -> bool:
    return not codecs.lookup(codec).name.startswith(("utf-16", "utf-32", "iso2022"))
