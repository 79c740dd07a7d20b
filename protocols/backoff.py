"""Exponential backoff with full jitter, for every reconnect and restart loop.

Delay ``n`` (counting from 0 after a reset) is ``uniform(0, min(cap, base * 2**n))``:
AWS's "full jitter" (Exponential Backoff and Jitter, 2015). Without jitter, every
instance (and every interface of one instance) that lost the same database, SFTP
server or engine retries in lockstep and hits it together when it comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final, TypeAlias

Uniform: TypeAlias = Callable[[float, float], float]
"""Draws a number in ``[low, high]``: ``random.uniform`` unless a test pins it."""

_MAX_EXPONENT: Final = 64  # 2**64 * any sane base is far over any cap: no float overflow


class Backoff:
    """Delays growing from ``base`` towards ``cap``, each drawn at random below its ceiling."""

    __slots__ = ("_uniform", "base", "cap", "failures")

    def __init__(self, base: float, cap: float, *, uniform: Uniform = random.uniform) -> None:
        """``base`` > 0 is the first ceiling, ``cap`` >= ``base`` the largest; ``uniform``
        draws the jitter (a test passes ``lambda low, high: high`` for exact ceilings)."""
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0
        """Delays handed out since the last :meth:`reset` (failures in a row)."""
        self._uniform = uniform

    def ceiling(self) -> float:
        """The upper bound of the next delay: ``min(cap, base * 2**failures)``."""
        return min(self.cap, self.base * 2.0 ** min(self.failures, _MAX_EXPONENT))

    def next_delay(self) -> float:
        """The delay before the next attempt, in ``[0, ceiling()]``; counts one failure."""
        ceiling = self.ceiling()
        self.failures += 1
        return min(ceiling, max(0.0, self._uniform(0.0, ceiling)))

    def reset(self) -> None:
        """Start over from ``base`` (the last attempt succeeded, or ran well for a while)."""
        self.failures = 0
