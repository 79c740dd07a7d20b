"""MLLP over TLS (issue 13 item 1), on real sockets against a real nats-server, with
certificates made here (tests/tls_certs.py).

The listener: a client nobody here wrote (`openssl s_client`) gets AA over mutual TLS and its
certificate's subject is on the raw copy; an untrusted, absent or expired client certificate
and a plain-text client are refused with one log line, nothing stored or forwarded; an expired
server certificate is refused by a verifying client. The legacy sender: TLS to a TLS engine
with only the configured CA trusted; an engine with a certificate from another CA or for
another name gets the sender an AR, never an AA. Rotation: a certificate replaced on disk is
served to the next connection, open ones keep working; SIGHUP reloads in `ficus run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from cryptography import x509

from legacy.simulated_engine import SimulatedEngine
from protocols.mllp import frame
from protocols.tls import SUBJECT_MAX, TlsError, TlsFiles, client_context, peer_subject, server_context
from router import names, simulate
from router.embedded_nats import EmbeddedNats
from router.interfaces import reload_certificates
from router.service import StartError
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.ficus_proc import Ficus, free_port
from tests.mllp_client import MllpTestClient, msa, send_one
from tests.tls_certs import Pki, file_serial, served_serial

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
IFACE = "his-charges"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "hospital-ca")


@pytest.fixture
def stranger(tmp_path: Path) -> Pki:
    """Another CA: what it signs must be refused."""
    return Pki(tmp_path / "stranger", "stranger-ca")


def control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].split(b"|")[9].decode()


def subject_of(cert: Path) -> str:
    """The RFC 4514 subject of a PEM certificate, as cryptography writes it (an independent reading)."""
    return x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()


def client_tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A verifying client context made with the stdlib only (not with protocols.tls)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def mllp_iface(tls: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    iface: dict[str, Any] = {"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern", **extra}
    if tls is not None:
        iface["tls"] = {key: str(value) if isinstance(value, Path) else value for key, value in tls.items()}
    return iface


async def raw_headers(url: str) -> list[dict[str, str]]:
    """The headers of every raw copy stored for the interface."""
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe(names.raw_subject(IFACE), ordered_consumer=True)
        out = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            out.append(dict(msg.headers or {}))
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def s_client(port: int, ca: Path, data: bytes, *, cert: Path | None = None, key: Path | None = None,
                   timeout: float = 20) -> bytes:
    """`openssl s_client` as the MLLP sender: `data` on its stdin, what it printed until a frame
    ended (or the server closed) back. Killed at the end whatever happened."""
    cmd = ["openssl", "s_client", "-quiet", "-nocommands", "-verify_return_error", "-verify_ip", "127.0.0.1",
           "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca)]
    if cert is not None and key is not None:
        cmd += ["-cert", str(cert), "-key", str(key)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    out = b""
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
        async with asyncio.timeout(timeout):
            while not out.endswith(b"\x1c\r"):
                chunk = await proc.stdout.read(65536)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


def unframe(reply: bytes) -> bytes:
    assert reply.startswith(b"\x0b") and reply.endswith(b"\x1c\r"), reply[:40]
    return reply[1:-2]


async def refused(port: int, tls: ssl.SSLContext | None, payload: bytes) -> str:
    """Sends one message; returns how the connection ended, failing on any reply."""
    try:
        async with MllpTestClient(port, tls=tls) as client:
            reply = await client.exchange(payload)
    except ssl.SSLCertVerificationError as exc:
        return f"client refused: {exc.verify_message}"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"closed by the server: {type(exc).__name__}"
    assert reply is None, "a refused connection got a reply"
    return "closed by the server"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ficus.mllp" and r.levelno == logging.WARNING and "TLS connection from" in r.getMessage()]


# -- the listener --------------------------------------------------------------------------------


async def test_openssl_s_client_over_mutual_tls_gets_aa_and_its_subject_is_on_the_raw_copy(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.issue("listener", "127.0.0.1")
    # RFC 4514 specials in the name: the header must escape them as cryptography does.
    lab_cert, lab_key = pki.issue("lab", common_name='lab-analyzer-7 "bay 3"+A, north')
    cfg = make_config(nats_server.url, [mllp_iface(
        {"cert": cert, "key": key, "client_ca": pki.ca_file, "require_client_cert": True})],
        state_dir=tmp_path / "state")
    payload = simulate.dft(4711, lines=2)
    async with service_factory(cfg) as svc:
        port = svc.interfaces[IFACE].listener.port
        reply = await s_client(port, pki.ca_file, frame(payload), cert=lab_cert, key=lab_key)
        assert msa(unframe(reply)) == ("AA", control_id(payload))
        # The same through a Python client: the subject is the client certificate's, whoever connects.
        async with MllpTestClient(port, tls=client_tls(pki.ca_file, lab_cert, lab_key)) as client:
            second = simulate.dft(4712, lines=1)
            assert msa(await client.exchange(second)) == ("AA", control_id(second))
    headers = await raw_headers(nats_server.url)
    assert len(headers) == 2
    expected = subject_of(lab_cert)
    assert expected.startswith('CN=lab-analyzer-7 \\"bay 3\\"\\+A\\, north,'), expected
    assert [h[names.HDR_PEER_CERT] for h in headers] == [expected, expected]
    assert all(h[names.HDR_PEER].startswith("127.0.0.1:") for h in headers)


async def test_untrusted_absent_expired_client_certificates_and_plain_text_are_refused_nothing_stored(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, pki: Pki, stranger: Pki, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = pki.issue("listener", "127.0.0.1")
    good_cert, good_key = pki.issue("lab", common_name="lab-analyzer-7")
    old_cert, old_key = pki.issue("old-lab", common_name="old-lab", expired=True)
    bad_cert, bad_key = stranger.issue("intruder", common_name="intruder-9")
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [mllp_iface(
            {"cert": cert, "key": key, "client_ca": pki.ca_file, "require_client_cert": True,
             "handshake_timeout_seconds": 1},
            route="legacy", legacy=f"mllp://127.0.0.1:{engine.port}")], state_dir=tmp_path / "state")
        async with service_factory(cfg) as svc:
            port = svc.interfaces[IFACE].listener.port
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ficus.mllp"):
                endings = [
                    await refused(port, client_tls(pki.ca_file, bad_cert, bad_key), simulate.dft(1)),
                    await refused(port, client_tls(pki.ca_file), simulate.dft(2)),
                    await refused(port, client_tls(pki.ca_file, old_cert, old_key), simulate.dft(3)),
                    await refused(port, None, simulate.dft(4)),  # plain text on the TLS port
                ]
                # A client that connects and never starts its handshake is dropped after the timeout.
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                await wait_for(lambda: len(refusals(caplog)) == 5)
                writer.close()
            listener = svc.interfaces[IFACE].listener
            assert listener.stats.tls_refused == 5, endings
            assert listener.stats.connections_total == 0 and listener.stats.frames_in == 0
            assert engine.received == [], "nothing forwarded to the legacy engine"
            assert await stream_count(nats_server.url, names.STREAM_RAW) == 0, "nothing stored"
            assert svc.interfaces[IFACE].stats.received == 0

            lines = refusals(caplog)
            assert all(f"mllp {IFACE}: TLS connection from 127.0.0.1:" in line for line in lines), lines
            assert "certificate verify failed: unable to get local issuer certificate" in lines[0]
            assert "peer did not return a certificate" in lines[1]
            assert "certificate verify failed: certificate has expired" in lines[2]
            assert "wrong version number" in lines[3]
            assert "no TLS handshake within 1s" in lines[4]
            text = caplog.text
            for secret in ("intruder-9", "old-lab", "BEGIN", "MSH"):
                assert secret not in text, f"{secret!r} in the log"

            # The listener still serves a trusted client, through to the legacy engine.
            good = simulate.dft(5)
            reply = await send_one(port, good, tls=client_tls(pki.ca_file, good_cert, good_key))
            assert reply == engine.replies[0] and msa(reply) == ("AA", control_id(good))
            assert engine.received == [good]


async def test_an_expired_server_certificate_is_refused_by_a_verifying_client(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, pki: Pki, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = pki.issue("listener", "127.0.0.1", expired=True)
    cfg = make_config(nats_server.url, [mllp_iface({"cert": cert, "key": key})], state_dir=tmp_path / "state")
    async with service_factory(cfg) as svc:
        port = svc.interfaces[IFACE].listener.port
        with caplog.at_level(logging.WARNING, logger="ficus.mllp"):
            ending = await refused(port, client_tls(pki.ca_file), simulate.dft(1))
            assert ending == "client refused: certificate has expired"
            reply = await s_client(port, pki.ca_file, frame(simulate.dft(2)))
            assert b"MSA" not in reply
            await wait_for(lambda: len(refusals(caplog)) == 2)
        lines = refusals(caplog)
        # Python's client drops the connection; openssl sends its alert first.
        assert "closed by the peer during the handshake" in lines[0], lines
        assert "alert certificate expired" in lines[1], lines
        assert svc.interfaces[IFACE].listener.stats.frames_in == 0
    assert await stream_count(nats_server.url, names.STREAM_RAW) == 0


# -- the legacy sender ---------------------------------------------------------------------------


def engine_tls(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """The legacy engine's side: its certificate, and Ficus's client certificate required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_legacy_forward_over_tls_and_an_engine_from_another_ca_gets_the_sender_an_ar(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, pki: Pki, stranger: Pki, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine_cert, engine_key = pki.issue("engine", "engine.hospital.test")
    ficus_cert, ficus_key = pki.issue("ficus", common_name="ficus")
    async with SimulatedEngine(ssl_context=engine_tls(engine_cert, engine_key, pki.ca_file)) as engine:
        cfg = make_config(nats_server.url, [mllp_iface(
            route="legacy", legacy=f"mllp://127.0.0.1:{engine.port}",
            legacy_tls={"ca": str(pki.ca_file), "cert": str(ficus_cert), "key": str(ficus_key),
                        "server_name": "engine.hospital.test"})], state_dir=tmp_path / "state")
        async with service_factory(cfg) as svc:
            port = svc.interfaces[IFACE].listener.port
            first = simulate.dft(1)
            reply = await send_one(port, first)
            assert reply == engine.replies[0], "the engine's own ACK, byte for byte, over TLS"
            assert msa(reply) == ("AA", control_id(first)) and engine.received == [first]

            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ficus.pipeline"):
                # The engine now presents a certificate from another CA, then one for another name.
                await engine.stop()
                impostor_cert, impostor_key = stranger.issue("engine", "engine.hospital.test")
                engine.ssl_context = engine_tls(impostor_cert, impostor_key, pki.ca_file)
                await engine.start()
                other_ca = simulate.dft(2)
                assert msa(await send_one(port, other_ca)) == ("AR", control_id(other_ca))

                await engine.stop()
                wrong_cert, wrong_key = pki.issue("wrong-name", "elsewhere.hospital.test")
                engine.ssl_context = engine_tls(wrong_cert, wrong_key, pki.ca_file)
                await engine.start()
                wrong_name = simulate.dft(3)
                assert msa(await send_one(port, wrong_name)) == ("AR", control_id(wrong_name))
            assert engine.received == [first], "nothing reached an engine that failed the handshake"
            assert svc.interfaces[IFACE].stats.legacy_errors == 2
            lines = [r.getMessage() for r in caplog.records if "legacy delivery" in r.getMessage()]
            assert len(lines) == 2, lines
            assert "TLS handshake with 127.0.0.1:" in lines[0]
            assert "unable to get local issuer certificate" in lines[0]
            assert "Hostname mismatch" in lines[1]
    assert await stream_count(nats_server.url, names.STREAM_RAW) == 3, "every message kept raw"


# -- rotation ------------------------------------------------------------------------------------


async def test_a_certificate_replaced_on_disk_is_served_to_the_next_connection_open_ones_keep_working(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, pki: Pki, stranger: Pki, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = pki.issue("listener", "127.0.0.1")
    first_serial = file_serial(cert)
    cfg = make_config(nats_server.url, [mllp_iface({"cert": cert, "key": key})], state_dir=tmp_path / "state")
    trust = client_tls(pki.ca_file)
    async with service_factory(cfg) as svc:
        port = svc.interfaces[IFACE].listener.port
        async with MllpTestClient(port, tls=trust) as kept:
            assert msa(await kept.exchange(simulate.dft(1)))[0] == "AA"
            assert served_serial(kept.writer.get_extra_info("ssl_object")) == first_serial

            pki.issue("listener", "127.0.0.1")  # rotated: new certificate and key, renamed over the old
            second_serial = file_serial(cert)
            assert second_serial != first_serial
            async with MllpTestClient(port, tls=trust) as fresh:
                assert served_serial(fresh.writer.get_extra_info("ssl_object")) == second_serial
                assert msa(await fresh.exchange(simulate.dft(2)))[0] == "AA"
            # The connection opened before the rotation keeps its session and keeps working.
            assert msa(await kept.exchange(simulate.dft(3)))[0] == "AA"

        # A broken replacement (a key that is not the certificate's) keeps the certificate in force.
        _, foreign_key = stranger.issue("unrelated", "127.0.0.1")
        with caplog.at_level(logging.WARNING, logger="ficus.tls"):
            key.write_bytes(foreign_key.read_bytes())
            async with MllpTestClient(port, tls=trust) as during:
                assert served_serial(during.writer.get_extra_info("ssl_object")) == second_serial
                assert msa(await during.exchange(simulate.dft(4)))[0] == "AA"
        warnings = [r.getMessage() for r in caplog.records if r.name == "ficus.tls" and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "keeping the previous certificates" in warnings[0], warnings
        assert "key values mismatch" in warnings[0]

        # SIGHUP's path (ficus run calls reload_certificates): the repaired files are read at once.
        pki.issue("listener", "127.0.0.1")
        third_serial = file_serial(cert)
        contexts = svc.interfaces[IFACE].tls
        before = [c.reloads for c in contexts]
        reload_certificates(svc.interfaces)
        assert [c.reloads for c in contexts] == [n + 1 for n in before]
        async with MllpTestClient(port, tls=trust) as after:
            assert served_serial(after.writer.get_extra_info("ssl_object")) == third_serial
        assert [c.reloads for c in contexts] == [n + 1 for n in before], "no second reload for the same files"
    assert await stream_count(nats_server.url, names.STREAM_RAW) == 4


def run_config(tmp: Path, nats_url: str, api_port: int, mllp_port: int, cert: Path, key: Path) -> Path:
    conf = tmp / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp / 'state'}"
log_level = "INFO"
[nats]
url = "{nats_url}"
[api]
listen = "127.0.0.1:{api_port}"
[[interfaces]]
name = "{IFACE}"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp_port}"
mapping = "hl7v2.dft_p03"
route = "modern"
tls = {{ cert = "{cert}", key = "{key}" }}
""")
    return conf


async def served_by(port: int, trust: ssl.SSLContext) -> int:
    async with MllpTestClient(port, tls=trust) as client:
        return served_serial(client.writer.get_extra_info("ssl_object"))


async def test_sighup_makes_ficus_run_reload_its_certificates(
    nats_server: EmbeddedNats, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.issue("listener", "127.0.0.1")
    api_port, mllp_port = free_port(), free_port()
    ficus = Ficus(run_config(tmp_path, nats_server.url, api_port, mllp_port, cert, key), api_port,
                  tmp_path / "ficus.log")
    trust = client_tls(pki.ca_file)
    try:
        await ficus.start()
        await ficus.wait_ready(timeout=120)
        assert await served_by(mllp_port, trust) == file_serial(cert)
        # Rotated with the old timestamps, size and inode kept would go unnoticed; SIGHUP is the
        # operator's way to say "now". The log tells which path reloaded.
        pki.issue("listener", "127.0.0.1")
        assert ficus.proc is not None
        os.kill(ficus.proc.pid, signal.SIGHUP)
        await wait_for(lambda: "reload asked, certificates reloaded" in ficus.tail(), timeout=20)
        assert "files changed" not in ficus.tail()
        assert await served_by(mllp_port, trust) == file_serial(cert)
        assert ficus.proc.returncode is None, "SIGHUP does not end ficus run"
        assert await ficus.terminate() == 0
    finally:
        ficus.kill_if_running()
        if ficus.proc is not None:
            await ficus.proc.wait()


# -- certificate files that do not load ----------------------------------------------------------


def test_files_that_do_not_load_are_named_never_shown(pki: Pki, stranger: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("listener", "127.0.0.1")
    _, other_key = stranger.issue("other", "127.0.0.1")
    with pytest.raises(TlsError, match=r"key file .*missing\.key: No such file"):
        server_context(TlsFiles(cert, tmp_path / "missing.key"))
    with pytest.raises(TlsError, match="key values mismatch") as mismatch:
        server_context(TlsFiles(cert, other_key))
    assert "BEGIN" not in str(mismatch.value)
    with pytest.raises(TlsError, match="require_client_cert needs a CA bundle"):
        server_context(TlsFiles(cert, key), require_client_cert=True)
    # Pinned: the client context trusts the one CA it was given, not the system store.
    assert len(client_context(pki.ca_file).get_ca_certs()) == 1


async def test_a_listener_whose_files_do_not_load_does_not_start(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, pki: Pki, tmp_path: Path
) -> None:
    cert, _ = pki.issue("listener", "127.0.0.1")
    cfg = make_config(nats_server.url, [mllp_iface({"cert": cert, "key": tmp_path / "gone.key"})],
                      state_dir=tmp_path / "state")
    with pytest.raises(StartError, match=rf"could not start interface {IFACE} \(hl7-mllp\): key file .*gone\.key"):
        async with service_factory(cfg):
            pass


class _Verified:
    """Stands for an SSL object whose peer certificate was verified (pure unit test of the bound)."""

    def getpeercert(self) -> dict[str, Any]:
        return {"subject": ((("organizationName", "O" * 400),), (("commonName", "lab"),))}


def test_the_subject_is_bounded() -> None:
    subject = peer_subject(_Verified())  # type: ignore[arg-type]
    assert subject is not None and len(subject) == SUBJECT_MAX
    assert subject.startswith("CN=lab,O=OOO") and subject.endswith("...")
