"""ficus: the strangler-fig adapter for HL7 v2, file and ODBC interfaces.

Run the service, validate a config, translate files offline, flip routes and work the
dead-letter queue of a running service. The manual is README.md in the Ficus repository.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar
from urllib.parse import quote

from router import ledger
from router.audit import ACTIONS as AUDIT_ACTIONS
from router.client import ApiClient, ApiError, check_base_url
from router.config import (
    MODES,
    ConfigError,
    ConfigFileError,
    FicusConfig,
    MllpInterfaceConfig,
    OdbcInterfaceConfig,
    load_config,
    redact,
)
from router.embedded_nats import EmbeddedNatsError
from router.progress import Progress
from router.worker import Role, siblings, signal_started, worker_config

log = logging.getLogger("ficus")
_T = TypeVar("_T")


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


def log_handler(stream: TextIO, fmt: str = "text", worker: int | None = None) -> logging.Handler:
    """The handler `ficus run` and `ficus demo` log through: `text` lines, or `json` objects
    (router/logjson.py; the unit being worked on is then kept for each line). A worker of
    `workers` > 1 says which it is: `w2` before the logger's name, or `"worker": 2`."""
    from router import tracing
    from router.logjson import JsonFormatter

    handler = logging.StreamHandler(stream)
    text_format = LOG_FORMAT if worker is None else LOG_FORMAT.replace("%(name)s", f"w{worker} %(name)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else OneLineFormatter(text_format))
    if worker is not None:
        def tag(record: logging.LogRecord) -> bool:
            record.worker = worker
            return True

        handler.addFilter(tag)
    tracing.log_units(fmt == "json")
    return handler


def _setup_logging(level: str, fmt: str = "text", worker: int | None = None) -> None:
    logging.basicConfig(level=getattr(logging, level), handlers=[log_handler(sys.stderr, fmt, worker)])


def _notice(cfg: FicusConfig, text: str, level: int = logging.INFO, worker: int | None = None) -> None:
    """A line `ficus run` always shows on stderr (whatever log_level): `ficus: text`, or a JSON
    object like every log line when log_format is json; a worker's says which (`ficus w2: text`)."""
    if cfg.log_format == "json":
        from router.logjson import JsonFormatter

        record = logging.LogRecord("ficus", level, __file__, 0, text, None, None)
        if worker is not None:
            record.worker = worker
        print(JsonFormatter().format(record), file=sys.stderr, flush=True)
    else:
        print(f"ficus{'' if worker is None else f' w{worker}'}: {text}", file=sys.stderr, flush=True)


async def run_service(cfg: FicusConfig, role: Role | None = None) -> None:
    """Runs until SIGTERM or Ctrl-C, then stops within `shutdown_timeout_seconds`.

    A second signal exits at once. A stop that had to abandon work (the deadline passed) exits
    with code 1 at once, without the interpreter's teardown: an abandoned step may still hold a
    task or a thread that would make that teardown wait.
    """
    from router import shutdown, worker_metrics
    from router.offload import freeze_heap
    from router.service import Service

    limit = cfg.shutdown_timeout_seconds
    worker = None if role is None else role.number
    # Of several workers, the first serves the API (its /readyz answers for the others too).
    if role is None:
        svc = Service(cfg)
    elif role.number == 1:
        svc = Service(cfg, siblings=siblings(cfg, role), sibling_metrics=worker_metrics.sibling_sockets(cfg.workers))
    else:  # the API is worker 1's; this worker's metrics go to it through a socket
        svc = Service(cfg, api=False, metrics_socket=worker_metrics.socket_name(role.number))

    def first_signal() -> None:
        svc.draining.set()  # /readyz says "draining" from this instant, not from the next loop turn
        svc.stopping.set()

    # Before the start: a signal that arrives once /readyz answers (a balancer, a test, an
    # operator) must find its handler, not the default action that ends the process.
    backstop = cfg.cluster.drain_seconds + limit + Service.GRACE + 5
    shutdown.install(asyncio.get_running_loop(), first_signal, backstop)
    shutdown.on_hangup(asyncio.get_running_loop(), svc.reload_certificates)
    async with svc:
        freeze_heap()  # once per process: what start-up made lives as long as the process
        api = svc.api_url or "served by worker 1"
        _notice(cfg, f"running; API {api}, NATS {redact(svc.nats_url, [])}", worker=worker)
        if role is not None:
            signal_started(role)
        await svc.wait()
        await svc.drain()  # cluster.drain_seconds still serving, not ready, for a load balancer
        _notice(cfg, f"stopping (finishing messages in flight, at most {limit:g}s; a second Ctrl-C or "
                "SIGTERM exits at once)", worker=worker)
    if svc.abandoned:
        shutdown.exit_now("stopped with work abandoned at the shutdown deadline (exit code 1)", 1)


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run on uvloop when installed (faster publishing), else the stdlib loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


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
    role: Role | None = None
    if args.worker is not None:  # started by the supervisor of `workers` > 1
        role = Role(args.worker, args.instance or cfg.cluster.instance, args.nats_url, args.ready_fd)
        cfg = worker_config(cfg, role)
    elif cfg.workers > 1:
        return _supervise(cfg, args.config)
    worker = None if role is None else role.number
    _setup_logging(cfg.log_level, cfg.log_format, worker)
    raise_fd_limit(cfg)
    from router.service import StartError  # `run` loads the service anyway; other commands need not

    try:
        _run(run_service(cfg, role))
    except StartError as exc:  # a component that could not start (what had started is stopped): one line
        _notice(cfg, escape_controls(str(exc)), logging.ERROR, worker)
        return 1
    return 0


def _supervise(cfg: FicusConfig, path: str) -> int:
    """`workers` > 1: this process supervises that many `ficus run` workers (router/workers.py)."""
    _setup_logging(cfg.log_level, cfg.log_format)
    from router.workers import supervise

    return asyncio.run(supervise(cfg, path, lambda text: _notice(cfg, text)))


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo import run_demo

    _setup_logging("WARNING" if not args.verbose else "INFO", args.log_format)
    return _run(run_demo(duration=args.duration, state_dir=args.state_dir))


class UsageError(Exception):
    """A command that cannot be carried out as given; `str()` is one line, the exit code 2."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    rules = cfg.posting.rules_path()
    if rules is not None:  # the posting rules, against their chart of accounts (canonical/posting)
        from canonical.posting.rules import check_rules

        problems = check_rules(rules)
        if problems:
            raise ConfigError(args.config, [f"posting.rules: {p}" for p in problems])
    warning = cfg.api.insecure_warning()
    if warning:
        print(f"{args.config}: WARNING: {warning}", file=sys.stderr)
    if not cfg.interfaces:
        # Valid, but `ficus run` would only start NATS and the API: most likely a mistake.
        print(f"{args.config}: WARNING: no interfaces: add [[interfaces]] tables (ficus run would move nothing)",
              file=sys.stderr)
        print(f"{args.config}: ok (no interfaces)")
        return 0
    print(f"{args.config}: ok ({_count(len(cfg.interfaces), 'interface')}: "
          f"{', '.join(f'{i.name} [{i.kind}, {i.route}]' for i in cfg.interfaces)})")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from canonical.reference import ReferenceStore
    from canonical.translate import Hl7Mapping
    from router.offline import translate_files

    tz = "UTC"
    mapping: str | Hl7Mapping = "hl7v2"  # an interface's site map compiled in (its hl7_mapping)
    reference = None
    encoding: str = "utf-8"
    fallback: str | None = "windows-1252"
    flat = None
    fmt = args.format
    if args.interface and not args.config:
        raise UsageError("translate: --interface needs -c CONFIG (the config that defines it)")
    if args.config:
        cfg = load_config(args.config)
        if cfg.reference.paths():
            reference = ReferenceStore(cfg.reference.paths()).data
    if args.interface:
        known = [i.name for i in cfg.interfaces]
        if args.interface not in known:
            raise UsageError(f"translate: no interface {escape_controls(args.interface)!r} in {args.config} "
                             f"(its interfaces: {', '.join(known) or 'none'})")
        icfg = cfg.interface(args.interface)
        tz = icfg.timezone
        if isinstance(icfg, MllpInterfaceConfig):
            mapping, encoding, fallback = icfg.hl7_mapping, icfg.encoding, icfg.fallback_encoding
        elif isinstance(icfg, OdbcInterfaceConfig):
            raise UsageError(f"translate: {icfg.name} is an odbc interface: it has no files to translate")
        else:
            fmt, flat = fmt or icfg.format, icfg.flat
            mapping, encoding, fallback = icfg.hl7_mapping, icfg.encoding, icfg.fallback_encoding
    if fmt in ("csv", "fixed-width") and flat is None:
        raise UsageError(f"translate: --format {fmt} needs -c CONFIG --interface IFACE (the interface's layout)")
    failed = translate_files(
        [Path(f) for f in args.files], fmt=fmt, mapping=mapping, interface=args.interface or "offline",
        timezone=tz, encoding=encoding, fallback=fallback, out=sys.stdout, err=sys.stderr, reference=reference,
        # Progress on a terminal's stderr, unless the events scroll on the terminal too: they
        # would tear its line, and show the progress themselves.
        flat=flat, progress=False if sys.stdout.isatty() else None,
    )
    return 1 if failed else 0


def _q(value: str) -> str:
    """One path segment or query value, percent-encoded."""
    return quote(value, safe="")


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.api, args.token, args.config, ca=args.ca)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _facilities(route: dict[str, Any]) -> str:
    """`NORTH=shadow SOUTH=modern`, or empty."""
    return " ".join(f"{f}={m}" for f, m in sorted((route.get("facilities") or {}).items()))


def cmd_routes(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action is None:
        routes = client.call("GET", "/api/v1/routes")["routes"]
        if not routes:
            print("no interfaces")
            return 0
        print(f"{'INTERFACE':24} {'MODE':8} {'FACILITIES':20} {'CHANGED AT':29} BY: REASON")
        for name, route in sorted(routes.items()):
            print(f"{name:24} {route['mode']:8} {_facilities(route) or '-':20} {route.get('changed_at') or '-':29} "
                  f"{route.get('actor', '')}: {route.get('reason', '')}")
        return 0
    if args.action == "set":
        body = {"mode": args.mode, "reason": args.reason, "facility": args.facility, "force": args.force,
                "keep_facilities": args.keep_facilities}
        route = client.call("PUT", f"/api/v1/routes/{_q(args.iface)}", body)["route"]
        facilities = _facilities(route)
        print(f"{args.iface}: now {route['mode']}" + (f" (facilities: {facilities})" if facilities else ""))
        return 0
    history = client.call("GET", f"/api/v1/routes/{_q(args.iface)}/history")["history"]
    if not history:
        print(f"no flips recorded for {args.iface}")
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
        letters = client.call("GET", f"/api/v1/dlq{query}")["dead_letters"]
        if not letters:
            print("no dead letters" + (f" for {args.iface}" if args.iface else ""))
            return 0
        print(f"{'ID':>8} AT INTERFACE KIND UNIT: REASON")
        for d in letters:
            done = " [replayed]" if d.get("replayed") else " [discarded]" if d.get("discarded") else ""
            print(f"{d['id']:>8} {d['at']} {d['interface']} {d['kind']} unit {d['unit']}: {d['reason']}{done}")
        return 0
    if args.action == "discard":
        result = client.call("POST", f"/api/v1/dlq/{_q(args.id)}/discard", {"reason": args.reason})
        print(f"{args.id}: discarded by {result['actor']}")
        return 0
    if args.action == "replay":
        if (args.id is None) == (args.interface is None):
            raise UsageError("dlq replay: give a dead letter ID or --interface IFACE (one of them)")
        if args.id is not None:  # one letter: not found or refused is a refused request (exit 2)
            result = client.call("POST", f"/api/v1/dlq/{_q(args.id)}/replay", {})
            print(f"{args.id}: replayed, {result['events']} events")
            return 0
        listing = f"/api/v1/dlq?interface={_q(args.interface)}&limit=1000"
        ids = [d["id"] for d in client.call("GET", listing)["dead_letters"]
               if not d.get("replayed") and not d.get("discarded")]
        if not ids:
            print(f"no dead letters to replay for {args.interface}")
        code = 0
        for ident in ids:
            try:
                result = client.call("POST", f"/api/v1/dlq/{_q(str(ident))}/replay", {})
                print(f"{ident}: replayed, {result['events']} events")
            except ApiError as exc:
                code = max(code, exc.exit_code)
                print(f"{ident}: {exc}", file=sys.stderr)
        return code
    _print(client.call("GET", f"/api/v1/dlq/{_q(args.id)}"))
    return 0


def cmd_views(args: argparse.Namespace) -> int:
    # Through the API (operator, audited as views_rebuild): the running service owns the
    # buckets and its consumer, and every instance shares them, so one call rebuilds for all.
    result = _client(args).call("POST", "/api/v1/views/rebuild", {}, timeout=3600.0)
    print(f"views rebuilt from {result['events']} live events")
    return 0


def cmd_mapping(args: argparse.Namespace) -> int:
    from router import mapping_test

    try:
        return mapping_test.main(args, cmd_translate)
    except mapping_test.MappingTestError as exc:
        raise UsageError(str(exc)) from exc


def cmd_schemas(args: argparse.Namespace) -> int:
    from canonical.schemas import default_models, default_subjects, export

    if args.config:
        load_config(args.config)  # loads its user mappings: their own event types are exported too
    models = default_models()
    try:
        written = export(Path(args.dir), models, default_subjects(models))
    except OSError as exc:
        raise UsageError(f"schemas export: cannot write to {escape_controls(args.dir)}: "
                         f"{exc.strerror or type(exc).__name__}") from exc
    print(f"wrote {len(written)} files to {args.dir} ({len(models)} event types and asyncapi.json)")
    return 0


def cmd_post(args: argparse.Namespace) -> int:
    """Journal entries from a JSONL file of canonical events (what `ficus translate` writes), offline."""
    from contextlib import ExitStack

    from canonical.posting.batch import BatchSummary, post_lines
    from canonical.posting.rules import RulesError, load_rules

    try:
        rules = load_rules(Path(args.rules))
    except RulesError as exc:
        for problem in exc.problems:
            print(f"ficus: post: {escape_controls(problem)}", file=sys.stderr)
        return 2
    inputs = [Path(f) for f in args.files]
    for path in inputs:
        if str(path) != "-" and not path.is_file():
            raise UsageError(f"post: {escape_controls(str(path))}: no such file")
    total = BatchSummary()
    with ExitStack() as stack:
        out = stack.enter_context(open(args.out, "wb")) if args.out else sys.stdout.buffer
        rejects = stack.enter_context(open(args.rejects, "wb")) if args.rejects else sys.stderr.buffer
        for path in inputs:
            stream = sys.stdin.buffer if str(path) == "-" else stack.enter_context(path.open("rb"))
            summary = post_lines(stream, rules, out, rejects, source=str(path))
            for name in ("events", "entries", "skipped", "refused", "money_at_risk", "debits", "credits"):
                setattr(total, name, getattr(total, name) + getattr(summary, name))
        out.flush()
        rejects.flush()
    print(f"ficus: post: {total.line(rules.version)}", file=sys.stderr)
    return 1 if total.refused or not total.balanced else 0


def cmd_replay(args: argparse.Namespace) -> int:
    client = _client(args)
    path = f"/api/v1/replay/{_q(args.iface)}"
    body: dict[str, Any] = {"since": args.since, "dry_run": args.dry_run}
    if args.limit:
        body["limit"] = args.limit
    with Progress(None, "units", label=args.iface) as progress:
        if progress.enabled:  # JSON lines: a progress line per chunk, then the result
            result: dict[str, Any] | None = None
            for line in client.stream("POST", path, body):
                if "progress" in line:
                    progress.update(int(line["progress"]["units"]), line["progress"].get("total"))
                elif "error" in line:
                    raise ApiError(f"POST {path}: {line.get('status')} {line['error']}", line.get("status"))
                else:
                    result = line.get("result")
            if result is None:
                raise ApiError(f"POST {path}: the answer ended before the result")
        else:
            result = client.call("POST", path, body, timeout=3600.0)
    verb = "would be replayed" if args.dry_run else "replayed"
    money = result["money"]
    print(f"{args.iface}: {result['replayed']} units {verb} ({result['events']} events), {result['failed']} failed; "
          f"charges {money['charges']}, payments {money['payments']}, adjustments {money['adjustments']}")
    if result.get("diff") is not None:
        _print_diff(result["diff"])
    for reason in result["reasons"]:
        print(f"  {reason}", file=sys.stderr)
    return 1 if result["failed"] else 0


def _print_diff(diff: dict[str, Any]) -> None:
    """A dry run against what was published: counts and money, then the first differing events."""
    before, after = diff["before"], diff["after"]
    for name, side in (("published before", before), ("replay would publish", after)):
        m = side["money"]
        print(f"  {name}: {side['events']} events; charges {m['charges']}, payments {m['payments']}, "
              f"adjustments {m['adjustments']}")
    print(f"  {diff['changed']} changed, {diff['added']} added, {diff['removed']} removed, "
          f"{diff['unchanged']} unchanged")
    for entry in diff["first"]:
        print(f"  {entry['change']}: {entry['id']} {entry.get('type') or ''}".rstrip())
        for f in entry.get("fields", []):
            if "before" not in f:  # values are shown to an admin only (message content)
                print(f"    {f['field']}")
                continue
            print(f"    {f['field']}: {json.dumps(f['before'], default=str)} -> {json.dumps(f['after'], default=str)}")


AUDIT_COLUMNS = ("at", "actor", "role", "source", "action", "interface", "target", "result")


def _audit_target(target: dict[str, Any]) -> str:
    """A record's target in one cell: `key=value` pairs, long lists as their size."""
    cells = []
    for key, value in target.items():
        if value is None or value == []:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value)) if len(value) <= 5 else f"{len(value)} items"
        cells.append(f"{key}={value}")
    return " ".join(cells)


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit trail as a table, oldest first (admin only)."""
    query = "&".join(f"{k}={_q(v)}" for k, v in (("since", args.since), ("actor", args.actor),
                                                ("interface", args.interface), ("action", args.action),
                                                ("limit", str(args.limit) if args.limit else None)) if v)
    answer = _client(args).call("GET", "/api/v1/audit" + (f"?{query}" if query else ""))
    rows = []
    for r in answer["records"]:
        source = r.get("source") or {}
        where = source.get("ip", "?") + (f" ({source['cert']})" if source.get("cert") else "")
        result = r.get("result", "?") + (f" {r['status']}" if r.get("status") else "")
        rows.append([escape_controls(str(cell)) for cell in (
            r.get("at", "?"), r.get("actor", "?"), r.get("role", "?"), where, r.get("action", "?"),
            r.get("interface") or "-", _audit_target(r.get("target") or {}) or "-", result)])
    if not rows:
        print("no audit records" + (" since " + args.since if args.since else " in the last 24 hours"))
        return 0
    head = [c.upper() for c in AUDIT_COLUMNS]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if answer.get("next_after"):
        print(f"(more records: the API pages on with after={answer['next_after']})", file=sys.stderr)
    return 0


LEDGER_COLUMNS = ("received", "published", "dead_lettered", "filtered", "duplicates", "legacy", "shadow", "events")
# Beside the equation (not received): shown only when a replay is in the view.
LEDGER_REPLAY_COLUMNS = ("replayed", "replayed_events")
# Parity samples of units in shadow: shown only when a day in the view has some.
LEDGER_PARITY_COLUMNS = ("parity_agree", "parity_disagree")


def cmd_sinks(args: argparse.Namespace) -> int:
    client = _client(args)
    action = args.action or "status"
    if action == "status":
        sinks = client.call("GET", "/api/v1/sinks")["sinks"]
        if not sinks:
            print("no sinks configured")
        for s in sinks:
            state = f"paused by {s['paused_by']}" if s["paused"] else "delivering"
            print(f"{s['name']}: {state}, lag {s['lag'] if s['lag'] is not None else '?'}, in flight {s['in_flight']}, "
                  f"delivered {s['delivered']}, failures {s['failures']}, dead-lettered {s['dead_lettered']}, "
                  f"last delivered {s['last_delivered_at'] or 'never'}"
                  + (f", last error {s['last_error']}" if s["last_error"] else ""))
        return 0
    path = f"/api/v1/sinks/{_q(args.name)}/{action}"
    if action == "replay":
        result = client.call("POST", path, {"since": args.since})
        print(f"{args.name}: replaying events stored since {result['replay_since']}")
        return 0
    client.call("POST", path, {"reason": args.reason} if args.reason else {})
    print(f"{args.name}: {'paused' if action == 'pause' else 'resumed'}")
    return 0


def leases_table(answer: dict[str, Any]) -> str:
    """GET /api/v1/leases as a table: interface, owner, epoch, expires in."""
    header = ("INTERFACE", "OWNER", "EPOCH", "EXPIRES IN")
    rows = [header]
    for lease in answer["leases"]:
        owner = lease["owner"] or (f"(released from {lease['released_from']})" if lease["released_from"] else "-")
        if lease["here"]:
            owner += " *"
        left = "-" if lease["expires_in"] is None else f"{lease['expires_in']:g}s"
        rows.append((lease["interface"], owner, "-" if lease["epoch"] is None else str(lease["epoch"]), left))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, f"(* held by {answer['instance']}, the instance that answered)"])


def cmd_leases(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "release":
        done = client.call("POST", f"/api/v1/leases/{_q(args.iface)}/release", {"reason": args.reason})
        print(f"{args.iface}: released from {done['released_from']} (epoch {done['epoch']}); another instance "
              f"takes it over, {done['released_from']} waits {done['retry_after_seconds']:g}s before trying again")
        return 0
    answer = client.call("GET", "/api/v1/leases")
    if not answer["leases"]:
        print("no polling interfaces (MLLP listeners run on every instance and have no lease)")
        return 0
    print(leases_table(answer))
    return 0


def alerts_table(alerts: list[dict[str, Any]]) -> str:
    """GET /api/v1/alerts as a table: firing first, then resolved, then the quiet rules."""
    order = {"firing": 0, "resolved": 1, "ok": 2}
    header = ("STATE", "RULE", "KIND", "PROCESS", "INTERFACES", "FACILITIES", "AT RISK", "SINCE", "SENT", "SUMMARY")
    rows = [header] + [
        (a["state"], a["rule"], a["kind"] or "", a["process"] or "", ",".join(a["interfaces"]) or "-",
         ",".join(a["facilities"]) or "-", a["money_at_risk"] or "-", a["since"] or "-",
         str(a["repeats"] + 1) if a["last_sent"] else "0", a["summary"])
        for a in sorted(alerts, key=lambda a: (order.get(a["state"], 3), a["rule"]))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def cmd_alerts(args: argparse.Namespace) -> int:
    alerts = _client(args).call("GET", "/api/v1/alerts")["alerts"]
    if not alerts:
        print("no alert rules configured")
        return 0
    print(alerts_table(alerts))
    return 0


def instances_table(answer: dict[str, Any]) -> str:
    """GET /api/v1/instances as a table, one row per instance; `*` marks the one that answered."""
    header = ("INSTANCE", "HEALTH", "HOST", "PID", "VERSION", "API", "LEASES", "SEEN", "PROBLEMS")
    rows = [header] + [
        (("*" if i["instance"] == answer["instance"] else "") + i["instance"],
         i["health"] + (", draining" if i["draining"] else ""), i["host"], str(i["pid"]), i["version"],
         i["api"] or "-", ",".join(i["leases"]) or "-", f"{i['seen_seconds_ago']:g}s ago",
         "; ".join(i["problems"]) or "-")
        for i in answer["instances"]]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def cmd_instances(args: argparse.Namespace) -> int:
    answer = _client(args).call("GET", "/api/v1/instances")
    if not answer["instances"]:
        print("no instance registered")
        return 0
    print(instances_table(answer))
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    """The reconciliation ledger of an interface as a table, one line per day and facility."""
    query = f"?day={_q(args.day)}" if args.day else ""
    view = _client(args).call("GET", f"/api/v1/ledger/{_q(args.iface)}{query}")
    columns: tuple[str, ...] = LEDGER_COLUMNS
    if any(d["total"].get("replayed") for d in view["days"]):
        columns += LEDGER_REPLAY_COLUMNS
    if any(d["total"].get("parity_agree") or d["total"].get("parity_disagree") for d in view["days"]):
        columns += LEDGER_PARITY_COLUMNS
    head = ["day", "facility", *(c.replace("_", " ") for c in columns), "charges", "payments",
            "adjustments", "balanced"]
    rows: list[list[str]] = []
    for day in (d for d in view["days"] if d["facilities"]):  # a day asked for may have nothing
        for who, row in [*((f["facility"] or "-", f) for f in day["facilities"]), ("total", day["total"])]:
            money = row["money"]["received"]
            rows.append([day["day"], escape_controls(str(who)), *(str(row.get(c, 0)) for c in columns),
                         money["charges"], money["payments"], money["adjustments"],
                         "yes" if row["balanced"] else "NO"])
    if not rows:
        print(f"{args.iface}: no units counted" + (f" on {args.day}" if args.day else ""))
        return 0
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for day in view["days"]:
        for problem in day["problems"]:
            print(f"{args.iface} {day['day']}: does not balance: {problem}", file=sys.stderr)
    return 0 if view["balanced"] else 1


def cmd_parity(args: argparse.Namespace) -> int:
    """`ficus parity gl IFACE --day D`: GL parity of a day as a table (exit 1 when it differs)."""
    view = _client(args).call("GET", f"/api/v1/parity/{_q(args.iface)}/gl?day={_q(args.day)}")
    ex, us = view["export"], view["ficus"]
    print(f"{args.iface} {view['day']}: export {ex['lines']} lines in {ex['files']} file(s), Ficus {us['entries']} "
          f"entries ({us['memo_entries_left_out']} memo left out); {view['accounts_compared']} accounts compared, "
          f"{len(view['accounts_differing'])} differ")
    if view["zero_difference"]:
        print(f"{args.iface} {view['day']}: zero difference")
        return 0
    head = ["kind", "money", "facility", "accounts", "entries", "source events", "export lines"]
    rows = [[d["kind"], d["money"], escape_controls(d["facility"]),
             " / ".join("-".join(escape_controls(v) for v in a.values()) for a in d["accounts"]),
             _listed(d["entries"], d["entries_count"]), _listed(d["source_events"], d["source_events_count"]),
             _listed([f"{x['file'][:12]}:{x['line']}" for x in d["export_lines"]], d["export_lines_count"])]
            for d in view["differences"]]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for d in view["differences"]:
        print(f"{d['kind']}: {escape_controls(d['detail'])}", file=sys.stderr)
    return 1


MESSAGE_KEYS = (("control_id", "control_id"), ("account", "account"), ("encounter", "encounter"),
                ("claim", "claim"), ("trace", "trace"), ("unit", "unit"))
"""(option dest, API query parameter) of `ficus messages`."""


def cmd_messages(args: argparse.Namespace) -> int:
    """`ficus messages --control-id X ...` (a table) or `ficus messages show CORRELATION` (the chain)."""
    client = _client(args)
    if args.action == "show":
        chain = client.call("GET", f"/api/v1/messages/{_q(args.correlation)}")
        raw = chain.get("raw") or {}
        print(f"correlation {chain['correlation']} ({chain.get('interface')}, "
              f"{chain.get('control_id') or chain.get('unit') or '-'})")
        size = f" ({raw['size']} bytes)" if raw.get("size") is not None else ""
        print(f"raw          {raw.get('ref', '-')}{size}")
        for ev in chain["events"]:
            print(f"event        {ev['id']} {ev['type']} {ev['stream']}/{ev['seq']}")
        for d in chain["dead_letters"]:
            print(f"dead letter  {d['id']} {d['kind']}: {d['reason']}")
        for r in chain["replays"]:
            print(f"replay       {r.get('letter') or r.get('token')} at {r.get('at')}: {r.get('events')} events")
        for d in chain["deliveries"]:
            print(f"delivery     {d['sink']} {d['event_id']} status {d['status']} after {d['attempts']} "
                  f"attempt(s) at {d['at']}")
        return 0
    params = [(name, getattr(args, dest)) for dest, name in MESSAGE_KEYS if getattr(args, dest)]
    params += [(name, value) for name, value in (("interface", args.interface), ("from", args.since),
                                                 ("to", args.until), ("limit", str(args.limit))) if value]
    if not any(name in dict(MESSAGE_KEYS).values() or name in ("interface", "from") for name, _ in params):
        raise UsageError("messages: give a key (--control-id, --account, --encounter, --claim, --trace, --unit), "
                         "or --interface / --from")
    found = client.call("GET", "/api/v1/messages?" + "&".join(f"{n}={_q(v)}" for n, v in params))["messages"]
    if not found:
        print("no messages found")
        return 0
    print(f"{'RECEIVED AT':29} {'INTERFACE':16} {'CONTROL ID / UNIT':24} {'EVENTS':>6} {'LETTERS':>7} CORRELATION")
    for m in found:
        print(f"{m.get('received_at') or '-':29} {m.get('interface') or '-':16} "
              f"{m.get('control_id') or m.get('unit') or '-':24} {len(m['events']):>6} {len(m['dead_letters']):>7} "
              f"{m['correlation']}")
    return 0


def _listed(items: list[str], count: int) -> str:
    shown = ",".join(escape_controls(i) for i in items[:3]) or "-"
    return shown + (f" (+{count - 3})" if count > 3 else "")


def _day(text: str) -> str:
    if not ledger.valid_day(text):
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}")
    return text


EXIT_CODES = """\
exit codes:
  0  done
  1  the work failed: a unit dead-lettered or still failing after a replay, problems found by
     `ficus check`, a service error (HTTP 5xx), `ficus run` stopped by its shutdown deadline
  2  usage or refused: bad arguments, a config file that cannot be used (missing, a directory,
     not UTF-8, invalid for any command but `check`), an API that cannot be reached or that
     refuses the request (HTTP 4xx, e.g. 404 not found, 409 refused)

