"""Named identities on the API (issue 13 items 2, 3, 5), on a real service over real sockets.

Named clients (a token by its SHA-256 or `env:`), the deprecated shared tokens, bearer JWTs
verified against a JWKS file this test writes (joserfc keys): the 401/403 matrix over every
endpoint of the app, the actor of a flip, the rate limit, the body limit, HTTPS with
certificates made here (trustme), and no credential in any log line, error or answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from legacy.simulated_engine import SimulatedEngine
from router import api as api_module
from router.api import ENDPOINTS, make_app
from router.auth import RateLimiter
from router.config import ConfigError
from router.embedded_nats import EmbeddedNats
from router.service import Service
from tests.conftest import make_config
from tests.test_cli import ficus

pytestmark = pytest.mark.integration
ISSUER = "https://idp.example.test/realms/hospital"
AUDIENCE = "ficus-api"
JWT_USER = "dr.quinn@hospital.example"
EVENT_TYPE = "org.ficus.revenue.charge.posted.v1"

# What each endpoint needs, as the README's role matrix says (None: open to anyone; "content":
# the consumer API, any role with content access: an admin, a client with content = true, a JWT
# with the content scope). Written here, apart from router/api.py: an endpoint added to the app
# without a line here fails.
EXPECTED: dict[tuple[str, str], str | None] = {
    ("GET", "/"): "viewer",
    ("GET", "/console/interfaces/{iface}"): "viewer",
    ("GET", "/console/interfaces/{iface}/gate"): "viewer",
    ("GET", "/console/interfaces/{iface}/history"): "viewer",
    ("GET", "/console/dead-letters"): "viewer",
    ("GET", "/console/messages"): "viewer",
    ("GET", "/console/audit"): "admin",
    ("GET", "/console/stream"): "viewer",
    ("GET", "/static/{name}"): None,
    ("POST", "/login"): None,
    ("POST", "/logout"): None,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/api/v1/openapi.json"): None,
    ("GET", "/metrics"): "viewer",
    ("GET", "/api/v1/interfaces"): "viewer",
    ("GET", "/api/v1/routes"): "viewer",
    ("PUT", "/api/v1/routes/{iface}"): "operator",
    ("GET", "/api/v1/routes/{iface}/history"): "viewer",
    ("GET", "/api/v1/events"): "content",
    ("GET", "/api/v1/events/stream"): "content",
    ("GET", "/api/v1/events/{id}"): "content",
    ("GET", "/api/v1/dlq"): "admin",
    ("GET", "/api/v1/dlq/{id}"): "admin",
    ("POST", "/api/v1/dlq/{id}/replay"): "operator",
    ("POST", "/api/v1/dlq/{id}/discard"): "operator",
    ("POST", "/api/v1/replay/{iface}"): "operator",
    ("GET", "/api/v1/parity/{iface}"): "viewer",
    ("GET", "/api/v1/parity/{iface}/gl"): "viewer",
    ("GET", "/api/v1/ledger/{iface}"): "viewer",
    ("GET", "/api/v1/sinks"): "viewer",
    ("GET", "/api/v1/alerts"): "viewer",
    ("GET", "/api/v1/instances"): "viewer",
    ("GET", "/api/v1/leases"): "viewer",
    ("POST", "/api/v1/leases/{iface}/release"): "operator",
    ("POST", "/api/v1/sinks/{id}/pause"): "operator",
    ("POST", "/api/v1/sinks/{id}/resume"): "operator",
    ("POST", "/api/v1/sinks/{id}/replay"): "operator",
    ("GET", "/api/v1/schemas"): "viewer",
    ("GET", "/api/v1/schemas/{type}"): "viewer",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/claims/{claim}"): "content",
    ("GET", "/api/v1/remittances/{trace}"): "content",
    ("GET", "/api/v1/accounts/{account}/charges"): "content",
    ("POST", "/api/v1/views/rebuild"): "operator",
    ("GET", "/api/v1/messages"): "content",
    ("GET", "/api/v1/messages/{correlation}"): "content",
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}
CONTENT = {"admin", "consumer", "jwt_content"}
"""The credentials the consumer API's content routes serve."""
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/api/v1/routes/{iface}"): {"mode": "legacy", "reason": "matrix"},
    ("POST", "/api/v1/dlq/{id}/replay"): {},
    ("POST", "/api/v1/dlq/{id}/discard"): {"reason": "matrix"},
    ("POST", "/api/v1/replay/{iface}"): {"since": "2030-01-01T00:00:00Z", "dry_run": True},
    ("POST", "/api/v1/leases/{iface}/release"): {"reason": "matrix"},
}


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Identities:
    """The credentials of one test: tokens of the named clients, JWT keys, and the api config."""

    jwks_file: Path
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "idp-1"}))
    # Another key under the same kid: its signatures must not verify.
    stranger: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "idp-1"}))
    tokens: dict[str, str] = field(default_factory=lambda: {
        role: f"tok-{role}-{secrets.token_urlsafe(24)}" for role in ("viewer", "operator", "admin", "consumer")})
    names: dict[str, str] = field(default_factory=lambda: {
        "viewer": "ward-viewer", "operator": "integration-eng", "admin": "security-officer",
        "consumer": "erp-fusion"})

    def __post_init__(self) -> None:
        self.jwks_file.write_text(json.dumps(KeySet([self.key]).as_dict(private=False)))

    def api(self, **extra: Any) -> dict[str, Any]:
        return {
            "clients": [
                {"name": self.names["viewer"], "role": "viewer", "token_sha256": _sha256(self.tokens["viewer"])},
                {"name": self.names["operator"], "role": "operator", "token": "env:FICUS_TEST_OPERATOR_TOKEN"},
                {"name": self.names["admin"], "role": "admin", "token_sha256": _sha256(self.tokens["admin"])},
                {"name": self.names["consumer"], "role": "viewer", "content": True,
                 "token_sha256": _sha256(self.tokens["consumer"])},
            ],
            "jwt": {"jwks_file": str(self.jwks_file), "issuer": ISSUER, "audience": AUDIENCE},
            **extra,
        }

    def jwt(self, role: str | list[str] = "operator", *, audience: str = AUDIENCE, expires_in: float = 300,
            key: RSAKey | None = None, name: str = JWT_USER, scope: str | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "aud": audience, "sub": name, "ficus_role": role, "iat": now,
                                  "nbf": now - 5, "exp": int(now + expires_in)}
        if scope is not None:
            claims["scope"] = scope
        return jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, key or self.key)

    def credentials(self) -> dict[str, str | None]:
        """Each credential of the matrix: the Authorization header value (None: no header)."""
        return {
            "none": None, "wrong": "Bearer " + secrets.token_urlsafe(32),
            "viewer": "Bearer " + self.tokens["viewer"], "operator": "Bearer " + self.tokens["operator"],
            "admin": "Bearer " + self.tokens["admin"], "jwt": "Bearer " + self.jwt("operator"),
            "consumer": "Bearer " + self.tokens["consumer"],
            "jwt_content": "Bearer " + self.jwt("viewer", scope="openid ficus.content"),
            "jwt_expired": "Bearer " + self.jwt("admin", expires_in=-3600),
            "jwt_wrong_audience": "Bearer " + self.jwt("admin", audience="another-api"),
            "jwt_other_key": "Bearer " + self.jwt("admin", key=self.stranger),
        }

    def secrets(self) -> list[str]:
        """Strings that must never appear in a log line, an error or an answer."""
        jwts = [v.removeprefix("Bearer ") for k, v in self.credentials().items() if v and k.startswith("jwt")]
        return [*self.tokens.values(), *jwts]


