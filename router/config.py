"""The configuration tree: one TOML file, validated once at start-up with pydantic.

Each component receives only its own part. Secrets may be written as `env:NAME`; they
are resolved here, so a missing variable is a configuration error like any other.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from canonical.flat import FlatSpec
from canonical.hl7v2.fieldmap import FieldMap, FieldMapError, compile_field_map, load_field_map
from canonical.records import RecordMapping
from canonical.reference import validate_tables
from canonical.translate import Hl7Mapping, check_mapping, with_field_map
from router.gl_layout import GlExportSpec

Mode = Literal["legacy", "shadow", "modern"]
MODES: tuple[Mode, ...] = ("legacy", "shadow", "modern")
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists every one of them."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class ConfigFileError(ConfigError):
    """The file named as the configuration cannot be read as one (missing, a directory, not
    UTF-8): a usage error, where a ConfigError is a config with problems."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_hostport(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`host:port` (or `:port`, or `[::1]:port`) to a tuple; raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    host = host.strip("[]") or default_host
    return host, number


class EmbeddedNatsConfig(_Model):
    """The nats-server Ficus starts itself when `nats.url = "embedded"`."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    # JetStream's default flushes to disk every 2 minutes; "always" makes every PubAck durable.
    sync_interval: str | None = None
    store_dir: str | None = None


def readable_file(value: str) -> str:
    """`value` if it names a file Ficus can open; the error names the path, never what is in it."""
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{value}: {'not a file' if path.exists() else 'file not found'}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{value}: cannot read: {exc.strerror or type(exc).__name__}") from exc
    return value


def _head(value: str, limit: int = 64 * 1024) -> bytes:
    with Path(value).open("rb") as f:
        return f.read(limit)


class NatsTlsConfig(_Model):
    """TLS to an external NATS server: only `ca` is trusted (pinned); `cert` and `key` for a
    server that verifies its clients."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    """The name the server's certificate must carry, when it is not the URL's host."""

    @field_validator("ca", "cert", "key")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        return None if value is None else readable_file(value)

    @model_validator(mode="after")
    def _pair(self) -> NatsTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


EXTERNAL_ONLY_KEYS = ("tls", "nkey_seed_file", "creds_file")


class NatsConfig(_Model):
    """How Ficus reaches NATS, and the retention of what it stores there.

    An external server may need TLS (`tls`) and one credential: `user` + `password`, `token`,
    `nkey_seed_file` or `creds_file` (a JWT and its seed). The embedded server is neither:
    it listens on loopback only, in plain text, without credentials.
    """

    url: str = "embedded"
    embedded: EmbeddedNatsConfig = EmbeddedNatsConfig()
    tls: NatsTlsConfig | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_seconds: float = Field(default=600, gt=0)
    publish_timeout_seconds: float = Field(default=5, gt=0)
    start_timeout_seconds: float = Field(default=60, gt=0)
    # JetStream fast-ingest batches (nats-server 2.14+, router/fast_ingest.py) for file chunks and
    # row batches: streams of events and dead letters get `allow_batched` when the server takes
    # it. Off: every message acknowledged on its own (also the fallback on older servers). Off by
    # default: on one instance, MLLP ACKs waited behind the batches (bench.ack_under_ingest, 50 MB
    # 835 at 200 DFT/s: ACK p50 0.9-1.5 s with it on, 12 ms off); on for file- or row-only instances.
    fast_ingest: bool = False
    # The event index (FICUS_EVIDX, router/events_api.py): a copy of every event on a subject
    # that names interface and facility, for the API's interface and facility filters. Off by
    # default: it doubles the messages of every unit (a 50 MB 835: ingest 35 % slower, MLLP ACK
    # p99 over 50 ms; docs/benchmarks.md section 7).
    event_index: bool = False
    # The business-key index (FICUS_KEYS, router/keyindex.py): the message browser's lookups by
    # control id, account, encounter, claim and trace, written at each unit's commit. Off by
    # default, as the event index: a unit stores one more message per key value it carries.
    key_index: bool = False
    raw_max_age_days: float = Field(default=30, gt=0)
    events_max_age_days: float = Field(default=30, gt=0)
    dlq_max_age_days: float = Field(default=90, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value == "embedded":
            return value
        for number, part in enumerate(value.split(","), 1):
            if not re.match(r"^(nats|tls|ws|wss)://[^\s,]+$", part.strip()):
                # The part is not quoted: a URL may carry user:password@.
                raise ValueError(f"expected 'embedded' or a comma-separated list of nats://, tls://, ws:// or "
                                 f"wss:// URLs without spaces; part {number} is not one")
        return value

    @field_validator("nkey_seed_file")
    @classmethod
    def _seed_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        readable_file(value)
        seed = _head(value).strip()
        # A user seed is one line of 58 base32 characters starting SU (nkeys' encoding).
        if not (seed.startswith(b"SU") and len(seed) == 58 and seed.isalnum()):
            raise ValueError(f"{value}: does not hold a user nkey seed (one line starting with SU, as "
                             "nsc or nk -gen user writes it)")
        return value

    @field_validator("creds_file")
    @classmethod
    def _creds_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        readable_file(value)
        head = _head(value)
        # nats-py reads these two blocks (and waits forever for a JWT block that is not there).
        if b"BEGIN NATS USER JWT" not in head or b"BEGIN USER NKEY SEED" not in head:
            raise ValueError(f"{value}: not a .creds file (it needs a NATS USER JWT block and a USER NKEY SEED "
                             "block, as nsc writes them)")
        return value

    @model_validator(mode="after")
    def _secured(self) -> NatsConfig:
        if self.url == "embedded":
            given = [key for key in EXTERNAL_ONLY_KEYS if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for an external NATS server (nats.url = \"tls://...\"); "
                                 "the embedded server listens on loopback only, in plain text")
            if not is_loopback(self.embedded.host):
                # It has neither TLS nor credentials: reachable from the network, it would serve PHI to anyone.
                raise ValueError(f"embedded.host {self.embedded.host} is not a loopback address: the embedded server "
                                 "has no TLS and no credentials; reach NATS over a network with an external "
                                 "cluster (nats.url, nats.tls)")
            return self
        kinds = self.credential_kinds()
        if len(kinds) > 1:
            raise ValueError(f"give one NATS credential, not {' and '.join(kinds)}")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if self.tls is not None:
            plain = [n for n, part in enumerate(self.servers, 1) if part.startswith("ws://")]
            if plain:
                raise ValueError(f"nats.tls is set but part {plain[0]} of nats.url is ws:// (plain); use wss://")
        return self

    def credential_kinds(self) -> list[str]:
        """The kinds of credential configured (names of keys, never values)."""
        kinds = []
        if self.user is not None or self.password is not None:
            kinds.append("user/password")
        if self.token is not None:
            kinds.append("token")
        if self.nkey_seed_file is not None:
            kinds.append("nkey_seed_file")
        if self.creds_file is not None:
            kinds.append("creds_file")
        if self.url != "embedded" and any(_USERINFO.search(part) for part in self.servers):
            kinds.append("credentials in nats.url")
        return kinds

    @property
    def servers(self) -> list[str]:
        return [p.strip() for p in self.url.split(",")]


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


INSECURE_WARNING = ("api.insecure = true: the API on {listen} has no tokens; anyone who can reach it can read "
                    "events and dead letters, flip routes and replay")
CLEARTEXT_WARNING = ("api.insecure = true: the API on {listen} has no api.tls; its tokens and the messages it "
                     "serves cross the network in clear text")
Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# The shortest `token` accepted for a named client: 128 bits of token_urlsafe are 22 characters.
MIN_CLIENT_TOKEN = 22


class ApiClientConfig(_Model):
    """One named API client (`[[api.clients]]`): who it is, its role, and its token's SHA-256."""

    name: str
    role: Role
    token_sha256: str | None = None
    # A secret: only as `env:NAME` in practice (a literal in the file is accepted, not advised).
    token: str | None = None
    # Message content for a consumer (an ERP, a BI tool): the event pages and feed and the status
    # lookups, whatever the role, each read audited. A viewer with it still cannot flip or replay.
    content: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CLIENT_NAME.match(value):
            raise ValueError("client names are 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                             "letter or digit")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_HEX.match(value):
            raise ValueError("token_sha256 is the SHA-256 of the token in hex (64 characters), e.g. "
                             "printf %s TOKEN | sha256sum")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_token(self) -> ApiClientConfig:
        if (self.token_sha256 is None) == (self.token is None):
            raise ValueError(f"client {self.name}: give token_sha256 or token (env:NAME), one of them")
        if self.token is not None and len(self.token) < MIN_CLIENT_TOKEN:
            raise ValueError(f"client {self.name}: the token is shorter than {MIN_CLIENT_TOKEN} characters; make "
                             "one with python -c 'import secrets;print(secrets.token_urlsafe(32))'")
        return self


class JwtConfig(_Model):
    """Bearer JWTs from an identity provider, verified against its JWKS (`api.jwt`)."""

    jwks_file: str | None = None
    jwks_url: str | None = None
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    role_claim: str = Field(default="ficus_role", min_length=1)
    name_claim: str = Field(default="sub", min_length=1)
    # A token whose `scope` (or `scp`) holds this reads the consumer API's content, as a client
    # with `content = true` does.
    content_scope: str = Field(default="ficus.content", min_length=1)
    leeway_seconds: float = Field(default=30, ge=0, le=300)
    # A key id not in the cached set refetches the JWKS URL, at most once per this many seconds
    # (a token with a made-up kid cannot make Ficus hammer the identity provider).
    jwks_refresh_seconds: float = Field(default=60, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("api.jwt needs jwks_file or jwks_url, one of them")
        if self.jwks_url is not None:
            scheme, _, rest = self.jwks_url.partition("://")
            host = rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
            if scheme != "https" and not (scheme == "http" and is_loopback(host)):
                raise ValueError("api.jwt.jwks_url must be https:// (http:// only on a loopback address)")
        return self


class ApiTlsConfig(_Model):
    """HTTPS for the API (`api.tls`): certificate and key, optionally client certificates (mutual TLS)."""

    cert: str
    key: str
    client_ca: str | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _client_ca(self) -> ApiTlsConfig:
        if self.require_client_cert and not self.client_ca:
            raise ValueError("require_client_cert = true needs client_ca (the CA bundle client certificates "
                             "are checked against)")
        return self


class ApiConfig(_Model):
    """The HTTP API and dashboard."""

    listen: str = "127.0.0.1:8080"
    # Deprecated: two shared tokens, served as the clients named "viewer" and "operator".
    tokens: dict[Literal["viewer", "operator"], Annotated[str, Field(min_length=1)]] = {}
    clients: list[ApiClientConfig] = []
    jwt: JwtConfig | None = None
    tls: ApiTlsConfig | None = None
    # Requests per minute and client (token bucket, bursts up to the same figure); 0: no limit.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # An API without credentials or TLS on a non-loopback address: see exposure_problem.
    insecure: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @model_validator(mode="after")
    def _exposed(self) -> ApiConfig:
        names = [c.name for c in self.clients] + list(self.tokens)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"api client name used twice: {', '.join(twice)} (api.tokens are the clients "
                             "named viewer and operator)")
        problem = self.exposure_problem()
        if problem:
            raise ValueError(problem)
        return self

    @property
    def credentials(self) -> bool:
        """Whether any credential is configured; without one the API is open (loopback only)."""
        return bool(self.tokens or self.clients or self.jwt)

    def exposure_problem(self) -> str | None:
        """Why this API may not run as configured (open or in clear text on the network), or None."""
        host, _ = self.host_port
        if self.insecure or is_loopback(host):
            return None
        if not self.credentials:
            return (f"listen {self.listen} is not a loopback address and no credentials are configured "
                    "(api.clients, api.jwt or api.tokens): anyone on the network could flip routes; set them "
                    "and api.tls (or api.insecure = true to accept that)")
        if self.tls is None:
            return (f"listen {self.listen} is not a loopback address and api.tls is not set: tokens and patient "
                    "data would cross the network in clear text; set api.tls (or api.insecure = true to accept "
                    "that)")
        return None

    def insecure_warning(self) -> str | None:
        """The WARNING logged at every start when api.insecure lets an exposed API run anyway."""
        host, _ = self.host_port
        if not self.insecure:
            return None
        if not self.credentials:
            return INSECURE_WARNING.format(listen=self.listen)
        if self.tls is None and not is_loopback(host):
            return CLEARTEXT_WARNING.format(listen=self.listen)
        return None

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_hostport(self.listen)


class AuditConfig(_Model):
    """The audit trail (`[audit]`): JetStream stream FICUS_AUDIT, append-only."""

    # Six years: the HIPAA retention for documentation (45 CFR 164.316(b)(2)).
    retention_days: float = Field(default=2190, gt=0)


class TracingConfig(_Model):
    """OpenTelemetry traces (`[tracing]`, router/tracing.py): off unless `otlp_endpoint` is set."""

    otlp_endpoint: str | None = None
    """The OTLP/HTTP traces URL of a collector, e.g. `http://127.0.0.1:4318/v1/traces`."""
    service_name: str = Field(default="ficus", min_length=1)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of units traced (new traces; a unit continues its inbound trace's decision)."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected an http:// or https:// URL (the collector's /v1/traces)")
        return value


class ViewsConfig(_Model):
    """The status lookups' views (`[views]`, router/views.py)."""

    # Off by default: the views consumer now writes kilobytes per entry per batch and yields the
    # loop to file ingest (router/views.py), but on this shared machine a 50 MB 835 still gave an
    # ACK p99 of about 200 ms with it on (docs/benchmarks.md section 7), above the 100 ms target.
    enabled: bool = False


class PostingConfig(_Model):
    """Claims-to-cash posting (`[posting]`, issue 15): the live posting consumer and GL parity."""

    rules: str | None = None
    """The posting rules TOML (canonical/posting; relative paths are from the config file)."""
    enabled: bool = False
    """Run the durable posting consumer `ficus-posting` (router/posting.py)."""
    mode: Literal["shadow", "live", "follow"] = "shadow"
    """Where entries go: `shadow.canonical.finance...`, live `canonical.finance...`, or `follow` the
    route of `gl_interface` (modern: live; legacy or shadow: shadow). An entry of a shadow event is
    always shadow."""
    gl_interface: str | None = None
    """The legacy GL export interface (format "gl-export"): GL parity's reference."""
    gate_days: int = Field(default=3, ge=1, le=366)
    """Consecutive export days at zero difference before `gl_interface` may flip to modern."""
    batch: int = Field(default=100, ge=1, le=1000)
    ack_wait_seconds: float = Field(default=30, gt=0)
    base_dir: str = "."

    @model_validator(mode="after")
    def _rules(self) -> PostingConfig:
        if self.enabled and not self.rules:
            raise ValueError("enabled = true needs rules (the posting rules file)")
        if self.mode == "follow" and self.gl_interface is None:
            raise ValueError("mode 'follow' follows the route of gl_interface: set gl_interface")
        return self

    def rules_path(self) -> Path | None:
        return None if self.rules is None else Path(self.base_dir) / self.rules


class InterfaceBase(_Model):
    """What every interface has, whatever its kind."""

    name: str
    route: Mode = "legacy"
    description: str = ""
    timezone: str = "UTC"
    parity_gate: float = Field(default=0.99, ge=0, le=1)
    parity_min_samples: int = Field(default=20, ge=0)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("interface names are slugs: lowercase letters, digits, - and _")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class SiteMapped(_Model):
    """An HL7 v2 interface's site map (`field_map`, canonical/hl7v2/fieldmap.py): a TOML file
    (relative to the config file) or an inline `[interfaces.field_map]` table, compiled here,
    once, so `ficus check` names a bad path by its key and the hot path only reads fields."""

    mapping: str = "hl7v2"
    field_map: str | dict[str, Any] | None = None
    _site_map: FieldMap | None = PrivateAttr(default=None)
    _site_mapping: Hl7Mapping | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile_field_map(self, info: ValidationInfo) -> SiteMapped:
        if self.field_map is None:
            return self
        if getattr(self, "format", "hl7v2") != "hl7v2":
            raise ValueError("field_map is for HL7 v2 interfaces (format 'hl7v2')")
        base = Path((info.context or {}).get("config_dir", "."))
        try:
            site = (load_field_map(base / self.field_map) if isinstance(self.field_map, str)
                    else compile_field_map(self.field_map, "inline"))
            self._site_mapping = with_field_map(self.mapping, site)
        except FieldMapError as exc:
            raise ValueError(f"field_map: {exc}") from None
        except ValueError as exc:  # a mapping the site map cannot apply to
            raise ValueError(f"field_map: {exc}") from None
        self._site_map = site
        return self

    @property
    def site_map(self) -> FieldMap | None:
        """The compiled site map, None without one."""
        return self._site_map

    @property
    def hl7_mapping(self) -> str | Hl7Mapping:
        """What translate_hl7 takes for this interface: the mapping's name, or the mapping
        compiled with the interface's site map."""
        return self._site_mapping if self._site_mapping is not None else self.mapping


class MllpTlsConfig(_Model):
    """TLS on an hl7-mllp listener (`tls`): PEM certificate chain and key; with `client_ca`,
    client certificates are verified against that bundle (mutual TLS), and required with
    `require_client_cert`. The files are read at start and again when they change or at SIGHUP."""

    cert: str
    key: str
    client_ca: str | None = None
    require_client_cert: bool = False
    # A client that connects and does not finish its handshake holds a connection slot until then.
    handshake_timeout_seconds: float = Field(default=10, gt=0, le=300)

    @model_validator(mode="after")
    def _client_ca(self) -> MllpTlsConfig:
        if self.require_client_cert and not self.client_ca:
            raise ValueError("require_client_cert = true needs client_ca (the CA bundle client certificates "
                             "are checked against)")
        return self


class LegacyTlsConfig(_Model):
    """TLS to the legacy MLLP engine (`legacy_tls`): only `ca` is trusted (pinned, no system store);
    `cert` and `key` for an engine that verifies its clients; `server_name`, the name the engine's
    certificate must carry when it is not the host of `legacy`."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> LegacyTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self



def checked_mapping(value: str) -> str:
    """An HL7 mapping name the translator knows (built-in or entry point), for a config validator."""
    try:
        check_mapping(value)
    except (KeyError, ValueError) as exc:
        raise ValueError(str(exc).strip("'\"")) from exc
    return value


def checked_codec(value: str | None) -> str | None:
    """A text encoding Python knows (or None), for a config validator."""
    import codecs

    if value is not None:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
    return value

class MllpInterfaceConfig(InterfaceBase, SiteMapped):
    """An HL7 v2 feed over MLLP: Ficus listens where the legacy engine used to."""

    kind: Literal["hl7-mllp"]
    format: Literal["hl7v2"] = "hl7v2"
    listen: str
    mapping: str = "hl7v2"
    # validate_default: a missing destination is checked against the route too.
    legacy: str | None = Field(default=None, validate_default=True)
    encoding: str = "utf-8"
    fallback_encoding: str | None = "windows-1252"
    on_untranslatable: Literal["AE", "AA"] = "AE"
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # 120 s: senders reconnect on their own; idle sockets must not pile up (issue 10 item 8).
    idle_timeout_seconds: float | None = Field(default=120, gt=0)
    # Connections beyond it are closed at once and counted (ListenerStats.refused).
    max_connections: int = Field(default=128, ge=1, le=65536)
    # How long a final 0x1C waits for its 0x0D before it ends the frame anyway.
    frame_end_grace_seconds: float = Field(default=0.5, gt=0, le=30)
    legacy_connections: int = Field(default=2, ge=1, le=64)
    legacy_connect_timeout_seconds: float = Field(default=5, gt=0)
    legacy_ack_timeout_seconds: float = Field(default=30, gt=0)
    tls: MllpTlsConfig | None = None
    legacy_tls: LegacyTlsConfig | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_hostport(value, default_host="0.0.0.0")
        return value

    @model_validator(mode="after")
    def _legacy_tls(self) -> MllpInterfaceConfig:
        if self.legacy_tls is not None and self.legacy is None:
            raise ValueError("legacy_tls is set but there is no legacy destination (key 'legacy')")
        return self

    @field_validator("legacy")
    @classmethod
    def _legacy(cls, value: str | None, info: ValidationInfo) -> str | None:
        route = info.data.get("route", "legacy")
        if value is None and route in ("legacy", "shadow"):
            raise ValueError(f"route {route!r} needs a legacy destination (key 'legacy')")
        if value is not None:
            if not value.startswith("mllp://"):
                raise ValueError("the legacy destination of an hl7-mllp interface is mllp://host:port")
            parse_hostport(value.removeprefix("mllp://"))
        return value

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: str) -> str:
        return checked_mapping(value)

    @field_validator("encoding", "fallback_encoding")
    @classmethod
    def _codec(cls, value: str | None) -> str | None:
        return checked_codec(value)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.listen, default_host="0.0.0.0")

    @property
    def legacy_host_port(self) -> tuple[str, int] | None:
        if self.legacy is None:
            return None
        return parse_hostport(self.legacy.removeprefix("mllp://"))


class ReferenceConfig(_Model):
    """Reference tables (CSV) used to enrich events; relative paths are from the config file."""

    payers: str | None = None
    charge_codes: str | None = None
    departments: str | None = None
    facilities: str | None = None
    reload_seconds: float = Field(default=5, gt=0)
    base_dir: str = "."

    def paths(self) -> dict[str, Path]:
        """Table name -> file, for the tables that are configured."""
        tables = {"payers": self.payers, "charge_codes": self.charge_codes,
                  "departments": self.departments, "facilities": self.facilities}
        return {name: Path(self.base_dir) / value for name, value in tables.items() if value}


class SftpConfig(_Model):
    """An SFTP server: a pinned known_hosts is required (unknown host keys are refused)."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: str | None = None
    private_key: str | None = None
    private_key_passphrase: str | None = None
    known_hosts: str
    connect_timeout_seconds: float = Field(default=10, gt=0)
    operation_timeout_seconds: float = Field(default=30, gt=0)
    reconnect_max_backoff_seconds: float = Field(default=60, gt=0)

    @model_validator(mode="after")
    def _auth(self) -> SftpConfig:
        if self.password is None and self.private_key is None:
            raise ValueError("give password or private_key (env: allowed)")
        return self


class FileInterfaceBase(InterfaceBase, SiteMapped):
    """What folder and SFTP interfaces share: which files, when complete, what then."""

    path: str
    patterns: list[str] = ["*"]
    poll_seconds: float = Field(default=5, gt=0)
    complete: Literal["stable", "marker", "rename"] = "stable"
    stable_seconds: float = Field(default=10, ge=0)
    marker_suffix: str = ".done"
    format: Literal["csv", "fixed-width", "x12-835", "gl-export", "hl7v2"]
    flat: FlatSpec | None = None
    # format "hl7v2": files of HL7 v2 messages, FHS/BHS batches or not; each message is a unit,
    # translated as an hl7-mllp interface with these settings would (router/file_units.py).
    mapping: str = "hl7v2"
    encoding: str = "utf-8"
    fallback_encoding: str | None = "windows-1252"
    # A batch acknowledgement (FHS, BHS, an ACK per message, BTS, FTS) per file Ficus translates,
    # named <file><ack_suffix>, in ack_dir (a local directory) or else the legacy destination.
    ack_file: bool = False
    ack_dir: str | None = None
    ack_suffix: str = ".ack"
    # format "gl-export": the legacy GL export, stored as GL parity's reference (router/gl_export.py).
    gl: GlExportSpec | None = None
    after: Literal["archive", "delete", "leave"] = "archive"
    archive_dir: str | None = None
    # "in-place", a local directory, or sftp://host[:port]/dir (with legacy_sftp settings).
    legacy: str | None = Field(default=None, validate_default=True)
    legacy_sftp: SftpConfig | None = None
    dedupe_content: bool = True
    spool_dir: str | None = None
    # Each file's chunks translated in a child process of the interface (router/file_child.py),
    # this process only committing them: the two no longer share one GIL (issue 19). Off by default.
    translate_process: bool = False
    # A file that cannot be processed (unreadable, legacy name occupied) is retried alone for
    # this long, then dead-lettered; the files behind it flow meanwhile.
    stuck_after_seconds: float = Field(default=3600, gt=0)

    @field_validator("legacy")
    @classmethod
    def _legacy(cls, value: str | None, info: ValidationInfo) -> str | None:
        route = info.data.get("route", "legacy")
        if value is None and route in ("legacy", "shadow"):
            raise ValueError(f"route {route!r} needs a legacy destination (key 'legacy')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FileInterfaceBase:
        problems = []
        if self.format in ("csv", "fixed-width") and self.flat is None:
            problems.append(f"format {self.format!r} needs a [interfaces.flat] layout and mapping")
        if (self.format == "gl-export") != (self.gl is not None):
            problems.append("format 'gl-export' needs an [interfaces.gl] layout and fields; gl is for that "
                            "format only")
        if self.flat is not None and self.flat.layout.kind != self.format:
            problems.append(f"flat.layout.kind {self.flat.layout.kind!r} is not the format {self.format!r}")
        if self.ack_file and self.format != "hl7v2":
            problems.append("ack_file is for format 'hl7v2' only")
        if self.ack_file and self.ack_dir is None and self.legacy in (None, "in-place"):
            problems.append("ack_file needs ack_dir (a local directory) when there is no legacy destination "
                            "directory to write it next to")
        if not self.ack_suffix or "/" in self.ack_suffix or self.ack_suffix in (".", ".."):
            problems.append("ack_suffix must be a non-empty file name suffix without '/'")
        if self.after == "archive" and not self.archive_dir:
            problems.append("after = 'archive' needs archive_dir")
        if self.legacy == "in-place" and self.after != "leave":
            problems.append("legacy = 'in-place' (the legacy consumer reads the source) needs after = 'leave'")
        if self.legacy and self.legacy.startswith("sftp://") and self.legacy_sftp is None:
            problems.append("an sftp:// legacy destination needs [interfaces.legacy_sftp]")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("mapping")
    @classmethod
    def _file_mapping(cls, value: str) -> str:
        return checked_mapping(value)

    @field_validator("encoding", "fallback_encoding")
    @classmethod
    def _file_codec(cls, value: str | None) -> str | None:
        return checked_codec(value)



class FolderInterfaceConfig(FileInterfaceBase):
    """A local drop directory (watchdog, with a scan at start-up)."""

    kind: Literal["folder"]


class SftpInterfaceConfig(FileInterfaceBase):
    """A remote directory polled over SFTP."""

    kind: Literal["sftp"]
    sftp: SftpConfig


class OdbcInterfaceConfig(InterfaceBase):
    """A legacy database job: a table or view read over ODBC with a durable watermark.

    `query` is a SELECT without ORDER BY or LIMIT; Ficus wraps it with the watermark
    condition and `?` parameters (see wrappers/odbc_poller.py). Ficus only reads, so the
    legacy job keeps working; in modern mode `mark_statement` (e.g. `UPDATE usage SET
    exported = 1 WHERE id = ?`) marks each batch the way the legacy job did.
    """

    kind: Literal["odbc"]
    format: Literal["rows"] = "rows"
    connection_string: str
    query: str
    table: str = Field(description="named in dead letters and events")
    watermark: Literal["incrementing", "timestamp+key"] = "incrementing"
    key_column: str
    timestamp_column: str | None = None
    safety_lag_seconds: float = Field(default=5, ge=0)
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    poll_seconds: float = Field(default=2, gt=0)
    query_timeout_seconds: float = Field(default=30, gt=0)
    reconnect_max_backoff_seconds: float = Field(default=60, gt=0)
    limit_clause: Literal["offset-fetch", "none"] = "offset-fetch"
    mark_statement: str | None = None
    mapping: RecordMapping
    # The legacy job is the legacy path: Ficus never writes unless mark_statement is set.
    legacy: str | None = "job"

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        found = ordering_clauses(value)
        if found:
            raise ValueError(f"{' and '.join(found)} not allowed: Ficus orders by the watermark and limits each "
                             "batch itself (limit_clause, batch_size); write the query without ORDER BY, LIMIT, "
                             "OFFSET, FETCH FIRST or TOP")
        return value

    @model_validator(mode="after")
    def _timestamp(self) -> OdbcInterfaceConfig:
        if self.watermark == "timestamp+key" and not self.timestamp_column:
            raise ValueError("watermark 'timestamp+key' needs timestamp_column")
        return self


# What may not end an ODBC `query`: Ficus appends its own ordering and limit to it.
_ORDERING = (
    ("ORDER BY", re.compile(r"\border\s+by\b", re.I)),
    ("LIMIT", re.compile(r"\blimit\b", re.I)),
    ("OFFSET", re.compile(r"\boffset\s+(\d|\?|:)", re.I)),  # MariaDB allows a column called offset
    ("FETCH FIRST", re.compile(r"\bfetch\s+(first|next)\b", re.I)),
    ("TOP", re.compile(r"^\s*select\s+(distinct\s+)?top\b", re.I)),
)
_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.S)


def ordering_clauses(query: str) -> list[str]:
    """The ordering or limiting clauses of `query` itself (not of a subquery, a string or a comment)."""
    text = _LITERAL.sub(" ", query)
    top, depth = [], 0
    for ch in text:  # keep only the characters outside parentheses
        depth += ch == "("
        top.append(ch if depth == 0 else " ")
        depth -= ch == ")" and depth > 0
    outer = "".join(top)
    return [name for name, pattern in _ORDERING if pattern.search(outer)]


class SinkFilter(_Model):
    """Which events a sink gets: every list empty means all; within a list any entry matches."""

    types: list[Annotated[str, Field(min_length=1)]] = []
    """CloudEvents type prefixes by whole dotted segments (`org.ficus.revenue`,
    `org.ficus.revenue.charge.posted.v1`); they become the consumer's subject filters."""
    interfaces: list[str] = []
    facilities: list[str] = []

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for prefix in value:
            parts = prefix.split(".")
            if parts[:2] != ["org", "ficus"] or len(parts) < 3 or len(parts) > 6 or not all(parts):
                raise ValueError(f"{prefix!r} is not a type prefix (org.ficus.<domain>[.<entity>[.<action>[.vN]]])")
        return value


class SinkOAuth2Config(_Model):
    """OAuth2 client credentials (RFC 6749 4.4): the token is cached and fetched again before it expires."""

    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    scope: str | None = None

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return https_url(value)


class SinkAuthConfig(_Model):
    """How a sink proves itself to the receiver: a bearer token or OAuth2, one of them."""

    bearer_token: str | None = Field(default=None, min_length=1)
    oauth2: SinkOAuth2Config | None = None

    @model_validator(mode="after")
    def _one(self) -> SinkAuthConfig:
        if (self.bearer_token is None) == (self.oauth2 is None):
            raise ValueError("give one of bearer_token or oauth2")
        return self


class SinkRetryConfig(_Model):
    max_age_seconds: float = Field(default=86400, gt=0)
    """An event still not accepted this long after its first attempt is dead-lettered."""
    backoff_base_seconds: float = Field(default=1, gt=0)
    backoff_max_seconds: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _order(self) -> SinkRetryConfig:
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must be at least backoff_base_seconds")
        return self


class SinkConfig(_Model):
    """One push destination (`[[sinks]]`): canonical events POSTed as CloudEvents (router/sinks.py)."""

    name: str
    url: str
    events: Literal["live", "shadow"] = "live"
    mode: Literal["single", "batch"] = "single"
    batch_size: int = Field(default=100, ge=1, le=1000)
    filter: SinkFilter = SinkFilter()
    auth: SinkAuthConfig | None = None
    signing_secret: str | None = None
    """Standard Webhooks secret, `whsec_` + base64 (give it as env:NAME)."""
    max_in_flight: int = Field(default=8, ge=1, le=256)
    timeout_seconds: float = Field(default=10, gt=0, le=300)
    retry: SinkRetryConfig = SinkRetryConfig()

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("sink name must be a lowercase slug ([a-z0-9_-])")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return https_url(value)

    @field_validator("signing_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except ValueError:  # binascii.Error is one
            raise ValueError("signing_secret must be whsec_ followed by base64") from None
        if len(key) < 24:
            raise ValueError("signing_secret must hold at least 24 bytes (192 bits)")
        return value


def https_url(value: str) -> str:
    """An https URL, or http to a loopback host only (a receiver on this machine, a test)."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("expected an https:// URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("plain http is allowed to a loopback host only; use https")
    return value


AlertKind = Literal["silent", "dead_letters", "parity", "legacy_errors", "nats_unavailable", "sink_lag",
                    "sftp_auth", "cert_expiry"]
Process = Literal["claims-to-cash", "supply", "workforce"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class AlertScheduleConfig(_Model):
    """When a silent feed matters: days and a clock range in a time zone (end exclusive)."""

    days: list[Weekday] = ["mon", "tue", "wed", "thu", "fri"]
    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if value != "24:00" and not _CLOCK.match(value):
            raise ValueError("expected a time of day as HH:MM (24-hour clock, end may be 24:00)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as America/Chicago)") from None
        return value


class AlertWebhookConfig(_Model):
    """A webhook alerts are POSTed to (`[[alerting.webhooks]]`)."""

    name: str
    url: str
    format: Literal["json", "slack", "teams"] = "json"
    bearer_token: str | None = Field(default=None, min_length=1)
    timeout_seconds: float = Field(default=10, gt=0, le=120)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("target name must be a lowercase slug ([a-z0-9_-])")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return https_url(value)


class AlertEmailConfig(_Model):
    """An SMTP relay alerts are mailed through (`[[alerting.email]]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "plain"] = "starttls"
    """plain (no TLS) only to a loopback relay: alerts name facilities and money."""
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = Field(default=10, gt=0, le=120)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("target name must be a lowercase slug ([a-z0-9_-])")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("from must be an e-mail address")
        return value

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        for number, address in enumerate(value, 1):
            if not _EMAIL.match(address):
                raise ValueError(f"to: entry {number} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _secure(self) -> AlertEmailConfig:
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError("security = \"plain\" is allowed to a loopback relay only; use starttls or tls")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class AlertingConfig(_Model):
    """How often alert rules are evaluated, and the targets they notify (by name)."""

    evaluate_seconds: float = Field(default=15, gt=0, le=3600)
    delivery_attempts: int = Field(default=3, ge=1, le=10)
    """Tries per notice and target within one evaluation; a notice still not delivered is tried
    again at the next evaluation."""
    claim_seconds: float = Field(default=120, gt=0)
    """A notice claimed by an instance that stopped before delivering it is taken over after this."""
    webhooks: list[AlertWebhookConfig] = []
    email: list[AlertEmailConfig] = []

    @model_validator(mode="after")
    def _names(self) -> AlertingConfig:
        names_ = [t.name for t in self.webhooks] + [t.name for t in self.email]
        twice = sorted({n for n in names_ if names_.count(n) > 1})
        if twice:
            raise ValueError(f"alerting target name {twice[0]!r} is used twice")
        return self


_KIND_NEEDS: dict[str, tuple[str, ...]] = {
    "silent": ("silent_minutes",),
    "sink_lag": ("sink", "lag"),
    "cert_expiry": ("days",),
}


class AlertRuleConfig(_Model):
    """One alert rule (`[[alerts]]`), evaluated by router/alerts.py."""

    name: str
    kind: AlertKind
    interfaces: list[str] = []
    """The interfaces it watches; empty: every interface (the kind applies to)."""
    facilities: list[str] = []
    """Only these facilities (dead letters, parity by facility route); empty: all."""
    process: Process | None = None
    """The business process named in the alert; default from the interfaces' event types."""
    silent_minutes: float | None = Field(default=None, gt=0)
    schedule: AlertScheduleConfig | None = None
    """silent: only inside this schedule (none: always)."""
    count: int | None = Field(default=None, ge=1)
    """dead_letters: this many in the window (either this or money); legacy_errors: failures (default 1)."""
    money: str | None = None
    """dead_letters: this much money at risk in the window (a decimal)."""
    window_minutes: float = Field(default=60, gt=0)
    min_samples: int = Field(default=10, ge=1)
    """parity: samples in the window before the ratio is judged."""
    below: float | None = Field(default=None, gt=0, le=1)
    """parity: the ratio that fires (default: the interface's parity_gate)."""
    minutes: float = Field(default=1, gt=0)
    """nats_unavailable: disconnected this long."""
    sink: str | None = None
    lag: int | None = Field(default=None, ge=1)
    days: float | None = Field(default=None, gt=0)
    """cert_expiry: a certificate expiring within this many days."""
    repeat_minutes: float = Field(default=60, gt=0)
    max_repeats: int = Field(default=3, ge=0, le=100)
    """Reminders while it fires, at most every repeat_minutes; then silent until resolved."""
    notify: list[str] = Field(default=[], min_length=1)
    """Names of [[alerting.webhooks]] / [[alerting.email]] targets."""

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("alert name must be a lowercase slug ([a-z0-9_-])")
        return value

    @field_validator("money")
    @classmethod
    def _money(cls, value: str | None) -> str | None:
        from decimal import Decimal, InvalidOperation

        if value is None:
            return None
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise ValueError("money must be a decimal such as \"1000.00\"") from None
        if not amount.is_finite() or amount <= 0:
            raise ValueError("money must be a positive decimal")
        return value

    @model_validator(mode="after")
    def _kind(self) -> AlertRuleConfig:
        missing = [key for key in _KIND_NEEDS.get(self.kind, ()) if getattr(self, key) is None]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {' and '.join(missing)}")
        if self.kind == "dead_letters" and self.count is None and self.money is None:
            raise ValueError("kind 'dead_letters' needs count or money (or both)")
        if self.kind != "silent" and self.schedule is not None:
            raise ValueError("schedule is for kind 'silent' only")
        return self


FileInterfaceConfig = FolderInterfaceConfig | SftpInterfaceConfig
InterfaceConfig = Annotated[
    MllpInterfaceConfig | FolderInterfaceConfig | SftpInterfaceConfig | OdbcInterfaceConfig,
    Field(discriminator="kind"),
]


def _default_instance() -> str:
    import os
    import socket
    return f"{socket.gethostname()}-{os.getpid()}"


MAX_WORKERS = 64


def worker_suffix(k: int) -> str:
    """What a worker's instance name adds to `cluster.instance` (`-w2` for worker 2)."""
    return f"-w{k}"


class ClusterConfig(_Model):
    """Several Ficus instances on one NATS (cluster): who they are and how polling is shared.

    Folder, SFTP and ODBC interfaces are polled by one instance at a time, the holder of the
    interface's lease in KV `ficus-leases`; MLLP listeners run on every instance.
    """

    instance: str = Field(default_factory=_default_instance, min_length=1, max_length=100,
                          pattern=r"^[A-Za-z0-9_.:-]+$")
    """This instance's name in leases, `/api/v1/instances` and the dashboard (default: host-pid)."""
    lease_seconds: float = Field(default=15.0, ge=2, le=3600)
    """A poller's lease lives this long unless renewed; another instance takes the interface over
    at most `lease_seconds + renew_seconds` after its owner stopped renewing."""
    renew_seconds: float = Field(default=5.0, gt=0)
    """How often the owner renews its leases (and each instance its heartbeat)."""
    drain_seconds: float = Field(default=0.0, ge=0, le=3600)
    """At SIGTERM, `/readyz` answers 503 "draining" at once and the MLLP listeners keep serving
    this long before the shutdown proceeds, so a load balancer moves senders away first."""

    @model_validator(mode="after")
    def _renew(self) -> ClusterConfig:
        if self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError("renew_seconds must be at most half of lease_seconds")
        return self


class FicusConfig(_Model):
    """The whole configuration file."""

    state_dir: str = ".ficus"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line (router/logjson.py)."""
    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    """At SIGTERM/Ctrl-C, work in flight gets this long; then it is abandoned (not acknowledged,
    redone at the next start) and `ficus run` exits with code 1."""
    nats: NatsConfig = NatsConfig()
    api: ApiConfig = ApiConfig()
    audit: AuditConfig = AuditConfig()
    views: ViewsConfig = ViewsConfig()
    tracing: TracingConfig = TracingConfig()
    reference: ReferenceConfig = ReferenceConfig()
    interfaces: list[InterfaceConfig] = []
    sinks: list[SinkConfig] = []
    posting: PostingConfig = PostingConfig()
    alerting: AlertingConfig = AlertingConfig()
    alerts: list[AlertRuleConfig] = []
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    """`ficus run` with more than one: that many worker processes under one supervisor
    (router/workers.py), sharing the MLLP ports and the polling leases."""

    @model_validator(mode="after")
    def _workers(self) -> FicusConfig:
        if self.workers == 1:
            return self
        suffix = len(worker_suffix(self.workers))
        if len(self.cluster.instance) + suffix > 100:
            raise ValueError(f"workers: cluster.instance is too long for worker names (at most {100 - suffix} "
                             "characters, each worker is <instance>-w<k>)")
        for iface in self.interfaces:
            if isinstance(iface, MllpInterfaceConfig) and iface.listen_host_port[1] == 0:
                # Port 0 would give each worker a port of its own: senders could reach only one.
                raise ValueError(f"workers: interface {iface.name!r} listens on port 0; workers share a fixed port")
        return self

    @model_validator(mode="after")
    def _gl_interface(self) -> FicusConfig:
        name = self.posting.gl_interface
        if name is not None:
            found = [i for i in self.interfaces if i.name == name]
            if not found:
                raise ValueError(f"posting.gl_interface: no interface named {name!r}")
            if found[0].format != "gl-export":
                raise ValueError(f"posting.gl_interface: {name!r} has format {found[0].format!r}, not 'gl-export'")
        return self

    @model_validator(mode="after")
    def _alerts(self) -> FicusConfig:
        targets = {t.name for t in self.alerting.webhooks} | {t.name for t in self.alerting.email}
        interfaces = {i.name for i in self.interfaces}
        sinks = {s.name for s in self.sinks}
        seen: set[str] = set()
        for rule in self.alerts:
            where = f"alerts[{rule.name}]"
            if rule.name in seen:
                raise ValueError(f"{where}: the alert name is used twice")
            seen.add(rule.name)
            for name in rule.interfaces:
                if name not in interfaces:
                    raise ValueError(f"{where}.interfaces: no interface named {name!r}")
            for name in rule.notify:
                if name not in targets:
                    raise ValueError(f"{where}.notify: no [[alerting.webhooks]] or [[alerting.email]] named {name!r}")
            if rule.sink is not None and rule.sink not in sinks:
                raise ValueError(f"{where}.sink: no sink named {rule.sink!r}")
        return self

    @model_validator(mode="after")
    def _unique(self) -> FicusConfig:
        sink_names = [s.name for s in self.sinks]
        if len(set(sink_names)) != len(sink_names):
            raise ValueError("a sink name is used twice")
        seen: set[str] = set()
        listens: dict[tuple[str, int], str] = {}
        for iface in self.interfaces:
            if iface.name in seen:
                raise ValueError(f"interface name {iface.name!r} is used twice")
            seen.add(iface.name)
            if not isinstance(iface, MllpInterfaceConfig):
                continue
            hp = iface.listen_host_port
            if hp[1] and hp in listens:
                raise ValueError(f"{iface.name!r} listens on {iface.listen}, as {listens[hp]!r} does")
            listens[hp] = iface.name
        return self

    def interface(self, name: str) -> InterfaceConfig:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        raise KeyError(name)


def _item_key(key: str, index: int, item: Any) -> str:
    """`interfaces[his-adt]` for a named interface (as validation errors say it), else `key[index]`."""
    named = isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
    if key in ("interfaces", "alerts") and named:
        return f"{key}[{item['name']}]"
    return f"{key}[{index}]"


def _resolve_env(value: Any, key: str, problems: list[str], resolved: set[str], unresolved: set[str]) -> Any:
    """Replaces every `env:NAME` string with the variable's value (collected in `resolved`:
    whatever comes from the environment is treated as a secret and never echoed). The keys
    that could not be resolved go to `unresolved`, so that their derived errors are dropped."""
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{key}.{k}" if key else str(k), problems, resolved, unresolved)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, _item_key(key, i, v), problems, resolved, unresolved) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if not name.strip():
            problems.append(f"{key}: 'env:' needs the name of an environment variable (env:NAME)")
        elif name not in os.environ:
            problems.append(f"{key}: environment variable {name} is not set")
        else:
            if os.environ[name]:
                resolved.add(os.environ[name])
            return os.environ[name]
        unresolved.add(key)
        return ""
    return value


def _derived(location: str, unresolved: set[str]) -> bool:
    """True for a validation error at (or under) a key whose `env:` was not resolved: the
    empty stand-in value fails too, but that says nothing the first problem does not."""
    return any(location == key or location.startswith((f"{key}.", f"{key}[")) for key in unresolved)


# Keys whose values are secrets wherever they appear (NATS URLs are checked for user:password@).
SECRET_KEYS = frozenset({"password", "token", "tokens", "private_key_passphrase", "connection_string",
                         "bearer_token", "client_secret", "signing_secret"})
_USERINFO = re.compile(r"://[^/@\s]*@")
HIDDEN = "<hidden>"


def _secret_values(value: Any, secret: bool, out: set[str]) -> None:
    """Collects every string under a secret key, and every URL that carries credentials."""
    if isinstance(value, dict):
        for k, v in value.items():
            _secret_values(v, secret or k in SECRET_KEYS, out)
    elif isinstance(value, list):
        for v in value:
            _secret_values(v, secret, out)
    elif isinstance(value, str) and value and (secret or _USERINFO.search(value)):
        out.add(value)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` without any secret, nor any piece of one (validators may quote a part of a value)."""
    pieces: set[str] = set()
    for value in secrets:
        pieces.add(value)
        pieces.update(p for p in re.split(r"[\s,;]+", value) if len(p) >= 4)
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, HIDDEN)
    return _USERINFO.sub(f"://{HIDDEN}@", text)


def _location(loc: Iterable[int | str], raw: dict[str, Any]) -> str:
    """A pydantic error location as a key path, naming interfaces by their name."""
    parts: list[str] = []
    items = list(loc)
    i = 0
    while i < len(items):
        item = items[i]
        if item in ("interfaces", "alerts") and i + 1 < len(items) and isinstance(items[i + 1], int):
            idx = int(items[i + 1])
            ifaces = raw.get(str(item), [])
            name = ifaces[idx].get("name") if idx < len(ifaces) and isinstance(ifaces[idx], dict) else None
            parts.append(f"{item}[{name or idx}]")
            i += 2
            # The discriminated union adds the kind as a location step; it says nothing.
            if i < len(items) and isinstance(items[i], str) and items[i] in ("hl7-mllp", "folder", "sftp", "odbc"):
                i += 1
            continue
        parts.append(str(item))
        i += 1
    return ".".join(parts) or "(top level)"


def parse_config(data: dict[str, Any], path: str = "<config>", *, check_tables: bool = True) -> FicusConfig:
    """Validates an already-read TOML document; raises ConfigError listing every problem.

    Reference tables are read and checked too (duplicates, missing columns), so a config
    that passes has tables that load.
    """
    problems: list[str] = []
    secrets: set[str] = set()
    unresolved: set[str] = set()
    resolved = _resolve_env(data, "", problems, secrets, unresolved)
    _secret_values(resolved, False, secrets)
    if isinstance(resolved.get("reference"), dict):
        resolved["reference"].setdefault("base_dir", str(Path(path).parent) if path.endswith(".toml") else ".")
    if isinstance(resolved.get("posting"), dict):
        resolved["posting"].setdefault("base_dir", str(Path(path).parent) if path.endswith(".toml") else ".")
    try:
        # A site map file named by an interface is found next to the config file.
        config_dir = str(Path(path).parent) if path.endswith(".toml") else "."
        config = FicusConfig.model_validate(resolved, context={"config_dir": config_dir})
    except ValidationError as exc:
        # Only `msg` is used, never pydantic's `input`; and a message may still quote a value.
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            location = _location(err["loc"], resolved)
            if not _derived(location, unresolved):
                problems.append(redact(f"{location}: {msg}", secrets))
        raise ConfigError(path, problems) from None
    if check_tables:
        problems.extend(f"reference: {p}" for p in validate_tables(config.reference.paths()))
    if problems:
        raise ConfigError(path, problems)
    return config


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where a config stops being UTF-8: the byte, its line and column, never the text around it."""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return (f"byte 0x{data[exc.start]:02x} at line {line}, column {column} is not UTF-8: the config file must be "
            "UTF-8 (save it as UTF-8, e.g. iconv -f windows-1252 -t utf-8)")


def read_config_text(path: str | Path) -> str:
    """The text of a config file; ConfigFileError (one line) when it cannot be read as one."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigFileError(str(p), ["file not found"]) from exc
    except IsADirectoryError as exc:
        raise ConfigFileError(str(p), ["is a directory, not a config file (give the .toml file)"]) from exc
    except OSError as exc:
        raise ConfigFileError(str(p), [f"cannot read: {exc.strerror or type(exc).__name__}"]) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(str(p), [_not_utf8(data, exc)]) from exc


def load_config(path: str | Path) -> FicusConfig:
    """Reads and validates a TOML file; raises ConfigError (ConfigFileError: not readable as one)."""
    p = Path(path)
    text = read_config_text(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"not valid TOML: {exc}"]) from exc
    return parse_config(data, str(p))
