"""A small client of Ficus's own API, for the CLI commands that talk to a running service."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from router.config import ROLES, load_config


class ApiError(Exception):
    """The API could not be reached or answered with an error; `str()` is one line.

    `status` is the HTTP status of an answer, None when there was none.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> int:
        """1 when the work was tried and failed (422 still not translatable, a 5xx service error);
        2 when the request was refused (any other 4xx) or could not be made (no API there)."""
        return 1 if self.status is not None and (self.status == 422 or self.status >= 500) else 2


def check_base_url(url: str, source: str) -> str:
    """`url` without a trailing slash; ApiError naming `source` unless it is http(s)://host[:port]."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        # The value is not repeated: an URL may carry credentials.
        raise ApiError(f"{source}: expected the API's base URL, http://HOST:PORT or https://HOST:PORT")
    return url.rstrip("/")


def _from_config(config: str | None) -> tuple[str | None, str | None, str | None]:
    """The API's URL, a token and the file to trust for HTTPS, from a config (None without one)."""
    path = config or ("ficus.toml" if Path("ficus.toml").exists() else None)
    if path is None:
        return None, None, None
    cfg = load_config(path)  # ConfigError: the caller prints every problem
    host, port = cfg.api.host_port
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    token = cfg.api.tokens.get("operator") or cfg.api.tokens.get("viewer")
    # A named client whose token the config reads from the environment: the most able one.
    by_role = sorted((c for c in cfg.api.clients if c.token), key=lambda c: ROLES.index(c.role), reverse=True)
    if token is None and by_role:
        token = by_role[0].token
    tls = cfg.api.tls
    return f"{'https' if tls else 'http'}://{host}:{port}", token, tls.cert if tls else None


def tls_context(ca: str | None, pinned: str | None) -> ssl.SSLContext:
    """The context for an https:// API: the CA bundle `ca` (--ca, $FICUS_CA), else the server's own
    certificate file read from the config (`pinned`), else the system's trust store.

    A client certificate for an API that asks for one comes from $FICUS_CLIENT_CERT (and
    $FICUS_CLIENT_KEY when the key is in a file of its own). ApiError when a file does not load.
    """
    try:
        ctx = ssl.create_default_context(cafile=ca or pinned)
        if not ca and pinned:
            # The server's certificate itself is the trust anchor (its CA need not be in the file).
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        cert = os.environ.get("FICUS_CLIENT_CERT")
        if cert:
            ctx.load_cert_chain(cert, os.environ.get("FICUS_CLIENT_KEY") or None)
    except (OSError, ssl.SSLError) as exc:
        which = "--ca / $FICUS_CA" if ca else "the config's api.tls.cert" if pinned else "$FICUS_CLIENT_CERT"
        raise ApiError(f"cannot use the TLS files ({which}): {getattr(exc, 'strerror', None) or type(exc).__name__}") \
            from exc
    return ctx


class ApiClient:
    """Calls /api/v1 with a bearer token; errors become ApiError with the API's reason."""

    def __init__(self, base_url: str | None = None, token: str | None = None,
                 config: str | None = None, timeout: float = 10.0, ca: str | None = None) -> None:
        # Precedence: --api, $FICUS_API, the config's api.listen; a config named with -c is
        # always read (a broken one is an error, and its token applies with --api too).
        env_url = os.environ.get("FICUS_API")
        cfg_url, cfg_token, pinned = _from_config(config) if config or not base_url else (None, None, None)
        if base_url:
            self.base_url = check_base_url(base_url, "--api")
        elif env_url:
            self.base_url = check_base_url(env_url, "$FICUS_API")
        else:
            self.base_url = cfg_url or "http://127.0.0.1:8080"
        self.token = token or os.environ.get("FICUS_TOKEN") or cfg_token
        self.timeout = timeout
        self._ca = ca or os.environ.get("FICUS_CA") or None
        self._pinned = pinned
        self._ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https://"):
            return None
        if self._ssl is None:
            self._ssl = tls_context(self._ca, self._pinned)
        return self._ssl

    def _request(self, method: str, path: str, body: dict[str, Any] | None, accept: str) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        # Sent for older services; the API records who authenticated, never this header.
        actor = os.environ.get("FICUS_ACTOR") or os.environ.get("USER")
        if actor:
            req.add_header("X-Ficus-Actor", actor)
        return req

    def stream(self, method: str, path: str, body: dict[str, Any] | None = None,
               timeout: float = 300.0) -> Iterator[dict[str, Any]]:
        """Calls an endpoint that answers in JSON lines (``application/x-ndjson``); yields each.
        ``timeout`` bounds the wait for the next line, not the whole call."""
        req = self._request(method, path, body, "application/x-ndjson")
        with self._errors(method, path), urllib.request.urlopen(req, timeout=timeout,
                                                                context=self._context()) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        req = self._request(method, path, body, "application/json")
        with self._errors(method, path), urllib.request.urlopen(req, timeout=timeout or self.timeout,
                                                                context=self._context()) as resp:
            return json.loads(resp.read() or b"null")

    @contextlib.contextmanager
    def _errors(self, method: str, path: str) -> Iterator[None]:
        try:
            yield
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                reason = exc.reason
            raise ApiError(f"{method} {path}: {exc.code} {reason}", exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach the Ficus API at {self.base_url}: "
                           f"{getattr(exc, 'reason', exc)}") from exc
