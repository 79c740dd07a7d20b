"""protocols.backoff: exponential ceilings, full jitter below them, reset (pure unit tests)."""

from __future__ import annotations

import random

import pytest

from protocols.backoff import Backoff


def highest(low: float, high: float) -> float:
    return high


def test_ceilings_double_from_base_up_to_cap() -> None:
    backoff = Backoff(0.5, 5.0, uniform=highest)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.failures == 7


def test_jitter_stays_within_zero_and_the_ceiling() -> None:
    backoff = Backoff(1.0, 8.0, uniform=random.Random(12).uniform)
    ceilings, delays = [], []
    for _ in range(200):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next_delay())
    assert all(0 <= d <= c <= 8.0 for d, c in zip(delays, ceilings, strict=True))
    capped = delays[10:]
    assert max(capped) > 6 and min(capped) < 2, "spread over [0, cap], not pinned to the ceiling"
    assert len(set(capped)) == len(capped), "jittered, not one fixed delay"


def test_a_misbehaving_uniform_is_clamped_to_the_bounds() -> None:
    assert Backoff(1.0, 2.0, uniform=lambda low, high: high + 10).next_delay() == 1.0
    assert Backoff(1.0, 2.0, uniform=lambda low, high: -3.0).next_delay() == 0.0


def test_reset_starts_over_from_base() -> None:
    backoff = Backoff(1.0, 60.0, uniform=highest)
    for _ in range(5):
        backoff.next_delay()
    assert backoff.ceiling() == 32.0
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 1.0


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(0.1, 30.0, uniform=highest)
    backoff.failures = 10_000
    assert backoff.next_delay() == 30.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap)