# The role each credential has, None when it must be refused (401).
ROLE_OF = {"none": None, "wrong": None, "viewer": "viewer", "operator": "operator", "admin": "admin",
           "jwt": "operator", "consumer": "viewer", "jwt_content": "viewer",
           "jwt_expired": None, "jwt_wrong_audience": None, "jwt_other_key": None}


def make_identities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Identities:
    """Fresh credentials; the operator's token in the environment (its config says env:)."""
    found = Identities(tmp_path / "jwks.json")
    monkeypatch.setenv("FICUS_TEST_OPERATOR_TOKEN", found.tokens["operator"])
    return found


@pytest.fixture
def identities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Identities:
    return make_identities(tmp_path, monkeypatch)


@asynccontextmanager
async def served(nats_url: str, api: dict[str, Any], **top: Any) -> AsyncIterator[Service]:
    """A service with one MLLP interface (his-charges, legacy, to a simulated engine) and `api`."""
    async with SimulatedEngine() as engine:
        iface = {"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "legacy",
                 "legacy": f"mllp://127.0.0.1:{engine.port}"}
        async with Service(make_config(nats_url, [iface], api=api, **top)) as svc:
            yield svc


def _fill(path: str) -> str:
    return (path.replace("{iface}", "his-charges").replace("{id}", "1").replace("{type}", EVENT_TYPE)
            .replace("{claim}", "ICN1").replace("{trace}", "TRN1").replace("{account}", "ACC1")
            .replace("{correlation}", "HIS^MAIN:1"))


