"""Console sessions: the login form opens one, and its cookie stands for the client's token.

With credentials configured the console (router/console/) needs one (a viewer at least): a
bearer token or JWT, or the login form, which opens a session carrying the client's name and
role (a random id in an HttpOnly, SameSite=Strict cookie; the token itself never goes into a
cookie). A session ends after 12 hours, or when the JWT it was opened with expires. Sessions
live in memory: a restart asks for the token again.

A session also has a CSRF token, rendered into the console's pages: the JSON API takes the
session cookie as a credential only with that token in the ``X-Ficus-CSRF`` header (router/api.py
guard), so another site's form or a bare cookie can neither read nor change anything.
"""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import parse_qs

from router.auth import Identity

SESSION_COOKIE = "ficus_session"
CSRF_HEADER = "X-Ficus-CSRF"


class Sessions:
    """Console sessions opened by the login form: id -> (identity, expiry on the monotonic clock)."""

    LIFETIME = 12 * 3600.0
    MAX = 1000  # only a valid token opens one; the cap bounds memory all the same

    def __init__(self) -> None:
        self._open: dict[str, tuple[Identity, float, str]] = {}

    def open(self, identity: Identity) -> tuple[str, int]:
        """A new session for `identity`; returns its id (the cookie's value) and its lifetime in seconds."""
        now = time.monotonic()
        self._open = {k: v for k, v in self._open.items() if v[1] > now}
        while len(self._open) >= self.MAX:
            self._open.pop(next(iter(self._open)))
        lifetime = self.LIFETIME
        if identity.expires_at is not None:
            lifetime = max(0.0, min(lifetime, identity.expires_at - time.time()))
        sid = secrets.token_urlsafe(32)
        # A client granted content keeps it: the console's message browser is its to read too.
        self._open[sid] = (Identity(identity.name, identity.role, "session", content=identity.content),
                           now + lifetime, secrets.token_urlsafe(32))
        return sid, int(lifetime)

    def identity(self, sid: str) -> Identity | None:
        """Who a live session belongs to, or None."""
        entry = self._open.get(sid)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def csrf(self, sid: str) -> str | None:
        """The CSRF token of a live session (rendered into the console's pages), or None."""
        entry = self._open.get(sid)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[2]

    def api_identity(self, sid: str, token: str) -> Identity | None:
        """Who a live session belongs to when `token` is its CSRF token (an API call from the
        console's JavaScript), else None."""
        expected = self.csrf(sid)
        if expected is None or not token or not hmac.compare_digest(expected.encode(), token.encode()):
            return None
        return self.identity(sid)

    def close(self, sid: str) -> None:
        self._open.pop(sid, None)

    @staticmethod
    def form_token(raw: bytes) -> str:
        """The `token` field of an urlencoded login form (any bytes are valid input)."""
        values = parse_qs(raw.decode("utf-8", "replace")).get("token", [""])
        return values[0].strip()


