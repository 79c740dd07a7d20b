"""Certificates made by the tests (trustme): a CA and the PEM files of its server and client
certificates, written where a config can name them; expired ones on request.

Files are replaced the way an operator rotates them (write a new file, rename it over the
old one), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
from cryptography import x509


class Pki:
    """One CA in ``root``: ``ca_file`` is its certificate, for the side that verifies."""

    def __init__(self, root: Path, name: str = "ca") -> None:
        self.root = root
        self.name = name
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name=f"Ficus test {name}")
        self.ca_file = root / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(
        self, stem: str, *hosts: str, common_name: str | None = None, expired: bool = False
    ) -> tuple[Path, Path]:
        """A certificate (with its chain) and its key, as ``stem.pem`` and ``stem.key``; replaces
        existing files atomically. ``hosts``: the names it is valid for (none: a client)."""
        now = datetime.now(UTC)
        not_before = now - timedelta(days=30) if expired else None
        not_after = now - timedelta(days=1) if expired else None
        leaf = self.ca.issue_cert(*(hosts or ("client.invalid",)), common_name=common_name,
                                  organization_name="Ficus test", not_before=not_before, not_after=not_after)
        cert, key = self.root / f"{stem}.pem", self.root / f"{stem}.key"
        _replace(cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        _replace(key, leaf.private_key_pem.bytes())
        return cert, key


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def served_serial(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> int:
    """The serial number of the certificate the server presented on a connection."""
    assert ssl_object is not None, "not a TLS connection"
    der = ssl_object.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def file_serial(cert: Path) -> int:
    """The serial number of the first certificate in a PEM file."""
    return int(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)