def test_the_expected_matrix_covers_the_route_table() -> None:
    table = {(method, path) for method, path, _, _ in ENDPOINTS}
    assert table == set(EXPECTED), "a route without an expected rule here, or the other way round"
    for method, path, _, rule in ENDPOINTS:
        expected = EXPECTED[(method, path)]
        assert rule.role == ("viewer" if expected == "content" else expected), (method, path)
        assert rule.consumer == (expected == "content"), (method, path)


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _, _ in ENDPOINTS])
async def test_the_401_403_matrix(
    method: str, path: str, nats_server: EmbeddedNats, identities: Identities
) -> None:
    needed = EXPECTED[(method, path)]
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        # The app serves exactly the table's routes (HEAD beside each GET).
        served_routes = {(r.method, r.resource.canonical) for r in make_app(svc.running).router.routes()
                         if r.resource is not None and r.method != "HEAD"}
        assert served_routes == set(EXPECTED)
        statuses: dict[str, int] = {}
        for who, header in identities.credentials().items():
            headers = {"Authorization": header} if header else {}
            body = BODIES.get((method, path))
            resp = await http.request(method, f"{svc.api_url}{_fill(path)}", headers=headers,
                                      json=body if body is not None else None, allow_redirects=False)
            statuses[who] = resp.status
            role = ROLE_OF[who]
            if needed is None:
                continue
            if role is None:
                assert resp.status == 401, (who, resp.status, await resp.text())
                assert resp.headers["WWW-Authenticate"].startswith("Bearer"), who
            elif needed == "content":
                if who in CONTENT:
                    assert resp.status not in (401, 403, 429), (who, resp.status, await resp.text())
                else:
                    assert resp.status == 403, (who, resp.status, await resp.text())
                    assert "content" in (await resp.json())["error"]
            elif RANK[role] >= RANK[needed]:
                assert resp.status not in (401, 403, 429), (who, resp.status, await resp.text())
            else:
                assert resp.status == 403, (who, resp.status, await resp.text())
                assert needed in (await resp.json())["error"]
        if needed is None:
            # Open: the credential changes nothing.
            assert len(set(statuses.values())) == 1 and 403 not in statuses.values(), statuses