The manual (every command, config key and runbook) is README.md in the Ficus repository.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `ficus: routes set: <what is wrong> (ficus routes set --help)`."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ficus").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"ficus: {where}{escape_controls(message)} (see {self.prog} --help)\n")


def _iso_time(text: str) -> str:
    """An ISO 8601 time as the API takes it (a `Z` suffix allowed); ArgumentTypeError otherwise."""
    from datetime import datetime

    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected an ISO 8601 time, e.g. 2026-11-25T08:00:00Z") from None
    return text


def _api_url(text: str) -> str:
    try:
        return check_base_url(text, "--api")
    except ApiError:
        raise argparse.ArgumentTypeError("expected the API's base URL, http://HOST:PORT or https://HOST:PORT") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value > 0:
        raise argparse.ArgumentTypeError("expected a number of seconds above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ficus", description=__doc__, epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def api_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="config file to find the API and its token in "
                       "(default ./ficus.toml when it exists and --api is not given)")
        p.add_argument("--api", type=_api_url, metavar="URL",
                       help="API base URL; default $FICUS_API, else the config's api.listen, else "
                            "http://127.0.0.1:8080")
        p.add_argument("--token", help="bearer token; default $FICUS_TOKEN, else the config's "
                                       "(operator, else viewer)")
        p.add_argument("--ca", metavar="FILE", help="CA bundle to trust for an https:// API; default $FICUS_CA, "
                       "else the config's api.tls.cert, else the system's")

    p = sub.add_parser("run", help="run the service until SIGTERM or Ctrl-C")
    p.add_argument("-c", "--config", default="ficus.toml", help="config file (default ./ficus.toml)")
    # A worker of `workers` > 1, started by the supervisor (router/workers.py); not for people.
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    p.add_argument("--nats-url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run on the example config with simulated legacy systems")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                   help="stop after SECONDS (default: until Ctrl-C)")
    p.add_argument("--state-dir", default=None, help="where the demo keeps its NATS store (default: a temporary "
                   "directory)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO instead of WARNING")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines as text (default) or one JSON object per line, as log_format does for run")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check", help="validate a config and list every problem")
    p.add_argument("-c", "--config", default="ficus.toml", help="config file (default ./ficus.toml)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("translate", help="translate files offline (no NATS): events on stdout, dead letters on "
                       "stderr")
    p.add_argument("files", nargs="+", metavar="FILE", help="files to translate")
    p.add_argument("--format", choices=["hl7v2", "x12-835", "csv", "fixed-width"], default=None,
                   help="default: detected per file (ISA/ST first: x12-835; an MSH, FHS or BHS line: hl7v2); "
                        "csv and fixed-width need -c and --interface for the layout")
    p.add_argument("-c", "--config", help="config file: its reference tables enrich the events")
    p.add_argument("--interface", metavar="IFACE",
                   help="translate as this interface of the config (mapping, time zone, layout)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("mapping", help="test an interface's mapping like code (for a site's CI)")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = msub.add_parser("test", help="translate FILES as IFACE and compare the events and dead letters with "
                        "EXPECTED (JSON lines, as ficus translate writes them): a field-level diff, exit 1 on a "
                        "difference")
    m.add_argument("interface", metavar="IFACE", help="the interface of the config whose mapping is tested")
    m.add_argument("files", nargs="*", metavar="FILE",
                   help="messages to translate; default: the files the expected lines name (ficusraw, file)")
    m.add_argument("--expect", required=True, metavar="EXPECTED.jsonl", help="the expected events and dead letters")
    m.add_argument("-c", "--config", default="ficus.toml", help="config file (default ./ficus.toml)")
    m.add_argument("--ignore", action="append", metavar="FIELD",
                   help="a field path not compared (data.erp, time); repeatable; ficusraw never is")
    m.add_argument("--update", action="store_true", help="write EXPECTED from this translation instead")
    m.set_defaults(func=cmd_mapping)

    p = sub.add_parser("schemas", help="JSON Schema and AsyncAPI for consumers")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = ssub.add_parser("export", help="write <type>.schema.json per event and asyncapi.json")
    e.add_argument("dir", metavar="DIR", help="directory to write to (created if missing)")
    e.add_argument("-c", "--config", help="config file: the event types of its user mappings (entrypoint:NAME) "
                   "are exported too")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("post", help="post canonical events (JSONL, e.g. from ficus translate) to journal entries "
                       "offline, by a rules file")
    p.add_argument("files", nargs="+", metavar="EVENTS.jsonl", help="files of events, one per line (- for stdin)")
    p.add_argument("--rules", required=True, metavar="R", help="the posting rules file (TOML, with its CSV tables)")
    p.add_argument("--out", metavar="FILE", help="write the entries here (default stdout), one JSON line each")
    p.add_argument("--rejects", metavar="FILE", help="write refusals here (default stderr): reason and money "
                   "at risk, one JSON line each")
    p.set_defaults(func=cmd_post)

    p = sub.add_parser("routes", help="the routing table (with no action: list it)")
    api_opts(p)
    rsub = p.add_subparsers(dest="action", metavar="ACTION")
    s = rsub.add_parser("set", help="flip an interface (or one facility of it)")
    s.add_argument("iface", metavar="IFACE", help="interface name")
    s.add_argument("mode", choices=MODES, help="legacy, shadow or modern")
    s.add_argument("--reason", required=True, help="why (recorded in the history, e.g. a change ticket)")
    s.add_argument("--facility", help="flip one facility only (a canary)")
    s.add_argument("--keep-facilities", action="store_true",
                   help="without --facility: keep the facility overrides (by default they are cleared)")
    s.add_argument("--force", action="store_true", help="flip even when parity is below the gate")
    api_opts(s)
    h = rsub.add_parser("history", help="audit trail of an interface's flips")
    h.add_argument("iface", metavar="IFACE", help="interface name")
    api_opts(h)
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("dlq", help="the dead-letter queue")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = dsub.add_parser("list", help="list dead letters, newest last")
    d.add_argument("iface", nargs="?", metavar="IFACE", help="only this interface's")
    api_opts(d)
    d = dsub.add_parser("show", help="one dead letter in full (JSON)")
    d.add_argument("id", metavar="ID", help="dead letter id (first column of dlq list)")
    api_opts(d)
    d = dsub.add_parser("replay", help="translate a dead letter's raw message again (after a fix)")
    d.add_argument("id", nargs="?", metavar="ID", help="the dead letter to replay")
    d.add_argument("--interface", metavar="IFACE", help="instead of ID: every dead letter of IFACE not yet replayed")
    api_opts(d)
    d = dsub.add_parser("discard", help="mark a dead letter as needing no replay (audited)")
    d.add_argument("id", metavar="ID", help="the dead letter")
    d.add_argument("--reason", required=True, metavar="TEXT", help="why it needs no replay")
    api_opts(d)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("sinks", help="push delivery to receivers (with no action: status)")
    api_opts(p)
    ksub = p.add_subparsers(dest="action", metavar="ACTION")
    k = ksub.add_parser("status", help="lag, last delivered, failures of every sink")
    api_opts(k)
    for verb, text in (("pause", "stop delivering (kept across restarts and instances)"), ("resume", "deliver again")):
        k = ksub.add_parser(verb, help=text)
        k.add_argument("name", metavar="NAME", help="sink name")
        k.add_argument("--reason", metavar="TEXT", help="why (recorded in the audit trail)")
        api_opts(k)
    k = ksub.add_parser("replay", help="deliver again every event stored since a time")
    k.add_argument("name", metavar="NAME", help="sink name")
    k.add_argument("--since", required=True, type=_iso_time, metavar="TIME",
                   help="ISO 8601 time, e.g. 2026-11-25T08:00:00Z (no zone: UTC)")
    api_opts(k)
    p.set_defaults(func=cmd_sinks)

    p = sub.add_parser("leases", help="who polls each folder, SFTP and ODBC interface (with no action: list)")
    api_opts(p)
    lsub = p.add_subparsers(dest="action", metavar="ACTION")
    k = lsub.add_parser("release", help="hand a polling interface over: its owner steps down (operator, audited)")
    k.add_argument("iface", metavar="IFACE", help="interface name")
    k.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded in the audit trail)")
    api_opts(k)
    p.set_defaults(func=cmd_leases)

    p = sub.add_parser("alerts", help="alert rules and their state: firing, resolved or ok, with process, "
                                      "facilities and money at risk")
    api_opts(p)
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("instances", help="every Ficus instance on this NATS: health (ready, not ready, stale), "
                                         "the leases it holds, when it was last seen")
    api_opts(p)
    p.set_defaults(func=cmd_instances)

    p = sub.add_parser("replay", help="re-translate an interface's raw traffic since a time")
    p.add_argument("iface", metavar="IFACE", help="interface name")
    p.add_argument("--since", required=True, type=_iso_time, metavar="TIME",
                   help="ISO 8601 time, e.g. 2026-11-25T08:00:00Z (no zone: UTC)")
    p.add_argument("--dry-run", action="store_true",
                   help="publish nothing: show what would be published and how it differs from before")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N raw units (messages, files, rows)")
    api_opts(p)
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("ledger", help="the reconciliation ledger: units received and where each went, per day "
                       "and facility")
    p.add_argument("iface", metavar="IFACE", help="interface name")
    p.add_argument("--day", type=_day, metavar="D", help="one UTC day, YYYY-MM-DD (default: every day kept)")
    api_opts(p)
    p.set_defaults(func=cmd_ledger)
    p = sub.add_parser("parity", help="parity evidence beyond the sample window")
    qsub = p.add_subparsers(dest="kind", required=True)
    q = qsub.add_parser("gl", help="GL parity of a day: the legacy GL export against Ficus's journal entries")
    q.add_argument("iface", metavar="IFACE", help="the GL export interface (format gl-export)")
    q.add_argument("--day", type=_day, required=True, metavar="D", help="posting day, YYYY-MM-DD")
    api_opts(q)
    p.set_defaults(func=cmd_parity)
    p = sub.add_parser("messages", help="find messages by business key (MSH-10, account, claim, trace) and "
                       "follow one's links: raw, events, dead letters, replays, deliveries")
    p.add_argument("--control-id", dest="control_id", metavar="ID", help="MSH-10")
    p.add_argument("--account", metavar="A", help="account number (PID-18)")
    p.add_argument("--encounter", metavar="E", help="encounter number (PV1-19)")
    p.add_argument("--claim", metavar="C", help="claim number (CLP01 or CLP07)")
    p.add_argument("--trace", metavar="T", help="EFT or check trace (TRN02)")
    p.add_argument("--unit", metavar="U", help="a file name and line, a table and key")
    p.add_argument("--interface", metavar="IFACE", help="only this interface's")
    p.add_argument("--from", dest="since", type=_iso_time, metavar="TIME", help="committed at or after (ISO 8601)")
    p.add_argument("--to", dest="until", type=_iso_time, metavar="TIME", help="committed up to (ISO 8601)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="results at most (default 50)")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    m = msub.add_parser("show", help="one message's chain by its correlation id")
    m.add_argument("correlation", metavar="CORRELATION", help="the correlation id a search printed")
    api_opts(m)
    api_opts(p)
    p.set_defaults(func=cmd_messages)
    p = sub.add_parser("audit", help="the audit trail: flips, replays and reads of message content, who, "
                       "when, from where (admin)")
    p.add_argument("--since", type=_iso_time, metavar="TIME", help="ISO 8601 time (default: 24 hours ago)")
    p.add_argument("--actor", metavar="NAME", help="only this client's or user's records")
    p.add_argument("--interface", metavar="IFACE", help="only records about this interface")
    p.add_argument("--action", choices=AUDIT_ACTIONS, help="only this action")
    p.add_argument("--limit", type=int, metavar="N", help="at most N records (default 100, at most 1000)")
    api_opts(p)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("views", help="the status lookups' views (claims, remittances, account charges)")
    vsub = p.add_subparsers(dest="action", required=True)
    v = vsub.add_parser("rebuild", help="drop the views and apply every live event again (operator)")
    api_opts(v)
    p.set_defaults(func=cmd_views)
    return parser


def _os_error(exc: OSError) -> str:
    """An OSError on one line: what failed and on which file, without a traceback."""
    where = f" ({escape_controls(str(exc.filename))})" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code (see EXIT_CODES)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.path}: {escape_controls(problem)}", file=sys.stderr)
        # `check` found problems (its work); any other command was refused a usable config.
        return 1 if args.command == "check" and not isinstance(exc, ConfigFileError) else 2
    except UsageError as exc:
        print(f"ficus: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"ficus: {exc}", file=sys.stderr)
        return exc.exit_code
    except EmbeddedNatsError as exc:  # a store in use, a port taken: one line, no traceback
        print(f"ficus: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the environment failed the work (a port taken, a disk full): one line
        print(f"ficus: {args.command}: {_os_error(exc)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
