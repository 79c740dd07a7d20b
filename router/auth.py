"""Who is calling the API: named clients, bearer JWTs, and a per-client rate limit.

A credential is a bearer token. A named client's token is known by its SHA-256 only
(`[[api.clients]]`, or the deprecated `api.tokens`, served as the clients "viewer" and
"operator"); the digest of what was presented is compared with every client's digest in
constant time, all of them every time, so the answer's timing tells nothing about which
client nearly matched. A JWT (`api.jwt`) is verified against the identity provider's JWKS
(a file, re-read when it changes, or a URL, cached and refetched for an unknown key id at
most once per `jwks_refresh_seconds`): signature with an asymmetric algorithm, issuer,
audience, expiry and not-before; its role comes from a claim. Nothing here logs or raises
with a credential: reasons are error classes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

import aiohttp
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from router.config import ROLES, ApiConfig, ConfigError, JwtConfig, Role

log = logging.getLogger("ficus.auth")
Via = Literal["token", "jwt", "session", "open"]
# Asymmetric only: an HMAC algorithm would let anyone holding a JWKS "oct" key mint tokens.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519")
JWT_MAX = 16 * 1024
"""A longer bearer value is no JWT worth parsing."""
JWKS_MAX = 1024 * 1024
NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: the name every audit record and route change carries."""

    name: str
    role: Role
    via: Via
    expires_at: float | None = None
    """Epoch seconds after which the credential is no longer valid (a JWT's `exp`), if known."""
    content: bool = False
    """Granted message content for the consumer API (`content = true`, a JWT's content scope)."""

    def reads_content(self) -> bool:
        """Whether the consumer API's content routes serve it: an admin, or a granted client."""
        return self.content or allows(self.role, "admin")


OPEN = Identity("anonymous", "admin", "open")
"""The caller of an API without credentials (allowed on loopback only, or with api.insecure)."""


def allows(role: Role, needed: Role) -> bool:
    """Whether `role` includes `needed` (viewer < operator < admin)."""
    return ROLES.index(role) >= ROLES.index(needed)


