"""The `ficus` command line (see PRODUCT.md for the contract of each command)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from router.client import ApiClient, ApiError
from router.config import (
    INSECURE_WARNING,
    MODES,
    ConfigError,
    FicusConfig,
    MllpInterfaceConfig,
    OdbcInterfaceConfig,
    load_config,
    redact,
)
from router.embedded_nats import EmbeddedNatsError

log = logging.getLogger("ficus")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# C0 controls but tab, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """`text` on one line: newlines and other control characters as backslash escapes."""
    def one(m: re.Match[str]) -> str:
        ch = m.group()
        return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")

    return _CONTROL.sub(one, text)


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, so a file name (or any value that reached a
    log call) with a newline cannot forge a log line. Tracebacks are appended after, unescaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def log_handler(stream: TextIO) -> logging.Handler:
    """The handler `ficus run` and `ficus demo` log through."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    return handler


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), handlers=[log_handler(sys.stderr)])


async def run_service(cfg: FicusConfig) -> None:
    """Runs until SIGTERM or Ctrl-C, then stops cleanly."""
    from router.service import Service

    async with Service(cfg) as svc:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, svc.stopping.set)
        print(f"ficus: running; API {svc.api_url}, NATS {redact(svc.nats_url, [])}", file=sys.stderr)
        await svc.wait()
        print("ficus: stopping (finishing messages in flight)", file=sys.stderr)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """asyncio.run on uvloop when installed (faster publishing), else the stdlib loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


FD_HEADROOM = 256
"""Descriptors kept for everything but sender connections: NATS, the API, files, the legacy path."""


def raise_fd_limit(cfg: FicusConfig) -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one; warn when the listeners' caps do not fit.

    The usual soft limit (1024) is what idle connections exhausted before listeners had a
    cap; with every cap summed plus headroom under the limit, senders can never starve the
    API or the file interfaces of descriptors. Returns the soft limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logging.getLogger("ficus").warning("cannot raise the open-files limit (%s)", type(exc).__name__)
    needed = FD_HEADROOM + sum(i.max_connections for i in cfg.interfaces if isinstance(i, MllpInterfaceConfig))
    if soft < needed:
        logging.getLogger("ficus").warning(
            "open-files limit %d is below the MLLP connection caps plus headroom (%d): lower max_connections "
            "or raise the limit (ulimit -n)", soft, needed)
    return int(soft)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _setup_logging(cfg.log_level)
    raise_fd_limit(cfg)
    _run(run_service(cfg))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo import run_demo

    _setup_logging("WARNING" if not args.verbose else "INFO")
    _run(run_demo(duration=args.duration, state_dir=args.state_dir))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg.api.insecure and not cfg.api.tokens:
        print(f"{args.config}: WARNING: {INSECURE_WARNING.format(listen=cfg.api.listen)}", file=sys.stderr)
    print(f"{args.config}: ok ({len(cfg.interfaces)} interfaces: "
          f"{', '.join(f'{i.name} [{i.kind}, {i.route}]' for i in cfg.interfaces)})")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from canonical.reference import ReferenceStore
    from router.offline import translate_files

    mapping, tz = "hl7v2", "UTC"
    reference = None
    encoding: str = "utf-8"
    fallback: str | None = "windows-1252"
    flat = None
    fmt = args.format
    if args.interface:
        if not args.config:
            raise ConfigError("ficus translate", ["--interface needs -c CONFIG"])
        cfg = load_config(args.config)
        icfg = cfg.interface(args.interface)
        tz = icfg.timezone
        if cfg.reference.paths():
            reference = ReferenceStore(cfg.reference.paths()).data
        if isinstance(icfg, MllpInterfaceConfig):
            mapping, encoding, fallback = icfg.mapping, icfg.encoding, icfg.fallback_encoding
        elif isinstance(icfg, OdbcInterfaceConfig):
            raise ConfigError("ficus translate", [f"{icfg.name} is an odbc interface: it has no files to translate"])
        else:
            fmt, flat = fmt or icfg.format, icfg.flat
    if fmt in ("csv", "fixed-width") and flat is None:
        raise ConfigError("ficus translate", [f"--format {fmt} needs -c CONFIG --interface IFACE (its layout)"])
    failed = translate_files(
        [Path(f) for f in args.files], fmt=fmt, mapping=mapping, interface=args.interface or "offline",
        timezone=tz, encoding=encoding, fallback=fallback, out=sys.stdout, err=sys.stderr, reference=reference,
        flat=flat,
    )
    return 1 if failed else 0


def _q(value: str) -> str:
    """One path segment or query value, percent-encoded."""
    return quote(value, safe="")


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.api, args.token, args.config)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_routes(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action is None:
        routes = client.call("GET", "/api/v1/routes")["routes"]
        for name, route in sorted(routes.items()):
            extra = " ".join(f"{f}={m}" for f, m in route.get("facilities", {}).items())
            print(f"{name:24} {route['mode']:8} {extra:20} {route.get('changed_at', '')} "
                  f"{route.get('actor', '')}: {route.get('reason', '')}")
        return 0
    if args.action == "set":
        body = {"mode": args.mode, "reason": args.reason, "facility": args.facility, "force": args.force,
                "keep_facilities": args.keep_facilities}
        result = client.call("PUT", f"/api/v1/routes/{_q(args.iface)}", body)
        print(f"{args.iface}: now {result['route']['mode']}"
              + (f" (facilities {result['route']['facilities']})" if result["route"]["facilities"] else ""))
        return 0
    history = client.call("GET", f"/api/v1/routes/{_q(args.iface)}/history")["history"]
    for h in history:
        fac = f" facility {h['facility']}" if h.get("facility") else ""
        forced = " FORCED" if h.get("forced") else ""
        cleared = " ".join(f"{f}={m}" for f, m in (h.get("cleared_facilities") or {}).items())
        cleared = f" (cleared facilities {cleared})" if cleared else ""
        print(f"{h['at']} {h['from']} -> {h['to']}{fac}{forced} by {h['actor']}: {h['reason']}{cleared}")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "list":
        query = f"?interface={_q(args.iface)}" if args.iface else ""
        for d in client.call("GET", f"/api/v1/dlq{query}")["dead_letters"]:
            done = " [replayed]" if d.get("replayed") else ""
            print(f"{d['id']:>8} {d['at']} {d['interface']} {d['kind']} unit {d['unit']}: {d['reason']}{done}")
        return 0
    if args.action == "replay":
        if args.id is None and args.interface is None:
            raise ApiError("dlq replay needs an ID or --interface IFACE")
        listing = f"/api/v1/dlq?interface={_q(args.interface)}&limit=1000" if args.interface else ""
        ids = [args.id] if args.id else [
            d["id"] for d in client.call("GET", listing)["dead_letters"] if not d.get("replayed")]
        failed = 0
        for ident in ids:
            try:
                result = client.call("POST", f"/api/v1/dlq/{_q(str(ident))}/replay", {})
                print(f"{ident}: replayed, {result['events']} events")
            except ApiError as exc:
                failed += 1
                print(f"{ident}: {exc}", file=sys.stderr)
        return 1 if failed else 0
    _print(client.call("GET", f"/api/v1/dlq/{_q(args.id)}"))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from canonical.schemas import default_models, default_subjects, export

    models = default_models()
    written = export(Path(args.dir), models, default_subjects(models))
    print(f"wrote {len(written)} files to {args.dir} ({len(models)} event types and asyncapi.json)")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    result = _client(args).call("POST", f"/api/v1/replay/{_q(args.iface)}", {"since": args.since})
    print(f"{args.iface}: {result['replayed']} units replayed ({result['events']} events), {result['failed']} failed")
    for reason in result["reasons"]:
        print(f"  {reason}", file=sys.stderr)
    return 1 if result["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ficus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def api_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="config file (to find the API and its token)")
        p.add_argument("--api", help="API base URL (default from config, $FICUS_API or http://127.0.0.1:8080)")
        p.add_argument("--token", help="bearer token (default $FICUS_TOKEN or the config's)")

    p = sub.add_parser("run", help="run the service")
    p.add_argument("-c", "--config", default="ficus.toml")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run on the example config with simulated legacy systems")
    p.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    p.add_argument("--state-dir", default=None, help="where the demo keeps its NATS store")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check", help="validate a config")
    p.add_argument("-c", "--config", default="ficus.toml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("translate", help="translate files offline (no NATS)")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=["hl7v2", "x12-835", "csv", "fixed-width"], default=None,
                   help="default: detected per file (ISA/ST first: x12-835)")
    p.add_argument("-c", "--config")
    p.add_argument("--interface")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("schemas", help="JSON Schema and AsyncAPI for consumers")
    ssub = p.add_subparsers(dest="action", required=True)
    e = ssub.add_parser("export", help="write <type>.schema.json per event and asyncapi.json")
    e.add_argument("dir")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("routes", help="the routing table")
    api_opts(p)
    rsub = p.add_subparsers(dest="action")
    s = rsub.add_parser("set", help="flip an interface")
    s.add_argument("iface")
    s.add_argument("mode", choices=MODES)
    s.add_argument("--reason", required=True)
    s.add_argument("--facility", help="flip one facility only (a canary)")
    s.add_argument("--keep-facilities", action="store_true",
                   help="without --facility: keep the facility overrides (by default they are cleared)")
    s.add_argument("--force", action="store_true", help="flip even when parity is below the gate")
    api_opts(s)
    h = rsub.add_parser("history", help="audit trail of an interface's flips")
    h.add_argument("iface")
    api_opts(h)
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("dlq", help="the dead-letter queue")
    dsub = p.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("list")
    d.add_argument("iface", nargs="?")
    api_opts(d)
    d = dsub.add_parser("show")
    d.add_argument("id")
    api_opts(d)
    d = dsub.add_parser("replay", help="translate a dead letter's raw message again (after a fix)")
    d.add_argument("id", nargs="?")
    d.add_argument("--interface")
    api_opts(d)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("replay", help="re-translate an interface's raw traffic since a time")
    p.add_argument("iface")
    p.add_argument("--since", required=True, help="ISO 8601 time, e.g. 2026-11-25T08:00:00Z")
    api_opts(p)
    p.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"ficus: {exc}", file=sys.stderr)
        return 2
    except EmbeddedNatsError as exc:  # a store in use, a port taken: one line, no traceback
        print(f"ficus: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
