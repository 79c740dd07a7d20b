"""TLS and credentials for an external NATS cluster (issue 13 item 2), against real nats-server
processes started here from a config file: mutual TLS with a pinned CA, user and password,
a token, nkey users, and an operator-mode server (memory resolver) for a `.creds` file whose
JWTs are made here with nkeys and a minimal JWT encoder. JetStream on each.

Each secured server takes a Ficus Store (or a whole Service) that ensures its streams,
publishes and reads back; a wrong password, token, nkey or JWT, a server certificate from
another CA, and a server that does not offer TLS are refused at once with one error naming the
URL and why, and no secret in it or in any log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import pytest
import trustme

from protocols.tls import TlsError
from router import names
from router.config import ConfigError, NatsConfig, parse_config
from router.embedded_nats import EmbeddedNats
from router.service import Service, StartError
from router.store import Outgoing, Store, StoreRejected, connect
from tests.conftest import make_config

pytestmark = pytest.mark.integration

PASSWORD = "pw-Zq81-never-shown"
TOKEN = "tok-Xr27-never-shown"


class ConfiguredNats(EmbeddedNats):
    """A nats-server with JetStream, on loopback, plus the config blocks given (tls,
    authorization, operator): started, waited for and stopped by EmbeddedNats (by its PID)."""

    def __init__(self, store_dir: Path, extra: str) -> None:
        super().__init__(store_dir)
        self.extra = extra

    def _write_config(self) -> Path:
        conf = super()._write_config()
        conf.write_text(conf.read_text(encoding="utf-8") + self.extra, encoding="utf-8")
        return conf

    @property
    def tls_url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"


@asynccontextmanager
async def nats_with(store_dir: Path, extra: str) -> AsyncIterator[ConfiguredNats]:
    server = ConfiguredNats(store_dir, extra)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """A server certificate for 127.0.0.1 issued by another CA."""
    stranger_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    folder = tmp_path / "pki"
    folder.mkdir()

    def write(name: str, blob: Any) -> Path:
        path = folder / name
        blob.write_to_path(str(path))
        return path

    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ficus-client.example")
    stranger = other.issue_cert("127.0.0.1", "localhost")
    return Pki(write("ca.pem", ca.cert_pem),
               write("server.pem", server.cert_chain_pems[0]), write("server.key", server.private_key_pem),
               write("client.pem", client.cert_chain_pems[0]), write("client.key", client.private_key_pem),
               write("stranger.pem", stranger.cert_chain_pems[0]), write("stranger.key", stranger.private_key_pem))


def tls_block(cert: Path, key: Path, ca: Path, *, verify: bool) -> str:
    return (f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n  ca_file: "{ca}"\n'
            f"  verify: {'true' if verify else 'false'}\n  timeout: 2\n}}\n")


def nats_cfg(url: str, **keys: Any) -> NatsConfig:
    return NatsConfig.model_validate({"url": url, "publish_timeout_seconds": 5, **keys})


async def round_trip(cfg: NatsConfig, server: str) -> None:
    """A Store on `server`: streams ensured, one message published, acknowledged and read back."""
    store = Store(await asyncio.wait_for(connect(cfg, [server]), 30), cfg)
    try:
        await store.ensure()
        subject = names.raw_subject(f"secured-{os.urandom(4).hex()}")
        (ack,) = await store.publish([Outgoing(subject, b"over a secured wire", f"m-{os.urandom(6).hex()}")])
        assert ack.stream == names.STREAM_RAW
        assert [data for _, data, _ in await store.read(names.STREAM_RAW, subject)] == [b"over a secured wire"]
    finally:
        await store.close()


async def refused(cfg: NatsConfig, server: str, *secrets: str) -> str:
    """The refusal of a first connection: at once, naming the URL, with no secret in it."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(StoreRejected) as caught:
        await asyncio.wait_for(connect(cfg, [server]), 30)
    text = str(caught.value)
    assert loop.time() - began < 10, "a refusal must not be retried like an outage"
    assert text.startswith(f"{server} refused the connection: "), text
    for secret in secrets:
        assert secret not in text
    return text


def no_secret_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for record in caplog.records:
        line = record.getMessage()
        for secret in secrets:
            assert secret not in line, record.name


# -- TLS ---------------------------------------------------------------------------------------

