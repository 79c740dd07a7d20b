"""TLS and credentials for an external NATS server, and the refusals that end a start-up.

`connect` (router/store/core.py) takes from here the TLS context (only `nats.tls.ca` is
trusted when it is set; the system's CAs for a `tls://` URL without it), the client that
never sends its CONNECT in plain text where TLS is required, and `refusal`: which errors
of a first connection no retry will cure (credentials refused, a certificate that does
not verify, no TLS offered), with a reason that names keys and OpenSSL's words, never a
secret.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from protocols.tls import MINIMUM_VERSION, client_context, ssl_reason
from router.config import NatsConfig, redact


class PlainTextRefused(nats.errors.Error):
    """The server did not ask for TLS where Ficus requires it; the CONNECT was not sent."""

    def __str__(self) -> str:
        return "nats: the server did not offer TLS"


class GuardedClient(Client):
    """nats-py's client, refusing to send its CONNECT (credentials included) in plain text
    to a server that must speak TLS: every server when `nats.tls` is set, a `tls://` one
    otherwise.

    nats-py upgrades to TLS only when the server's INFO says `tls_required`, even for a
    `tls://` URL; a server, or someone in between, leaving it out would otherwise be sent
    the password in clear. The check reads nats-py 2.16's connection state (pinned for
    router/publisher.py already).
    """

    def __init__(self, *, tls_everywhere: bool) -> None:
        super().__init__()
        self._tls_everywhere = tls_everywhere

    def _connect_command(self) -> bytes:
        server = self._current_server
        scheme = server.uri.scheme if server is not None else ""
        # wss:// is TLS below the NATS protocol (the websocket's own); ws:// with nats.tls is refused by the config.
        wanted = scheme == "tls" or (self._tls_everywhere and scheme != "wss")
        if wanted and not self._server_info.get("tls_required"):
            raise PlainTextRefused()
        return super()._connect_command()


def tls_context(cfg: NatsConfig, servers: list[str]) -> ssl.SSLContext | None:
    """The context for TLS to NATS, or None when no server is to be reached over TLS (nats-py
    then uses its default should a server ask for TLS). Raises protocols.tls.TlsError."""
    if cfg.tls is not None:
        tls = cfg.tls
        return client_context(Path(tls.ca), Path(tls.cert) if tls.cert else None, Path(tls.key) if tls.key else None)
    if any(server.startswith("tls://") for server in servers):
        ctx = ssl.create_default_context()  # the system's CAs, host name checked
        ctx.minimum_version = MINIMUM_VERSION
        return ctx
    return None


def shown(servers: list[str]) -> str:
    """The server URLs for an error text, without any `user:password@`."""
    return redact(", ".join(servers), [])


def refusal(exc: BaseException, cfg: NatsConfig) -> str | None:
    """Why the server would not have Ficus, if `exc` says so: a refusal that retrying with
    the same configuration cannot cure. None for anything else (down, a timeout)."""
    if isinstance(exc, PlainTextRefused):
        required = "nats.tls" if cfg.tls is not None else "a tls:// URL"
        return f"the server did not offer TLS, which {required} requires (nothing was sent)"
    if isinstance(exc, ssl.SSLError):
        reason = ssl_reason(exc)
        if "unable to get local issuer certificate" in reason or "self-signed certificate" in reason:
            trusted = "nats.tls.ca" if cfg.tls is not None else "a CA of the system store; set nats.tls.ca"
            reason += f" (the server's certificate is not issued by {trusted})"
        elif "certificate required" in reason and (cfg.tls is None or cfg.tls.cert is None):
            reason += " (the server verifies clients: set nats.tls.cert and key)"
        return f"TLS: {reason}"
    text = str(exc).lower()
    if isinstance(exc, nats.errors.Error) and ("authorization" in text or "authentication" in text):
        kinds = cfg.credential_kinds()
        if not kinds:
            return ("authorization violation: the server wants credentials and none are configured "
                    "(nats.user and password, token, nkey_seed_file or creds_file)")
        return f"authorization violation: the server refused the credentials ({', '.join(kinds)})"
    return None
