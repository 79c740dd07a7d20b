"""Ficus's own store errors, and the one place nats-py's exceptions are turned into them.

Callers above the store decide on these alone: `StoreUnavailable` means "retry later" (no
connection, a timeout, no responders: the outcome is unknown, so nothing may be acked
upstream); `NotFound` and `RevisionConflict` are answers; `StoreRejected` is a request
JetStream refuses whatever the timing (retrying it does not help).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors


class StoreError(Exception):
    """Root of every error the store raises; `reason` names the operation and the kind, no values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreUnavailable(StoreError):
    """JetStream did not answer (no connection, timeout, no responders): retry later, ack nothing."""


class NotFound(StoreError):
    """The message, key, object or bucket is not there (never stored, expired or deleted)."""


class RevisionConflict(StoreError):
    """A KV write's expected revision is not the current one (another writer was first)."""


class StoreRejected(StoreError):
    """JetStream refused the request itself (a bad request): retrying it unchanged does not help."""


def translate(exc: BaseException, what: str) -> StoreError | None:
    """The Ficus error for a nats-py (or socket) exception raised while doing `what`; None if not one.

    Order matters: nats-py's KV conflict is a BadRequestError and its not-found errors are
    APIErrors, so the specific answers are tested before the general "unavailable".
    """
    if isinstance(exc, StoreError):
        return exc
    kind = type(exc).__name__
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return RevisionConflict(f"{what}: revision changed meanwhile")
    if isinstance(exc, nats.js.errors.NotFoundError | nats.js.errors.NoKeysError):
        return NotFound(f"{what}: not found ({kind})")
    if isinstance(exc, nats.js.errors.BadRequestError):
        return StoreRejected(f"{what}: refused ({kind})")
    if isinstance(exc, TimeoutError | nats.errors.Error | OSError):
        return StoreUnavailable(f"{what}: {kind}")
    return None


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Runs a nats-py call and raises the Ficus error for whatever it raises (others pass through)."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        found = translate(exc, what)
        if found is None:
            raise
        raise found from exc
