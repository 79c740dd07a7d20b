"""W3C trace context and OpenTelemetry spans for the stages of a unit (issue 16, item 3).

Each unit (an MLLP message, a file, a batch of rows) starts a trace with :func:`unit` -- a new
one, or the inbound ``traceparent`` when its source carries one (none of today's inputs do:
MLLP, files and database rows have no place for it). Its stages are child spans
(:func:`span`): ``archive``, ``translate``, ``publish`` (the commit), ``legacy forward``; the
events carry the trace as the CloudEvents ``traceparent`` extension (router/stage.py stamps
them), and a sink continues it in a ``sink delivery`` span (:func:`delivery`) whose context
goes out in the request's ``traceparent`` header.

Off unless configured: without ``[tracing] otlp_endpoint`` (or a provider a test installs
with :func:`install`) nothing of OpenTelemetry is even imported, :func:`span` hands back one
shared no-op context manager (a function call and a global read on the hot path), and
events carry no ``traceparent``, byte for byte what they were before tracing existed.

Span attributes are identifiers only -- interface, unit id (a hash for MLLP), counts --
never a field value: a trace backend is not cleared for patient data.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from router.config import TracingConfig

__all__ = [
    "NO_SPAN",
    "SpanLike",
    "annotate",
    "configure",
    "current_trace_id",
    "current_traceparent",
    "delivery",
    "enabled",
    "install",
    "log_context",
    "log_units",
    "outbound",
    "shutdown",
    "span",
    "traced",
    "traced_delivery",
    "traced_sync",
    "traced_unit",
    "uninstall",
    "unit",
]

P = ParamSpec("P")
T = TypeVar("T")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
"""Version 00 of the W3C header, the only one Ficus writes or continues."""
ATTR_PREFIX = "ficus."
EXPORT_TIMEOUT_SECONDS = 10.0
_units_log = logging.getLogger("ficus.units")


class SpanLike(Protocol):
    """What a stage may do with its span: add identifiers once it knows them."""

    def set_attribute(self, key: str, value: Any) -> None: ...

    def is_recording(self) -> bool: ...


class _NoSpan:
    """The span of a stage when tracing is off: takes nothing, costs nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NO_SPAN: SpanLike = _NoSpan()
_NOOP: ContextManager[SpanLike] = contextlib.nullcontext(NO_SPAN)
"""Reused by every call while tracing is off (nullcontext is reentrant)."""

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
"""The provider :func:`configure` made (and :func:`shutdown` flushes); not a test's."""
_log_units = False
"""Whether :func:`unit` keeps the unit in :data:`_UNIT` for JSON log lines (router/logjson.py)."""
_UNIT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("ficus_unit", default=None)
_OUTBOUND: contextvars.ContextVar[str | None] = contextvars.ContextVar("ficus_outbound", default=None)
"""The ``traceparent`` a delivery sends (:func:`traced_delivery`, :func:`outbound`)."""


# -- set-up ----------------------------------------------------------------------------------


def enabled() -> bool:
    return _tracer is not None


def install(provider: TracerProvider) -> None:
    """Traces from now on into ``provider`` (a test's, with an in-memory exporter; or configure's)."""
    global _tracer
    _tracer = provider.get_tracer("ficus")


def uninstall() -> None:
    """Back to no tracing (spans no-ops, events untraced)."""
    global _tracer
    _tracer = None


def configure(cfg: TracingConfig) -> bool:
    """Sets up a TracerProvider with a batch OTLP/HTTP exporter when ``otlp_endpoint`` is set;
    returns whether it did. Nothing happens (nothing is imported) when it is not."""
    global _provider
    if cfg.otlp_endpoint is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: cfg.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    install(provider)
    return True


def shutdown() -> None:
    """Flushes and stops the provider :func:`configure` made (blocking: the last export)."""
    global _provider
    provider, _provider = _provider, None
    if provider is None:
        return
    uninstall()
    provider.shutdown()


def log_units(on: bool) -> None:
    """Keep the current unit for log lines (JSON logs name it) even when tracing is off."""
    global _log_units
    _log_units = on


