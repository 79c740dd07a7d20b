"""The leases' HTTP API: who polls which interface (viewer); release one (operator, audited).

`GET /api/v1/leases` lists every lease recorded in KV `ficus-leases` and every polling
interface of this instance's config (unowned when no record holds it). `POST
/api/v1/leases/{iface}/release` with a reason hands an interface over for maintenance: its
owner steps down (router/leases.py says when) and another instance takes it over; the owner
released from waits one lease period before it tries again.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from router import names
from router.leases import LeaseRecord, Leases, list_leases
from router.store import RevisionConflict


class LeaseRelease(BaseModel):
    """POST /api/v1/leases/{iface}/release: why (required, as for a flip)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    reason: StrictStr = Field(min_length=1, max_length=2000)


def _leases(request: web.Request) -> Leases:
    from router.api import RUNNING, ApiProblem

    leases = request.app[RUNNING].leases
    if leases is None:
        raise ApiProblem(503, "this instance runs no leases")
    return leases


def _row(name: str, record: LeaseRecord | None, instance: str, now: float) -> dict[str, Any]:
    if record is None:
        return {"interface": name, "owner": None, "epoch": None, "acquired_at": None, "renewed_at": None,
                "expires_at": None, "expires_in": None, "released_from": None, "released_by": None,
                "here": False}
    shown = record.shown(now)
    return {**shown, "owner": record.owner or None, "released_from": record.released_from or None,
            "released_by": record.released_by or None, "here": bool(record.owner) and record.owner == instance}


async def get_leases(request: web.Request) -> web.Response:
    """GET /api/v1/leases (viewer): each polling interface's owner, epoch and time left."""
    from router.api import CONFIG, STORE

    cfg = request.app[CONFIG]
    bucket = await request.app[STORE].kv(names.KV_LEASES, history=1)
    records = {record.interface: record for record in await list_leases(bucket)}
    polled = {i.name for i in cfg.interfaces if i.kind != "hl7-mllp"}
    now = time.time()
    rows = [_row(name, records.get(name), cfg.cluster.instance, now) for name in sorted(polled | set(records))]
    return web.json_response({"instance": cfg.cluster.instance, "leases": rows})


async def release_lease(request: web.Request) -> web.Response:
    """POST /api/v1/leases/{iface}/release {reason} (operator, audited): the owner steps down."""
    from router.api import CONFIG, IDENTITY, ApiProblem, _body, begin, note

    name = request.match_info["iface"]
    if name not in {i.name for i in request.app[CONFIG].interfaces if i.kind != "hl7-mllp"}:
        raise ApiProblem(404, "unknown polling interface (MLLP interfaces have no lease)")
    body = await _body(request, LeaseRelease)
    leases = _leases(request)
    actor = request[IDENTITY].name
    await begin(request, reason=body.reason)
    try:
        record = await leases.release(name, actor)
    except RevisionConflict:
        raise ApiProblem(409, "the lease changed meanwhile; try again") from None
    if record is None:
        raise ApiProblem(409, f"no instance holds the lease of {name}")
    note(request, owner=record.owner, epoch=record.epoch)
    return web.json_response({"interface": name, "released_from": record.owner, "epoch": record.epoch,
                              "actor": actor, "retry_after_seconds": leases.lease_seconds})