def token_digest(token: str) -> bytes:
    """SHA-256 of a token's UTF-8 bytes (any str is valid input: lone surrogates pass through)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Clients:
    """The named clients of the config, each as (token digest, name, role)."""

    def __init__(self, api: ApiConfig) -> None:
        self._entries: list[tuple[bytes, str, Role, bool]] = []
        for legacy_role, token in api.tokens.items():
            self._entries.append((token_digest(token), legacy_role, legacy_role, False))
        for client in api.clients:
            digest = bytes.fromhex(client.token_sha256) if client.token_sha256 else token_digest(client.token or "")
            self._entries.append((digest, client.name, client.role, client.content))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def match(self, given: str) -> Identity | None:
        """The client whose token is `given`, or None; every entry is compared, whatever matches."""
        digest = token_digest(given)
        found: Identity | None = None
        for expected, name, role, content in self._entries:
            if hmac.compare_digest(expected, digest) and found is None:
                found = Identity(name, role, "token", content=content)
        return found


class JwtRefused(Exception):
    """A JWT that does not authenticate; `reason` is an error class or a claim's name, never the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Jwks:
    """The identity provider's keys: a file re-read when it changes, or a URL fetched and cached."""

    def __init__(self, cfg: JwtConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self._keys: KeySet | None = None
        self._stamp: tuple[int, int] | None = None
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        if cfg.jwks_file is not None:
            try:
                self._load_file()
            except (OSError, ValueError, JoseError) as exc:
                raise ConfigError("api", [f"api.jwt.jwks_file {cfg.jwks_file}: cannot be read as a JWKS "
                                          f"({type(exc).__name__})"]) from exc

    def _load_file(self) -> None:
        path = Path(self.cfg.jwks_file or "")
        st = path.stat()
        self._keys = _key_set(path.read_bytes())
        self._stamp = (st.st_mtime_ns, st.st_size)

    async def keys(self) -> KeySet | None:
        """The keys now: the file re-read if it changed (kept as it was if the new one does not
        load); the URL fetched the first time."""
        if self.cfg.jwks_file is not None:
            self._reread_file()
            return self._keys
        if self._keys is None:
            await self.refetch()
        return self._keys

    def _reread_file(self) -> None:
        """Reads the JWKS file again when it changed (a stat per JWT: small next to a signature check)."""
        try:
            st = Path(self.cfg.jwks_file or "").stat()
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                # Remembered first: a file that does not load is tried again when it changes, not per JWT.
                self._stamp = (st.st_mtime_ns, st.st_size)
                self._load_file()
                log.info("auth: api.jwt.jwks_file changed; keys reloaded")
        except (OSError, ValueError, JoseError) as exc:
            log.warning("auth: api.jwt.jwks_file does not load (%s); keeping the keys read before",
                        type(exc).__name__)

    async def refetch(self) -> bool:
        """Fetches the JWKS URL again unless it was fetched less than jwks_refresh_seconds ago;
        True when new keys were loaded. A failure keeps the keys there were (logged)."""
        if self.cfg.jwks_url is None:
            return False
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self.cfg.jwks_refresh_seconds:
                return False
            self._fetched_at = now
            try:
                self._keys = _key_set(await self._get(self.cfg.jwks_url))
            except (aiohttp.ClientError, TimeoutError, ValueError, JoseError) as exc:
                log.warning("auth: api.jwt.jwks_url could not be fetched (%s); keeping the keys there were",
                            type(exc).__name__)
                return False
            log.info("auth: JWKS fetched from api.jwt.jwks_url")
            return True

    async def _get(self, url: str) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._http.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.content.read(JWKS_MAX + 1)
        if len(body) > JWKS_MAX:
            raise ValueError("JWKS larger than 1 MiB")
        return body

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _key_set(data: bytes) -> KeySet:
    """A JWKS document's public keys; ValueError or JoseError when it is not one."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS (an object with a 'keys' list)")
    return KeySet.import_key_set({"keys": doc["keys"]})


def _highest_role(value: Any) -> Role | None:
    """The role a claim grants: a role name, or the highest role named in a list."""
    named = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    found = [r for r in ROLES if r in named]
    return found[-1] if found else None


def _numeric(value: Any) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


class JwtVerifier:
    """Bearer JWTs from the configured identity provider."""

    def __init__(self, cfg: JwtConfig, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.jwks = Jwks(cfg, monotonic)
        self._clock = clock

    async def verify(self, token: str) -> Identity:
        """The identity a valid JWT names; JwtRefused otherwise."""
        if len(token) > JWT_MAX or token.count(".") != 2:
            raise JwtRefused("not a JWT")
        keys = await self.jwks.keys()
        if keys is None:
            raise JwtRefused("no JWKS")
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=list(JWT_ALGORITHMS))
            except InvalidKeyIdError:
                # Perhaps the provider rotated its keys: fetch again (bounded), then try once more.
                if not await self.jwks.refetch() or (keys := await self.jwks.keys()) is None:
                    raise
                decoded = jwt.decode(token, keys, algorithms=list(JWT_ALGORITHMS))
        except JoseError as exc:
            raise JwtRefused(type(exc).__name__) from None
        except (ValueError, TypeError) as exc:  # malformed segments the library did not classify
            raise JwtRefused(type(exc).__name__) from None
        return self._identity(decoded.claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        now, leeway = self._clock(), self.cfg.leeway_seconds
        if claims.get("iss") != self.cfg.issuer:
            raise JwtRefused("iss")
        audience = claims.get("aud")
        if not (audience == self.cfg.audience or (isinstance(audience, list) and self.cfg.audience in audience)):
            raise JwtRefused("aud")
        exp = claims.get("exp")
        if not _numeric(exp) or exp <= now - leeway:
            raise JwtRefused("exp")
        nbf = claims.get("nbf")
        if nbf is not None and (not _numeric(nbf) or nbf > now + leeway):
            raise JwtRefused("nbf")
        name = claims.get(self.cfg.name_claim)
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or not name.isprintable():
            raise JwtRefused(self.cfg.name_claim)
        role = _highest_role(claims.get(self.cfg.role_claim))
        if role is None:
            raise JwtRefused(self.cfg.role_claim)
        scopes = claims.get("scope", claims.get("scp"))
        granted = scopes.split() if isinstance(scopes, str) else scopes if isinstance(scopes, list) else []
        return Identity(name, role, "jwt", float(exp), content=self.cfg.content_scope in granted)

    async def close(self) -> None:
        await self.jwks.close()


class Authenticator:
    """Named clients first (constant time, all of them), then a JWT if one is configured."""

    def __init__(self, api: ApiConfig) -> None:
        self.clients = Clients(api)
        self.jwt = JwtVerifier(api.jwt) if api.jwt is not None else None
        self.open = not api.credentials

    async def identify(self, credential: str) -> Identity | None:
        """Who a bearer credential is, or None (unknown token, invalid or expired JWT)."""
        found = self.clients.match(credential)
        if found is not None or self.jwt is None:
            return found
        try:
            return await self.jwt.verify(credential)
        except JwtRefused as exc:
            log.info("auth: bearer JWT refused (%s)", exc.reason)
            return None

    async def close(self) -> None:
        if self.jwt is not None:
            await self.jwt.close()


class RateLimiter:
    """A token bucket per client: `per_minute` requests, refilled evenly, bursts up to the same figure."""

    MAX_KEYS = 10_000
    """Buckets kept; the least recently used is dropped beyond (it was full, or nearly)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when `key` may make a request now (one is counted); else the seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        now, rate = self._clock(), self.per_minute / 60.0
        level, then = self._buckets.pop(key, (float(self.per_minute), now))
        level = min(float(self.per_minute), level + (now - then) * rate)
        wait = 0.0
        if level >= 1:
            level -= 1
        else:
            wait = (1 - level) / rate
        self._buckets[key] = (level, now)
        while len(self._buckets) > self.MAX_KEYS:
            self._buckets.popitem(last=False)
        return wait