async def test_mutual_tls_with_a_pinned_ca_and_a_password(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = f'authorization {{\n  user: "ficus"\n  password: "{PASSWORD}"\n}}\n'
    tls = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
    async with nats_with(tmp_path / "nats", tls_block(pki.server_cert, pki.server_key, pki.ca, verify=True)
                         + auth) as server:
        await round_trip(nats_cfg(server.tls_url, tls=tls, user="ficus", password=PASSWORD), server.tls_url)
        # A nats:// URL gets TLS all the same: nats.tls is set.
        await round_trip(nats_cfg(server.url, tls=tls, user="ficus", password=PASSWORD), server.url)

        text = await refused(nats_cfg(server.tls_url, tls=tls, user="ficus", password="wrong-" + PASSWORD),
                             server.tls_url, PASSWORD)
        assert "authorization violation: the server refused the credentials (user/password)" in text, text
        text = await refused(nats_cfg(server.tls_url, tls=tls), server.tls_url)
        assert "the server wants credentials and none are configured" in text, text
        # No client certificate for a server that verifies its clients.
        text = await refused(nats_cfg(server.tls_url, tls={"ca": str(pki.ca)}, user="ficus", password=PASSWORD),
                             server.tls_url, PASSWORD)
        assert "TLS: " in text and "certificate required (the server verifies clients: set nats.tls.cert" in text, text
    no_secret_logged(caplog, PASSWORD)


async def test_a_server_certificate_from_another_ca_is_refused(tmp_path: Path, pki: Pki) -> None:
    auth = f'authorization {{\n  token: "{TOKEN}"\n}}\n'
    async with nats_with(tmp_path / "nats", tls_block(pki.stranger_cert, pki.stranger_key, pki.ca, verify=False)
                         + auth) as server:
        text = await refused(nats_cfg(server.tls_url, tls={"ca": str(pki.ca)}, token=TOKEN), server.tls_url, TOKEN)
        assert "TLS: certificate verify failed: " in text and "not issued by nats.tls.ca" in text, text
        # Without nats.tls a tls:// URL trusts the system's CAs, which do not know this test CA either.
        text = await refused(nats_cfg(server.tls_url, token=TOKEN), server.tls_url, TOKEN)
        assert "not issued by a CA of the system store; set nats.tls.ca)" in text, text


async def test_the_certificate_must_name_the_server(tmp_path: Path, pki: Pki) -> None:
    """The host name is checked: server_name picks the name when the URL's host is not on the certificate."""
    async with nats_with(tmp_path / "nats", tls_block(pki.server_cert, pki.server_key, pki.ca, verify=False)) as server:
        text = await refused(nats_cfg(server.tls_url, tls={"ca": str(pki.ca), "server_name": "nats.elsewhere.example"}),
                             server.tls_url)
        assert "certificate verify failed: Hostname mismatch" in text, text
        await round_trip(nats_cfg(server.tls_url, tls={"ca": str(pki.ca), "server_name": "localhost"}), server.tls_url)


async def test_a_server_without_tls_is_refused_and_sent_nothing(tmp_path: Path, pki: Pki) -> None:
    """nats-py only upgrades when the server's INFO asks for TLS: a plain server (or a man in the
    middle removing tls_required) must not get the CONNECT with the password in it."""
    received = bytearray()

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "plain", "version": "2.15.1", "proto": 1, "max_payload": 1048576,
                "headers": True, "auth_required": True}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        await writer.drain()
        while chunk := await reader.read(65536):
            received.extend(chunk)
        writer.close()

    fake = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = fake.sockets[0].getsockname()[1]
    try:
        for url, keys in ((f"nats://127.0.0.1:{port}", {"tls": {"ca": str(pki.ca)}}),
                          (f"tls://127.0.0.1:{port}", {})):  # tls:// without nats.tls: the system's CAs
            text = await refused(nats_cfg(url, user="ficus", password=PASSWORD, **keys), url, PASSWORD)
            assert "the server did not offer TLS" in text and "nothing was sent" in text, text
    finally:
        fake.close()
        await fake.wait_closed()
    assert b"CONNECT" not in received and PASSWORD.encode() not in received, bytes(received)
    # And a real nats-server without TLS, for nats.tls alone.
    async with nats_with(tmp_path / "nats", "") as server:
        text = await refused(nats_cfg(server.url, tls={"ca": str(pki.ca)}), server.url)
        assert "did not offer TLS, which nats.tls requires" in text, text


# -- credentials --------------------------------------------------------------------------------

