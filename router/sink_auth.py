"""Credentials a sink sends: a fixed bearer token, or an OAuth2 client-credentials token.

The OAuth2 token is cached and fetched again a little before it expires (a fifth of its
lifetime, at most a minute early), so requests do not carry a token that dies on the way;
a 401 from the receiver drops the cached token (`invalidate`) and the next attempt fetches one.
One fetch at a time: deliveries waiting for a token share it.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from router.config import SinkAuthConfig

EARLY_MAX = 60.0
"""Seconds before expiry a token is refreshed, at most."""
DEFAULT_LIFETIME = 300.0
"""A token response without expires_in is trusted for this long."""


class TokenError(Exception):
    """The token endpoint did not give a token; the text names the status, never a secret."""


class SinkAuth:
    """The `Authorization` header of a sink's requests."""

    def __init__(self, cfg: SinkAuthConfig | None, session: aiohttp.ClientSession, timeout: float) -> None:
        self._cfg = cfg
        self._session = session
        self._timeout = timeout
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0
        """Tokens fetched from the token endpoint (for status and tests)."""

    async def header(self) -> dict[str, str]:
        """The header to send now ({} without auth); TokenError when no token can be had."""
        if self._cfg is None:
            return {}
        if self._cfg.bearer_token is not None:
            return {"Authorization": f"Bearer {self._cfg.bearer_token}"}
        return {"Authorization": f"Bearer {await self._oauth2_token()}"}

    def invalidate(self) -> None:
        """The receiver refused the token (401): fetch a new one next time."""
        self._token = None

    async def _oauth2_token(self) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._refresh_at:
                return self._token
            self._token, lifetime = await self._fetch()
            self._refresh_at = time.monotonic() + lifetime - min(EARLY_MAX, lifetime / 5)
            self.fetched += 1
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        oauth = self._cfg.oauth2 if self._cfg is not None else None
        assert oauth is not None
        form = {"grant_type": "client_credentials", "client_id": oauth.client_id,
                "client_secret": oauth.client_secret}
        if oauth.scope:
            form["scope"] = oauth.scope
        try:
            async with self._session.post(oauth.token_url, data=form,
                                          timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                if resp.status != 200:
                    raise TokenError(f"token endpoint answered {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenError(f"token endpoint: {type(exc).__name__}") from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError("token endpoint answered without an access_token")
        expires = body.get("expires_in")
        lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else DEFAULT_LIFETIME
        return token, lifetime