async def test_a_forced_flip_needs_admin_and_the_actor_is_who_authenticated(
    nats_server: EmbeddedNats, identities: Identities
) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        url = f"{svc.api_url}/api/v1/routes/his-charges"
        go = {"mode": "modern", "reason": "go live", "force": True}
        # The header names someone else: it is ignored.
        as_operator = {"Authorization": f"Bearer {identities.tokens['operator']}", "X-Ficus-Actor": "mallory"}
        resp = await http.put(url, json=go, headers=as_operator)
        assert resp.status == 403 and "admin" in (await resp.json())["error"]
        assert svc.routes.get("his-charges").mode == "legacy"
        as_admin = {"Authorization": f"Bearer {identities.tokens['admin']}", "X-Ficus-Actor": "mallory"}
        resp = await http.put(url, json=go, headers=as_admin)
        assert resp.status == 200, await resp.text()
        assert svc.routes.get("his-charges").actor == identities.names["admin"]
        resp = await http.put(url, json={"mode": "legacy", "reason": "rollback"},
                              headers={"Authorization": f"Bearer {identities.jwt('operator')}"})
        assert resp.status == 200
        history = (await (await http.get(f"{url}/history", headers=as_operator)).json())["history"]
        assert [h["actor"] for h in history[-2:]] == [identities.names["admin"], JWT_USER]
        assert history[-2]["forced"] is True


async def test_jwt_roles_and_expiry(nats_server: EmbeddedNats, identities: Identities) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        audit = f"{svc.api_url}/api/v1/audit"

        async def status(token: str) -> int:
            return (await http.get(audit, headers={"Authorization": f"Bearer {token}"})).status

        assert await status(identities.jwt(["viewer", "admin"])) == 200, "the highest role a list names"
        assert await status(identities.jwt("viewer")) == 403
        assert await status(identities.jwt("superuser")) == 401, "no known role: no identity"
        assert await status(identities.jwt("admin", expires_in=-1)) == 200, "within the 30 s leeway"
        assert await status(identities.jwt("admin", expires_in=-120)) == 401
        assert await status(identities.jwt("admin", name="")) == 401

        # A rotated JWKS file is read again: the stranger's key becomes the trusted one.
        identities.jwks_file.write_text(json.dumps(KeySet([identities.stranger]).as_dict(private=False)))
        assert await status(identities.jwt("admin", key=identities.stranger)) == 200
        assert await status(identities.jwt("admin")) == 401


async def test_the_deprecated_shared_tokens_are_two_clients(nats_server: EmbeddedNats) -> None:
    api = {"tokens": {"viewer": "view-secret", "operator": "op-secret"}}
    async with served(nats_server.url, api) as svc, aiohttp.ClientSession() as http:
        url = f"{svc.api_url}/api/v1/routes/his-charges"
        resp = await http.put(url, json={"mode": "legacy", "reason": "drill"},
                              headers={"Authorization": "Bearer op-secret", "X-Ficus-Actor": "mallory"})
        assert resp.status == 200
        assert svc.routes.get("his-charges").actor == "operator"
        assert (await http.get(f"{svc.api_url}/api/v1/audit", headers={"Authorization": "Bearer op-secret"})
                ).status == 403, "the old operator token is no admin"


async def test_the_rate_limit_answers_429_with_retry_after(nats_server: EmbeddedNats, identities: Identities) -> None:
    async with served(nats_server.url, identities.api(rate_limit_per_minute=3)) as svc, \
            aiohttp.ClientSession() as http:
        url = f"{svc.api_url}/api/v1/interfaces"
        viewer = {"Authorization": f"Bearer {identities.tokens['viewer']}"}
        statuses = [(await http.get(url, headers=viewer)).status for _ in range(3)]
        assert statuses == [200, 200, 200]
        resp = await http.get(url, headers=viewer)
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert "error" in await resp.json()
        # Per client: another one is not held back; the probes never are.
        assert (await http.get(url, headers={"Authorization": f"Bearer {identities.tokens['admin']}"})).status == 200
        assert (await http.get(f"{svc.api_url}/healthz")).status == 200
        # Wrong tokens are limited per peer address too.
        wrong = [(await http.get(url, headers={"Authorization": "Bearer nope"})).status for _ in range(4)]
        assert wrong[:3] == [401, 401, 401] and wrong[3] == 429