async def test_token(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = f'authorization {{\n  token: "{TOKEN}"\n}}\n'
    async with nats_with(tmp_path / "nats", tls_block(pki.server_cert, pki.server_key, pki.ca, verify=False)
                         + auth) as server:
        tls = {"ca": str(pki.ca)}
        await round_trip(nats_cfg(server.tls_url, tls=tls, token=TOKEN), server.tls_url)
        text = await refused(nats_cfg(server.tls_url, tls=tls, token=TOKEN[:-1]), server.tls_url, TOKEN, TOKEN[:-1])
        assert "the server refused the credentials (token)" in text, text
    no_secret_logged(caplog, TOKEN, TOKEN[:-1])


def user_keypair() -> tuple[str, str]:
    """(seed, public key) of a new user nkey."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode()


async def test_nkey(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seed, public = user_keypair()
    stranger_seed, _ = user_keypair()
    (tmp_path / "ficus.nk").write_text(seed + "\n")
    (tmp_path / "stranger.nk").write_text(stranger_seed + "\n")
    auth = f'authorization {{\n  users = [ {{ nkey: "{public}" }} ]\n}}\n'
    async with nats_with(tmp_path / "nats", auth) as server:
        await round_trip(nats_cfg(server.url, nkey_seed_file=str(tmp_path / "ficus.nk")), server.url)
        text = await refused(nats_cfg(server.url, nkey_seed_file=str(tmp_path / "stranger.nk")), server.url,
                             seed, stranger_seed)
        assert "the server refused the credentials (nkey_seed_file)" in text, text
    no_secret_logged(caplog, seed, stranger_seed)


# -- .creds: an operator-mode server, its JWTs made here ---------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Nkey:
    seed: str
    public: str

    @staticmethod
    def new(prefix: int) -> Nkey:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return Nkey(seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


def jwt(issuer: Nkey, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2): ed25519 over base64url header and claims, signed with the issuer's nkey."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "sub": subject, "name": name,
                              "nats": {"version": 2, **nats}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode()
    signing = f"{_b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(issuer.sign(signing.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
             "leaf": -1}
JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def creds(account: Nkey, path: Path) -> tuple[Path, str]:
    """A .creds file for a new user of `account` (nsc's layout); returns it and the user's seed."""
    user = Nkey.new(nkeys.PREFIX_BYTE_USER)
    token = jwt(account, user.public, "ficus", {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1,
                                                "payload": -1})
    path.write_text(f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
                    "************************* IMPORTANT *************************\n"
                    "NKEY Seed printed below can be used to sign and prove identity.\n\n"
                    f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n")
    return path, user.seed


def operator_block(operator: Nkey, accounts: list[Nkey]) -> str:
    """Operator mode with a memory resolver preloaded with `accounts` (the first is the system account)."""
    op = jwt(operator, operator.public, "test-operator", {"type": "operator"})
    preload = []
    for i, account in enumerate(accounts):
        limits = UNLIMITED if i == 0 else {**UNLIMITED, **JETSTREAM}
        claim = jwt(operator, account.public, f"account-{i}", {"type": "account", "limits": limits})
        preload.append(f'  {account.public}: "{claim}"')
    return (f'operator: "{op}"\nsystem_account: "{accounts[0].public}"\nresolver: MEMORY\n'
            "resolver_preload: {\n" + "\n".join(preload) + "\n}\n")


async def test_creds_file_against_an_operator_mode_server(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    operator = Nkey.new(nkeys.PREFIX_BYTE_OPERATOR)
    system, account, unknown = (Nkey.new(nkeys.PREFIX_BYTE_ACCOUNT) for _ in range(3))
    good, good_seed = creds(account, tmp_path / "ficus.creds")
    # Signed by an account the server does not know.
    bad, bad_seed = creds(unknown, tmp_path / "stranger.creds")
    extra = operator_block(operator, [system, account]) + tls_block(pki.server_cert, pki.server_key, pki.ca,
                                                                     verify=False)
    async with nats_with(tmp_path / "nats", extra) as server:
        tls = {"ca": str(pki.ca)}
        await round_trip(nats_cfg(server.tls_url, tls=tls, creds_file=str(good)), server.tls_url)
        text = await refused(nats_cfg(server.tls_url, tls=tls, creds_file=str(bad)), server.tls_url,
                             good_seed, bad_seed)
        assert "the server refused the credentials (creds_file)" in text, text
    no_secret_logged(caplog, good_seed, bad_seed)


# -- the whole service ----------------------------------------------------------------------------

async def test_a_service_on_a_secured_cluster_and_its_start_error(
        tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = f'authorization {{\n  token: "{TOKEN}"\n}}\n'
    async with nats_with(tmp_path / "nats", tls_block(pki.server_cert, pki.server_key, pki.ca, verify=True)
                         + auth) as server:
        tls = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
        monkeypatch.setenv("FICUS_TEST_NATS_TOKEN", TOKEN)
        cfg = make_config(server.tls_url, [], nats={"tls": tls, "token": "env:FICUS_TEST_NATS_TOKEN"},
                          state_dir=tmp_path / "state")
        async with Service(cfg) as svc:
            assert svc.ready() == (True, [])
            subject = names.raw_subject("svc")
            await svc.running.store.publish([Outgoing(subject, b"through the service", "svc-1")])
            stored = await svc.running.store.read(names.STREAM_RAW, subject)
            assert [data for _, data, _ in stored] == [b"through the service"]

        monkeypatch.setenv("FICUS_TEST_NATS_TOKEN", "not-" + TOKEN)
        cfg = make_config(server.tls_url, [], nats={"tls": tls, "token": "env:FICUS_TEST_NATS_TOKEN"},
                          state_dir=tmp_path / "state")
        with pytest.raises(StartError) as caught:
            async with asyncio.timeout(30), Service(cfg):
                pytest.fail("started with a wrong token")
        assert str(caught.value) == (f"could not start NATS: {server.tls_url} refused the connection: authorization "
                                     "violation: the server refused the credentials (token)")
    no_secret_logged(caplog, TOKEN)


# -- configuration --------------------------------------------------------------------------------

def problems(nats: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({"nats": nats}, "ficus.toml")
    return str(caught.value)


def test_config_one_credential_named_files_and_no_secret(tmp_path: Path, pki: Pki,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url = "tls://nats.example:14222"
    text = problems({"url": url, "user": "ficus", "password": PASSWORD, "token": TOKEN})
    assert "give one NATS credential, not user/password and token" in text
    assert PASSWORD not in text and TOKEN not in text
    text = problems({"url": "tls://ficus:" + PASSWORD + "@nats.example:14222", "token": TOKEN})
    assert "not token and credentials in nats.url" in text and PASSWORD not in text and TOKEN not in text, text
    assert "user and password go together" in problems({"url": url, "user": "ficus"})

    # A file that is not there is named by its key and path; what a file holds is never shown.
    missing = tmp_path / "nope.creds"
    assert f"ficus.toml: nats.creds_file: {missing}: file not found" in problems({"url": url,
                                                                                 "creds_file": str(missing)})
    assert f"nats.tls.ca: {tmp_path}: not a file" in problems({"url": url, "tls": {"ca": str(tmp_path)}})
    assert "nats.tls.key: " in problems({"url": url, "tls": {"ca": str(pki.ca), "cert": str(pki.client_cert),
                                                              "key": str(missing)}})
    assert "a client certificate needs both cert and key" in problems(
        {"url": url, "tls": {"ca": str(pki.ca), "cert": str(pki.client_cert)}})
    not_creds = tmp_path / "not.creds"
    not_creds.write_text("SUSECRETSEEDCONTENT\n")
    text = problems({"url": url, "creds_file": str(not_creds)})
    assert "nats.creds_file: " in text and "not a .creds file" in text and "SECRETSEED" not in text, text
    text = problems({"url": url, "nkey_seed_file": str(not_creds)})
    assert "does not hold a user nkey seed" in text and "SECRETSEED" not in text, text

    # Secrets from env: are resolved, and never shown.
    monkeypatch.setenv("FICUS_TEST_NATS_PASSWORD", PASSWORD)
    cfg = parse_config({"nats": {"url": url, "user": "ficus", "password": "env:FICUS_TEST_NATS_PASSWORD",
                                 "tls": {"ca": str(pki.ca)}}}, "ficus.toml")
    assert cfg.nats.password == PASSWORD and cfg.nats.tls is not None and cfg.nats.tls.ca == str(pki.ca)
    text = problems({"url": url, "password": "env:FICUS_TEST_NATS_PASSWORD", "token": "env:FICUS_TEST_NATS_PASSWORD"})
    assert "give one NATS credential" in text and PASSWORD not in text, text


async def test_certificate_files_that_do_not_load_say_which(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError) as caught:
        await connect(nats_cfg("tls://127.0.0.1:1", tls={"ca": str(garbage)}), ["tls://127.0.0.1:1"])
    assert caught.value.reason.startswith(f"ca file {garbage}: "), caught.value.reason
    with pytest.raises(TlsError) as caught:
        await connect(nats_cfg("tls://127.0.0.1:1", tls={"ca": str(pki.ca), "cert": str(pki.client_cert),
                                                         "key": str(pki.server_key)}), ["tls://127.0.0.1:1"])
    assert "with key" in caught.value.reason, caught.value.reason  # a key that is not the certificate's


def test_config_the_embedded_server_stays_plain(pki: Pki, tmp_path: Path) -> None:
    text = problems({"tls": {"ca": str(pki.ca)}})
    assert "nats: tls: only for an external NATS server" in text and "loopback only, in plain text" in text, text
    seed, _ = user_keypair()
    (tmp_path / "u.nk").write_text(seed)
    assert "nkey_seed_file: only for an external NATS server" in problems({"nkey_seed_file": str(tmp_path / "u.nk")})
    text = problems({"embedded": {"host": "0.0.0.0"}})
    assert "nats: embedded.host 0.0.0.0 is not a loopback address" in text, text
    assert parse_config({"nats": {"embedded": {"host": "localhost"}}}, "ficus.toml").nats.embedded.host == "localhost"
    text = problems({"url": "nats://a:14222,ws://b:8080", "tls": {"ca": str(pki.ca)}})
    assert "part 2 of nats.url is ws:// (plain); use wss://" in text, text
