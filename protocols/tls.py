"""TLS contexts from certificate files, and a holder that reloads them when the files change.

Stdlib ``ssl`` only. Every context made here refuses anything below TLS 1.2. A client
context trusts only the CA bundle it is given (pinning): the system store is never
loaded, so a legacy engine with a certificate from a public CA is refused like any other
stranger. Server contexts verify client certificates only when given a CA bundle.

Rotation: :class:`ReloadingContext` holds the context in force and builds a new one when
one of its files changed (``fresh()``, meant to be called once per new connection: three
``stat`` calls) or when asked (``reload()``, e.g. on SIGHUP). A connection takes its
context at its handshake, so connections already open keep theirs; the next one gets the
new certificate. New files that do not load (half-copied, key and certificate from two
pairs) leave the previous context in force, with one log line saying why.

Nothing here logs or raises with key material or certificate contents: reasons are
OpenSSL's short error names, file roles and paths.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger("ficus.tls")

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2
SUBJECT_MAX: Final = 256
"""The longest subject :func:`peer_subject` returns; a longer one is cut and ends in ``...``."""

# RFC 4514 section 3's short names, plus the ones OpenSSL commonly prints.
_SHORT_NAMES: Final = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_ESCAPED: Final = frozenset(',+"\\<>;')


class TlsError(OSError):
    """Certificate files that cannot be used: a missing file, a bad PEM, a key that is not
    the certificate's. ``reason`` names the file's role and path and OpenSSL's error name,
    never key material. An OSError so that start-up reports it like a port already taken."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of one TLS endpoint: its certificate chain and key, and the CA bundle
    it verifies its peers against (None: peers are not verified, for a server)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        """The files given, for change detection."""
        return tuple(p for p in (self.cert, self.key, self.ca) if p is not None)


def ssl_reason(exc: BaseException) -> str:
    """A short, content-free reason for an ``ssl`` or socket error (for log lines and errors).

    A verification failure gives OpenSSL's verify message ("certificate has expired"),
    another SSL error its reason name in words ("wrong version number", "tlsv1 alert
    unknown ca"), anything else its class name.
    """
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, TlsError):
        return exc.reason
    return type(exc).__name__


def _readable(role: str, path: Path) -> None:
    """Raises TlsError naming the file when it cannot be opened (before OpenSSL's vaguer error)."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsError(f"{role} file {path}: {exc.strerror or type(exc).__name__}") from exc


def _new_context(protocol: int, files: TlsFiles, cert_role: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = MINIMUM_VERSION
    for role, path in (("cert", files.cert), ("key", files.key), ("ca", files.ca)):
        if path is not None:
            _readable(role, path)
    if files.cert is not None:
        try:
            ctx.load_cert_chain(files.cert, files.key)
        except ssl.SSLError as exc:
            raise TlsError(f"{cert_role} {files.cert} with key {files.key}: {ssl_reason(exc)}") from exc
    if files.ca is not None:
        try:
            ctx.load_verify_locations(cafile=files.ca)
        except ssl.SSLError as exc:
            raise TlsError(f"ca file {files.ca}: {ssl_reason(exc)}") from exc
    return ctx


def server_context(files: TlsFiles, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later, ``files.cert`` and ``files.key`` presented.

    With ``files.ca``, client certificates are verified against that bundle only: required
    (a client without one is refused) when ``require_client_cert``, else verified when
    presented. Raises TlsError (no certificate or key given, ``require_client_cert``
    without a CA, a file that does not load).
    """
    if files.cert is None or files.key is None:
        raise TlsError("a TLS server needs a certificate and a key")
    if require_client_cert and files.ca is None:
        raise TlsError("require_client_cert needs a CA bundle to verify client certificates against")
    ctx = _new_context(ssl.PROTOCOL_TLS_SERVER, files, "certificate")
    if files.ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context trusting only the CA bundle ``ca`` (pinned: no system store).

    TLS 1.2 or later, the server's certificate required and its name checked (give
    ``server_hostname`` when connecting). ``cert`` and ``key``: the client certificate
    presented to a server that asks for one. Raises TlsError.
    """
    if (cert is None) != (key is None):
        raise TlsError("a client certificate needs both cert and key")
    ctx = _new_context(ssl.PROTOCOL_TLS_CLIENT, TlsFiles(cert, key, ca), "client certificate")
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _escape(value: str) -> str:
    """An attribute value escaped as RFC 4514 says, control and non-ASCII bytes as \\XX."""
    out: list[str] = []
    for i, ch in enumerate(value):
        if ch in _ESCAPED or (ch in "# " and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\" + ch)
        elif not ch.isascii() or not ch.isprintable():
            out.extend(f"\\{b:02X}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def peer_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer certificate's subject as an RFC 4514 string ("CN=lab,O=Hospital"),
    at most SUBJECT_MAX characters; None without TLS, without a peer certificate, or when
    the certificate was not verified (a context without a CA bundle)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    rdns = []
    for rdn in reversed(cert.get("subject", ())):
        rdns.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(str(v))}" for k, v in rdn))
    text = ",".join(rdns)
    if len(text) > SUBJECT_MAX:
        text = text[: SUBJECT_MAX - 3] + "..."
    return text or None


Stamp = tuple[int, int, int] | None
"""(mtime in ns, size, inode) of a file, or None when it cannot be read."""


def _stamps(paths: tuple[Path, ...]) -> tuple[Stamp, ...]:
    out: list[Stamp] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class ReloadingContext:
    """The SSL context in force for one endpoint, rebuilt when its files change.

    ``build`` makes a context from the files (e.g. ``lambda: server_context(files, ...)``);
    it runs once here, where a failure raises TlsError (nothing to fall back on at start),
    and again at each reload, where a failure keeps the context in force.
    """

    def __init__(self, name: str, build: Callable[[], ssl.SSLContext], files: Iterable[Path]) -> None:
        self.name = name
        self._build = build
        self._paths = tuple(files)
        self._stamps = _stamps(self._paths)
        self._current = build()
        self.reloads = 0
        """Successful reloads since start."""
        self.failed_reloads = 0

    @property
    def current(self) -> ssl.SSLContext:
        """The context in force, without looking at the files."""
        return self._current

    def fresh(self) -> ssl.SSLContext:
        """The context for a new connection: reloaded first if a file changed."""
        self.maybe_reload()
        return self._current

    def maybe_reload(self) -> bool:
        """Rebuilds the context if a file's (mtime, size, inode) changed; True if replaced."""
        stamps = _stamps(self._paths)
        if stamps == self._stamps:
            return False
        # Remembered even when the build fails: a half-replaced pair is tried once, and
        # again when the next file lands, not at every connection in between.
        self._stamps = stamps
        return self._rebuild("files changed")

    def reload(self) -> bool:
        """Rebuilds the context now (SIGHUP); True if replaced, False if the old one is kept."""
        self._stamps = _stamps(self._paths)
        return self._rebuild("reload asked")

    def _rebuild(self, why: str) -> bool:
        try:
            ctx = self._build()
        except (TlsError, ssl.SSLError, OSError, ValueError) as exc:
            self.failed_reloads += 1
            log.warning("tls %s: %s, but the new files do not load (%s); keeping the previous certificates",
                        self.name, why, ssl_reason(exc))
            return False
        self._current = ctx
        self.reloads += 1
        log.info("tls %s: %s, certificates reloaded", self.name, why)
        return True