def log_context() -> tuple[str, str] | None:
    """(interface, unit) of the unit being worked on in this context, when kept."""
    return _UNIT.get()


# -- spans -----------------------------------------------------------------------------------


def _attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    return {ATTR_PREFIX + k: v for k, v in attrs.items() if v is not None and v != ""}


def _in_unit() -> bool:
    """Whether a unit's trace is current: stage spans outside one (a replay re-translating a
    month of messages) would each start a trace of their own, so there are none."""
    from opentelemetry.trace import get_current_span

    return bool(get_current_span().get_span_context().is_valid)


def span(name: str, **attributes: Any) -> ContextManager[SpanLike]:
    """A stage's span, a child of the unit's; a shared no-op when tracing is off (or outside a
    unit). ``attributes`` become ``ficus.<name>`` span attributes: identifiers and counts only."""
    if _tracer is None or not _in_unit():
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=_attributes(attributes))


def _described(attributes: Callable[..., dict[str, Any]] | None, args: Any, kwargs: Any) -> dict[str, Any]:
    """A span's attributes from the call's arguments; a call the lambda does not fit (a keyword
    it did not expect) must not fail the unit because it is traced: the span says so instead."""
    if attributes is None:
        return {}
    try:
        return attributes(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- tracing never takes a unit down
        return {"attributes_error": type(exc).__name__}


def traced(name: str, attributes: Callable[..., dict[str, Any]] | None = None,
           ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A coroutine function as a stage's span (``attributes`` from its arguments): one line on
    the function, none in its body; when tracing is off, one extra await and a global read."""
    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            if _tracer is None or not _in_unit():
                return await fn(*args, **kwargs)
            attrs = _attributes(_described(attributes, args, kwargs))
            with _tracer.start_as_current_span(name, attributes=attrs):
                return await fn(*args, **kwargs)

        return run

    return wrap


def traced_sync(name: str, attributes: Callable[..., dict[str, Any]] | None = None,
                ) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """:func:`traced` for a plain function (translation, in a worker thread or not)."""
    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            if _tracer is None or not _in_unit():
                return fn(*args, **kwargs)
            attrs = _attributes(_described(attributes, args, kwargs))
            with _tracer.start_as_current_span(name, attributes=attrs):
                return fn(*args, **kwargs)

        return run

    return wrap


def traced_unit(name: str, describe: Callable[..., tuple[str, str, dict[str, Any]]],
                outcome: Callable[[Any], str] | None = None,
                ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A coroutine function handling one unit as the unit's root span (see :func:`unit`);
    ``describe`` gives (interface, unit id for logs, span attributes) from its arguments.

    With ``outcome`` (what the result came to: an ACK code, a file's state) and logger
    ``ficus.units`` at DEBUG, each unit also ends with one log line: interface, unit, stage,
    outcome and duration_ms (router/logjson.py puts them in fields)."""
    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            logged = outcome is not None and _units_log.isEnabledFor(logging.DEBUG)
            if _tracer is None and not _log_units and not logged:
                return await fn(*args, **kwargs)
            try:
                interface, unit_id, attrs = describe(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 -- tracing never takes a unit down
                interface, unit_id, attrs = "", "", {"attributes_error": type(exc).__name__}
            with _unit(name, interface, unit_id, None, attrs) as sp:
                started = time.perf_counter()
                result = await fn(*args, **kwargs)
                if outcome is not None and (logged or sp.is_recording()):
                    what = outcome(result)
                    sp.set_attribute(ATTR_PREFIX + "outcome", what)
                    if logged:
                        _units_log.debug("%s: %s %s", interface, unit_id or "-", what, extra={
                            "interface": interface, "unit": unit_id, "stage": name, "outcome": what,
                            "duration_ms": round((time.perf_counter() - started) * 1000, 3)})
                return result

        return run

    return wrap


def unit(name: str, interface: str, unit_id: str = "", *, inbound: str | None = None,
         **attributes: Any) -> ContextManager[SpanLike]:
    """The root span of one unit: a new trace, or the inbound ``traceparent``'s when valid.

    ``unit_id`` names the unit in JSON log lines (a bounded control id, a file name, a key
    range: what the text logs already show); span attributes get ``attributes`` only."""
    if _tracer is None and not _log_units:
        return _NOOP
    return _unit(name, interface, unit_id, inbound, attributes)


@contextlib.contextmanager
def _unit(name: str, interface: str, unit_id: str, inbound: str | None,
          attributes: dict[str, Any]) -> Iterator[SpanLike]:
    token = _UNIT.set((interface, unit_id)) if _log_units else None
    try:
        if _tracer is None:
            yield NO_SPAN
            return
        from opentelemetry.context import Context

        parent = _extract([inbound]) if inbound else None
        with _tracer.start_as_current_span(name, context=parent or Context(),
                                           attributes=_attributes({"interface": interface, **attributes})) as sp:
            yield sp
    finally:
        if token is not None:
            _UNIT.reset(token)


def delivery(name: str, parents: Sequence[str | None], **attributes: Any) -> ContextManager[SpanLike]:
    """A span continuing the trace of the first event's ``traceparent`` (a batch links the
    others'); a new trace when no event carries one. No-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind

    found = [tp for tp in parents if tp and TRACEPARENT.match(tp)]
    parent = _extract(found[:1]) if found else None
    links = [Link(_span_context(tp)) for tp in dict.fromkeys(found[1:]) if tp != found[0]]
    return _tracer.start_as_current_span(name, context=parent or Context(), kind=SpanKind.CLIENT,
                                         links=links, attributes=_attributes(attributes))


def traced_delivery(name: str, describe: Callable[..., tuple[list[str | None], dict[str, Any]]],
                    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A coroutine function delivering events as a :func:`delivery` span; ``describe`` gives
    (the events' ``traceparent`` values, span attributes) from its arguments. Inside it,
    :func:`outbound` is what the request's ``traceparent`` header carries: the delivery span's
    context, or with tracing off the first event's own (passed on, so the receiver's trace
    still joins the unit's)."""
    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                parents, attrs = describe(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 -- tracing never takes a delivery down
                parents, attrs = [], {"attributes_error": type(exc).__name__}
            if _tracer is None:
                first = next((tp for tp in parents if tp and TRACEPARENT.match(tp)), None)
                if first is None:
                    return await fn(*args, **kwargs)
                token = _OUTBOUND.set(first)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _OUTBOUND.reset(token)
            with delivery(name, parents, **attrs):
                token = _OUTBOUND.set(current_traceparent())
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _OUTBOUND.reset(token)

        return run

    return wrap


def outbound() -> str | None:
    """The ``traceparent`` header of the request being made (see :func:`traced_delivery`)."""
    return _OUTBOUND.get()


def annotate(**attributes: Any) -> None:
    """Adds attributes to the current span (a status once known); nothing when tracing is off."""
    if _tracer is None:
        return
    from opentelemetry.trace import get_current_span

    get_current_span().set_attributes(_attributes(attributes))


# -- trace context ---------------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent``, or None (tracing off, or no span)."""
    if _tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    ctx = get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_trace_id() -> str | None:
    """The current trace id (32 hex), for log lines; None when tracing is off or outside a span."""
    tp = current_traceparent()
    return tp[3:35] if tp else None


def trace_id_of(tp: str | None) -> str | None:
    """The trace id in a ``traceparent``, when it is a valid one."""
    m = TRACEPARENT.match(tp or "")
    return m.group(1) if m else None


def _span_context(tp: str) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags

    m = TRACEPARENT.match(tp)
    assert m is not None
    return SpanContext(int(m.group(1), 16), int(m.group(2), 16), is_remote=True,
                       trace_flags=TraceFlags(int(m.group(3), 16)))


def _extract(tps: Sequence[str]) -> Any:
    """A context whose parent is the first valid ``traceparent`` (all-zero ids are invalid)."""
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    for tp in tps:
        if not TRACEPARENT.match(tp):
            continue
        ctx = _span_context(tp)
        if ctx.is_valid:
            return set_span_in_context(NonRecordingSpan(ctx))
    return None
