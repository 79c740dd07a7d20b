"""A small client of Ficus's own API, for the CLI commands that talk to a running service."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from router.config import ConfigError, load_config


class ApiError(Exception):
    """The API could not be reached or answered with an error; `str()` is one line."""


def _from_config(config: str | None) -> tuple[str | None, str | None]:
    path = config or ("ficus.toml" if Path("ficus.toml").exists() else None)
    if path is None:
        return None, None
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise ApiError(f"{path}: {exc.problems[0]}") from exc
    host, port = cfg.api.host_port
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    token = cfg.api.tokens.get("operator") or cfg.api.tokens.get("viewer")
    return f"http://{host}:{port}", token


class ApiClient:
    """Calls /api/v1 with a bearer token; errors become ApiError with the API's reason."""

    def __init__(self, base_url: str | None = None, token: str | None = None,
                 config: str | None = None, timeout: float = 10.0) -> None:
        cfg_url, cfg_token = _from_config(config) if not base_url else (None, None)
        self.base_url = (base_url or os.environ.get("FICUS_API") or cfg_url
                         or "http://127.0.0.1:8080").rstrip("/")
        self.token = token or os.environ.get("FICUS_TOKEN") or cfg_token
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        actor = os.environ.get("FICUS_ACTOR") or os.environ.get("USER")
        if actor:
            req.add_header("X-Ficus-Actor", actor)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                reason = exc.reason
            raise ApiError(f"{method} {path}: {exc.code} {reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach the Ficus API at {self.base_url}: "
                           f"{getattr(exc, 'reason', exc)}") from exc
