"""`ficus demo`: the example config, a simulated HIS sending ADT and DFT traffic, a
simulated legacy interface engine, a payer's 835 remittances, and a simulated ERP that the
charge and remittance events are pushed to (a `[[sinks]]` entry), so a new user sees
events flow, end to end, within seconds."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import shutil
import socket
import sys
import tempfile
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from legacy.mllp_sender import LegacyError, MllpSender
from legacy.simulated_engine import SimulatedEngine
from router import shutdown, simulate
from router.client import ApiClient, ApiError
from router.config import FicusConfig, FolderInterfaceConfig, parse_config
from router.demo_erp import SINK_TYPES, DemoErp, new_secret
from router.service import Service
from router.store import StoredMsg


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


REMITS = "payer-835"
"""The demo's remittance drop folder (not in the bundled example: the demo adds it)."""


def demo_config(state_dir: str, legacy_port: int, erp_url: str | None = None,
                erp_secret: str | None = None) -> FicusConfig:
    """The bundled example, moved to free ports and pointed at the simulated engine; with
    `erp_url`, plus a payer's 835 drop folder and a sink pushing charges and remittances there."""
    text = resources.files("router").joinpath("examples/ficus.toml").read_text(encoding="utf-8")
    data: dict[str, Any] = tomllib.loads(text)
    data["state_dir"] = state_dir
    if erp_url is not None:
        data["interfaces"].append(_remits_interface())
        # Live events only: charges once his-charges is flipped to modern, remittances from the start.
        data["sinks"] = [{"name": "erp", "url": erp_url, "signing_secret": erp_secret,
                          "filter": {"types": SINK_TYPES},
                          "retry": {"backoff_base_seconds": 0.2, "backoff_max_seconds": 5}}]
    data["nats"]["embedded"]["port"] = _port_or_free(data["nats"]["embedded"]["port"])
    data["api"]["listen"] = f"127.0.0.1:{_port_or_free(8080)}"
    for iface in data["interfaces"]:
        if iface["kind"] == "folder":
            for key in ("path", "archive_dir", "legacy"):
                iface[key] = str(Path(state_dir) / Path(iface[key]).relative_to("/var/lib/ficus"))
                Path(iface[key]).mkdir(parents=True, exist_ok=True)
            iface["poll_seconds"] = 0.5
            continue
        port = int(iface["listen"].rsplit(":", 1)[1])
        iface["listen"] = f"127.0.0.1:{_port_or_free(port)}"
        iface["legacy"] = f"mllp://127.0.0.1:{legacy_port}"
    return parse_config(data, "examples/ficus.toml")


def _remits_interface() -> dict[str, Any]:
    """The clearinghouse's 835 remittances, a feed the new ERP takes directly: `modern` from the
    start (its legacy folder stays configured, so a flip back to shadow or legacy works)."""
    return {"name": REMITS, "kind": "folder", "description": "835 remittances from the clearinghouse",
            "path": "/var/lib/ficus/drop/remits", "patterns": ["*.835"], "complete": "rename",
            "format": "x12-835", "after": "archive", "archive_dir": "/var/lib/ficus/archive/remits",
            "legacy": "/var/lib/ficus/legacy/remits", "route": "modern"}


async def _his(name: str, port: int, make: Any, interval: float, stop: asyncio.Event) -> None:
    """A simulated HIS feed: one message every `interval` seconds, resending on a NAK."""
    async with MllpSender(f"his-{name}", "127.0.0.1", port, ack_timeout=10) as sender:
        seq = random.randint(1, 10_000_000)
        while not stop.is_set():
            seq += 1
            payload = make(seq)
            control = payload.split(b"|", 10)[9].decode()
            with contextlib.suppress(LegacyError):
                await sender.send(payload, control)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def _show(msg: StoredMsg) -> None:
    event = json.loads(msg.data)
    data = event.get("data", {})
    what = data.get("amount") or data.get("patient_class") or ""
    print(f"  event  {msg.subject:45} {event['ficusinterface']:12} {event.get('subject', ''):14} {what}",
          flush=True)


async def run_demo(duration: float | None = None, state_dir: str | None = None) -> int:
    """Runs the demo until Ctrl-C (or `duration` seconds); returns the exit code: 1 when the
    simulated ERP refused a request's signature, else 0.

    Without `state_dir` the demo keeps its state in a temporary directory that it removes when
    it ends, Ctrl-C included (a second Ctrl-C exits at once and leaves it).
    """
    if state_dir is not None:
        return await _run_demo(duration, state_dir)
    state = tempfile.mkdtemp(prefix="ficus-demo-")
    try:
        return await _run_demo(duration, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)  # not in a thread: this runs on Ctrl-C's cancellation too


async def _run_demo(duration: float | None, state: str) -> int:
    stop = asyncio.Event()
    # The ERP is left last: the service stops its sink (requests in flight finish) before it.
    async with SimulatedEngine() as engine, DemoErp(new_secret()) as erp:
        cfg = demo_config(state, engine.port, erp.url, erp.secret)
        async with Service(cfg) as svc:
            loop = asyncio.get_running_loop()
            shutdown.install(loop, stop.set, cfg.shutdown_timeout_seconds + Service.GRACE + 5)
            await svc.store.subscribe("canonical.>", _show)
            await svc.store.subscribe("shadow.canonical.>", _show)
            print(_banner(svc, engine.port, erp.url), flush=True)
            # Accounts the HIS charged lately: the payer's next 835 pays (or denies) their claims.
            charged: collections.deque[str] = collections.deque(maxlen=20)
            feeds = [
                asyncio.create_task(_his("adt", _port(svc, "his-adt"),
                                         lambda s: simulate.adt(s, random.choice(["A01", "A03", "A08"])),
                                         1.0, stop)),
                asyncio.create_task(_his("charges", _port(svc, "his-charges"), _charges(charged), 0.7, stop)),
                asyncio.create_task(_flip_later(svc.api_url or "", stop)),
                asyncio.create_task(_billing_exports(svc, stop)),
                asyncio.create_task(_remittances(svc, charged, stop)),
            ]
            if duration is not None:
                loop.call_later(duration, stop.set)
            await stop.wait()
            for task in feeds:
                task.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)
            print(f"ficus demo: stopping; the legacy engine received {len(engine.received)} messages",
                  flush=True)
    print(f"ficus demo: {erp.summary()}", flush=True)
    if erp.counts.bad_signatures:
        print("ficus demo: the ERP refused signatures: the sink's signing and the receiver disagree",
              file=sys.stderr, flush=True)
        return 1
    return 0