def test_the_token_bucket_refills_evenly() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.take("a") == 0 for _ in range(60))
    assert limiter.take("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.take("a") == 0
    assert limiter.take("b") == 0
    assert RateLimiter(0).take("a") == 0, "0: no limit"


async def test_a_body_over_the_limit_is_413(nats_server: EmbeddedNats, identities: Identities) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        operator = {"Authorization": f"Bearer {identities.tokens['operator']}", "Content-Type": "application/json"}
        big = json.dumps({"mode": "legacy", "reason": "x" * (api_module.MAX_BODY + 1)})
        resp = await http.put(f"{svc.api_url}/api/v1/routes/his-charges", data=big, headers=operator)
        assert resp.status == 413
        assert "error" in await resp.json()
        assert svc.routes.get("his-charges").reason != "x" * 10


async def test_the_dashboard_login_carries_the_clients_name_and_role(
    nats_server: EmbeddedNats, identities: Identities
) -> None:
    async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
        resp = await http.post(f"{svc.api_url}/login", data={"token": identities.tokens["admin"]},
                               allow_redirects=False)
        assert resp.status == 303
        cookie = resp.headers["Set-Cookie"]
        assert identities.tokens["admin"] not in cookie
        session = {"Cookie": cookie.split(";", 1)[0]}
        page = await (await http.get(f"{svc.api_url}/", headers=session)).text()
        assert f"{identities.names['admin']} (admin)" in page
        # The session opens the dashboard only.
        assert (await http.get(f"{svc.api_url}/api/v1/interfaces", headers=session)).status == 401
        resp = await http.post(f"{svc.api_url}/login", data={"token": identities.jwt("viewer")},
                               allow_redirects=False)
        assert resp.status == 303
        page = await (await http.get(f"{svc.api_url}/", headers={"Cookie": resp.headers["Set-Cookie"].split(";")[0]})
                      ).text()
        assert f"{JWT_USER} (viewer)" in page


async def test_no_credential_in_logs_errors_or_answers(
    nats_server: EmbeddedNats, identities: Identities, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with served(nats_server.url, identities.api()) as svc, aiohttp.ClientSession() as http:
            for header in identities.credentials().values():
                headers = {"Authorization": header} if header else {}
                for method, path, _, _ in ENDPOINTS:
                    body = BODIES.get((method, path))
                    resp = await http.request(method, f"{svc.api_url}{_fill(path)}", headers=headers, json=body,
                                              allow_redirects=False)
                    if path in ("/api/v1/events/stream", "/console/stream") and resp.status == 200:
                        # A live feed never ends: its head, and what it sent so far.
                        answers.append(f"{resp.status} {dict(resp.headers)} {resp.content.read_nowait()!r}")
                        resp.close()
                        continue
                    answers.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")
            for token in identities.secrets():
                resp = await http.post(f"{svc.api_url}/login", data={"token": token + "x"}, allow_redirects=False)
                answers.append(await resp.text())
    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    everything = logged + "\n".join(answers)
    for secret in identities.secrets():
        assert secret not in everything
        assert secret[:24] not in everything


def test_ficus_check_never_prints_a_client_token(tmp_path: Path) -> None:
    literal = "lit-" + secrets.token_urlsafe(24)
    from_env = "env-" + secrets.token_urlsafe(24)
    conf = tmp_path / "ficus.toml"
    conf.write_text(f"""
[api]
listen = "127.0.0.1:0"
[[api.clients]]
name = "bad name"
role = "admin"
token = "{literal}"
[[api.clients]]
name = "ops"
role = "root"
token = "env:FICUS_TEST_CLIENT_TOKEN"
[api.jwt]
jwks_url = "http://user:{literal}@idp.example.test/jwks"
issuer = "x"
audience = "y"
""")
    result = ficus("check", "-c", str(conf), env={**os.environ, "FICUS_TEST_CLIENT_TOKEN": from_env})
    assert result.returncode == 1
    assert "api.clients" in result.stderr and "api.jwt" in result.stderr
    out = result.stdout + result.stderr
    assert literal not in out and from_env not in out and literal[:12] not in out


def test_non_loopback_needs_credentials_and_tls(tmp_path: Path) -> None:
    both = {"listen": "0.0.0.0:8080", "clients": [{"name": "a", "role": "viewer", "token_sha256": "a" * 64}]}
    with pytest.raises(ConfigError) as err:
        make_config("nats://127.0.0.1:1", [], api=both)
    assert "api.tls" in str(err.value)
    cfg = make_config("nats://127.0.0.1:1", [], api={**both, "tls": {"cert": "c.pem", "key": "k.pem"}})
    assert cfg.api.tls is not None and cfg.api.insecure_warning() is None
    insecure = make_config("nats://127.0.0.1:1", [], api={**both, "insecure": True})
    assert "clear text" in (insecure.api.insecure_warning() or "")
    with pytest.raises(ConfigError) as err:
        make_config("nats://127.0.0.1:1", [], api={"tls": {"cert": "c", "key": "k", "require_client_cert": True}})
    assert "client_ca" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_config("nats://127.0.0.1:1", [], api={"clients": [{"name": "a", "role": "viewer"}]})
    assert "token_sha256 or token" in str(err.value)


# --- HTTPS ----------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    cert: Path
    key: Path

    def client_context(self, ca: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        (ca or self.ca).configure_trust(ctx)
        return ctx


def _pki(tmp_path: Path, name: str = "api") -> Pki:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key", tmp_path / f"{name}-ca.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, ca_file, cert, key)


async def test_https_serves_with_the_test_ca_and_refuses_plain_http(
    nats_server: EmbeddedNats, identities: Identities, tmp_path: Path
) -> None:
    pki = _pki(tmp_path)
    api = identities.api(tls={"cert": str(pki.cert), "key": str(pki.key)})
    viewer = {"Authorization": f"Bearer {identities.tokens['viewer']}"}
    async with served(nats_server.url, api) as svc, aiohttp.ClientSession() as http:
        assert svc.api_url is not None and svc.api_url.startswith("https://127.0.0.1:")
        resp = await http.get(f"{svc.api_url}/api/v1/interfaces", headers=viewer, ssl=pki.client_context())
        assert resp.status == 200
        plain = svc.api_url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"{plain}/api/v1/interfaces", headers=viewer)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{svc.api_url}/healthz", ssl=ssl.create_default_context())

        # The CLI: --ca, $FICUS_CA, or the config's own certificate (pinned).
        env = {**os.environ, "FICUS_TOKEN": identities.tokens["viewer"]}
        result = await asyncio.to_thread(ficus, "routes", "--api", svc.api_url, "--ca", str(pki.ca_file), env=env)
        assert result.returncode == 0, result.stderr
        assert "his-charges" in result.stdout
        untrusted = await asyncio.to_thread(ficus, "routes", "--api", svc.api_url, env=env)
        assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        conf = tmp_path / "cli.toml"
        port = svc.api_url.rsplit(":", 1)[1]
        conf.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\ntls = {{ cert = "{pki.cert}", key = "{pki.key}" }}\n')
        pinned = await asyncio.to_thread(ficus, "routes", "-c", str(conf), env=env)
        assert pinned.returncode == 0, pinned.stderr

        # A certificate replaced on disk is served to the next connection, without a restart.
        (tmp_path / "rotated").mkdir()
        other = _pki(tmp_path / "rotated")
        for src, dst in ((other.cert, pki.cert), (other.key, pki.key)):
            staged = dst.with_suffix(".new")
            staged.write_bytes(src.read_bytes())
            os.replace(staged, dst)
        async with aiohttp.ClientSession() as fresh:
            resp = await fresh.get(f"{svc.api_url}/healthz", ssl=other.client_context())
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await fresh.get(f"{svc.api_url}/healthz", ssl=pki.client_context())
        # SIGHUP's path (ficus run calls Service.reload_certificates): the API's files are read again.
        assert svc.api_tls is not None
        before = svc.api_tls.reloads
        svc.reload_certificates()
        assert svc.api_tls.reloads == before + 1


async def test_mutual_tls_puts_the_client_subject_in_the_audit_record(
    nats_server: EmbeddedNats, identities: Identities, tmp_path: Path
) -> None:
    pki = _pki(tmp_path)
    clients_ca = trustme.CA()
    clients_ca_file = tmp_path / "clients-ca.pem"
    clients_ca.cert_pem.write_to_path(str(clients_ca_file))
    api = identities.api(tls={"cert": str(pki.cert), "key": str(pki.key), "client_ca": str(clients_ca_file),
                              "require_client_cert": True})
    operator = {"Authorization": f"Bearer {identities.tokens['operator']}"}
    async with served(nats_server.url, api) as svc, aiohttp.ClientSession() as http:
        without = pki.client_context()
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"{svc.api_url}/api/v1/events", headers=operator, ssl=without)
        with_cert = pki.client_context()
        clients_ca.issue_cert("lab-workstation-7", common_name="lab-workstation-7").configure_cert(with_cert)
        admin = {"Authorization": f"Bearer {identities.tokens['admin']}"}
        resp = await http.get(f"{svc.api_url}/api/v1/events", headers=admin, ssl=with_cert)
        assert resp.status == 200, await resp.text()
        records = (await (await http.get(f"{svc.api_url}/api/v1/audit", headers=admin, ssl=with_cert)).json()
                   )["records"]
        (read,) = [r for r in records if r["action"] == "events_list"]
        assert read["actor"] == identities.names["admin"]
        assert read["source"]["ip"] == "127.0.0.1" and "CN=lab-workstation-7" in read["source"]["cert"]


