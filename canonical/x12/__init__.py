"""X12 835 remittance advice to canonical claim events (pure: bytes in, events out).

Public entry point: :func:`translate_835`; the tokenizer is :class:`X12Reader`.
"""

from canonical.x12.reader import Delimiters, Segment, X12Reader, X12SyntaxError
from canonical.x12.remit835 import TransactionResult, translate_835

__all__ = ["Delimiters", "Segment", "TransactionResult", "X12Reader", "X12SyntaxError", "translate_835"]
