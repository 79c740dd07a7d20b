"""The sinks' HTTP API: status for viewers; pause, resume and replay for operators (audited).

A change is kept in KV (`router.sinks.set_control`), so it holds on every instance and
across restarts; each sink applies it within a second.
"""

from __future__ import annotations

import secrets

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from router import dlq, sinks


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SinkReason(_Body):
    """POST /api/v1/sinks/{id}/pause and /resume."""

    reason: StrictStr | None = Field(default=None, max_length=500)


class SinkReplay(_Body):
    """POST /api/v1/sinks/{id}/replay."""

    since: StrictStr = Field(max_length=64)


def _sink(request: web.Request) -> sinks.Sink:
    from router.api import PENDING, RUNNING, ApiProblem

    name = request.match_info["id"]  # the sink's name
    for sink in request.app[RUNNING].sinks:
        if sink.cfg.name == name:
            request[PENDING].interface = sinks.dlq_interface(name)
            return sink
    raise ApiProblem(404, "unknown sink")


async def list_sinks(request: web.Request) -> web.Response:
    """GET /api/v1/sinks (viewer): each sink's state; no event content, no credentials."""
    from router.api import RUNNING

    return web.json_response({"sinks": [s.view() for s in request.app[RUNNING].sinks]})


async def _pause(request: web.Request, paused: bool) -> web.Response:
    from router.api import IDENTITY, STORE, _body, begin

    sink = _sink(request)
    body = await _body(request, SinkReason, empty_ok=True)
    await begin(request, sink=sink.cfg.name, reason=body.reason)
    current = await sinks.control_of(request.app[STORE], sink.cfg.name)
    actor = request[IDENTITY].name
    control = sinks.Control(paused, actor, dlq.now_iso(), current.replay_since, current.replay_token)
    await sinks.set_control(request.app[STORE], sink.cfg.name, control)
    return web.json_response({"sink": sink.cfg.name, "paused": paused, "actor": actor})


async def pause_sink(request: web.Request) -> web.Response:
    """POST /api/v1/sinks/{id}/pause {reason} (operator): stops fetching; requests in flight finish."""
    return await _pause(request, True)


async def resume_sink(request: web.Request) -> web.Response:
    """POST /api/v1/sinks/{id}/resume (operator)."""
    return await _pause(request, False)


async def replay_sink(request: web.Request) -> web.Response:
    """POST /api/v1/sinks/{id}/replay {"since": ISO time} (operator): delivers again every
    event stored since then (the receiver drops repeats by Idempotency-Key)."""
    from router.api import IDENTITY, STORE, _body, _since, begin

    sink = _sink(request)
    since = _since((await _body(request, SinkReplay)).since)
    await begin(request, sink=sink.cfg.name, since=since.isoformat())
    current = await sinks.control_of(request.app[STORE], sink.cfg.name)
    actor = request[IDENTITY].name
    control = sinks.Control(current.paused, actor, dlq.now_iso(), since.isoformat(), secrets.token_hex(8))
    await sinks.set_control(request.app[STORE], sink.cfg.name, control)
    return web.json_response({"sink": sink.cfg.name, "replay_since": since.isoformat(), "actor": actor})