async def test_a_jwks_url_is_fetched_once_and_again_for_an_unknown_key_at_most_every_refresh(
    identities: Identities,
) -> None:
    from aiohttp import web

    from router.auth import JwtRefused, JwtVerifier
    from router.config import JwtConfig

    served_keys = [identities.key]
    hits: list[float] = []

    async def jwks(_request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        return web.json_response(KeySet(served_keys).as_dict(private=False))

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    verifier = JwtVerifier(JwtConfig(jwks_url=f"http://127.0.0.1:{port}/jwks", issuer=ISSUER, audience=AUDIENCE,
                                     jwks_refresh_seconds=3600))
    try:
        assert hits == [], "fetched on the first JWT, not before"
        assert (await verifier.verify(identities.jwt("viewer"))).name == JWT_USER
        assert (await verifier.verify(identities.jwt("admin"))).role == "admin"
        assert len(hits) == 1, "cached"
        # A key id nobody published: refused, and the URL is not asked again within the refresh time.
        rotated = RSAKey.generate_key(2048, parameters={"kid": "idp-2"})
        unknown = jwt.encode({"alg": "RS256", "kid": "idp-2"},
                             {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "ficus_role": "admin",
                              "exp": int(time.time()) + 60}, rotated)
        served_keys.append(rotated)
        for _ in range(5):
            with pytest.raises(JwtRefused):
                await verifier.verify(unknown)
        assert len(hits) == 1
        # Past the refresh time, the provider's rotation is picked up by the next unknown kid.
        now = [0.0]
        served_keys[:] = [identities.key]
        fresh = JwtVerifier(verifier.cfg.model_copy(update={"jwks_refresh_seconds": 60.0}),
                            monotonic=lambda: now[0])
        assert (await fresh.verify(identities.jwt("viewer"))).role == "viewer"
        served_keys.append(rotated)
        with pytest.raises(JwtRefused):
            await fresh.verify(unknown)
        assert len(hits) == 2
        now[0] += 61
        assert (await fresh.verify(unknown)).role == "admin"
        assert len(hits) == 3
        await fresh.close()
    finally:
        await verifier.close()
        await runner.cleanup()