async def _billing_exports(svc: Service, stop: asyncio.Event) -> None:
    """The billing system's nightly export, every few seconds here: written, then renamed into place."""
    cfg = svc.interfaces["billing-export"].cfg
    assert isinstance(cfg, FolderInterfaceConfig)
    drop = Path(cfg.path)
    batch = random.randint(1000, 9999)
    while not stop.is_set():
        batch += 1
        staging = drop / f".export-{batch}.csv.part"
        staging.write_text(simulate.billing_export(batch, rows=5))
        staging.rename(drop / f"export-{batch}.csv")
        print(f"  file   export-{batch}.csv dropped into {drop}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 8)


def _charges(charged: collections.deque[str]) -> Callable[[int], bytes]:
    def make(seq: int) -> bytes:
        charged.append(f"ACCT{seq:09d}")  # PID-18 of simulate.dft
        return simulate.dft(seq, lines=3)
    return make


async def _remittances(svc: Service, charged: collections.deque[str], stop: asyncio.Event) -> None:
    """A payer's 835 every 10 s, the first at once (written, then renamed into place), paying
    the accounts charged since the last one."""
    cfg = svc.interfaces[REMITS].cfg
    assert isinstance(cfg, FolderInterfaceConfig)
    drop = Path(cfg.path)
    batch = random.randint(10_000, 99_999)
    while not stop.is_set():
        batch += 1
        staging = drop / f".remit-{batch}.835.part"
        accounts = [charged.popleft() for _ in range(min(3, len(charged)))]
        staging.write_text(simulate.remit835(batch, accounts=accounts))
        staging.rename(drop / f"remit-{batch}.835")
        print(f"  file   remit-{batch}.835 dropped into {drop}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 10)


def _port(svc: Service, name: str) -> int:
    listener = svc.interfaces[name].listener
    assert listener is not None
    return listener.port


async def _flip_later(api_url: str, stop: asyncio.Event) -> None:
    """After some shadow traffic, flip the charges feed to modern, as a migration team would."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 12)
        return
    client = ApiClient(api_url)
    try:
        await asyncio.to_thread(client.call, "PUT", "/api/v1/routes/his-charges",
                                {"mode": "modern", "reason": "demo: parity looks good"})
        print(f"\n  >>> flipped his-charges shadow -> modern ({cli_path()} routes set his-charges modern ...)\n",
              flush=True)
    except ApiError as exc:
        print(f"\n  >>> flip refused: {exc}\n", file=sys.stderr, flush=True)


def cli_path() -> str:
    """The `ficus` command as it can be typed here: the venv's script, relative to the current
    directory when it is below it (`.venv/bin/ficus` after `make demo`), else absolute. The
    venv is usually not activated, so a bare `ficus` is not found."""
    script = Path(sys.executable).parent / "ficus"
    if not script.exists():
        return f"{sys.executable} -m router.cli"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _banner(svc: Service, legacy_port: int, erp_url: str) -> str:
    api = svc.api_url
    ficus = cli_path()
    lines = [
        "",
        "Ficus demo is running. A simulated HIS sends ADT and DFT^P03 over MLLP; a simulated",
        f"legacy interface engine listens on 127.0.0.1:{legacy_port} and keeps receiving everything.",
        "",
        f"  dashboard      {api}/",
        f"  interfaces     curl -s {api}/api/v1/interfaces",
        f"  events         curl -s '{api}/api/v1/events?limit=5'",
        f"  shadow events  curl -s '{api}/api/v1/events?mode=shadow&limit=5'",
        f"  parity         curl -s {api}/api/v1/parity/his-charges",
        f"  metrics        curl -s {api}/metrics",
        f"  routes         {ficus} routes --api {api}",
        f"  flip back      {ficus} routes set his-charges legacy --reason rollback --api {api}",
        f"  sink status    {ficus} sinks --api {api}",
        f"  NATS           {svc.nats_url} (subjects canonical.>, shadow.canonical.>, raw.>, dlq.>)",
        "",
        "his-adt runs in shadow; his-charges starts in shadow and is flipped to modern after 12 s.",
        "billing-export (a drop folder) gets a CSV export every 8 s: delivered unchanged to the legacy",
        "folder and translated into shadow charge events.",
        "payer-835 (a drop folder, modern from the start) gets an 835 remittance every 10 s.",
        f"A simulated ERP ({erp_url}) receives the live charge and remittance events over",
        "HTTP (sink 'erp': signed per Standard Webhooks, repeats dropped by Idempotency-Key) and prints",
        "each as an 'erp  <-' line: remittances from the start, charges once his-charges is modern.",
        f"The ficus command is {ficus} (the CLI is installed in the project's .venv/bin, which is not on",
        "your PATH unless you run `source .venv/bin/activate`).",
        "Ctrl-C stops (and removes the demo's temporary state). Canonical events as they arrive:",
    ]
    return "\n".join(lines)
