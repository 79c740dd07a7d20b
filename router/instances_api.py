"""GET /api/v1/instances (viewer): every Ficus instance on this NATS, its leases and its health.

Read from the instance registry (router/instances.py), so any instance answers for all of
them; `instance` names the one that answered.
"""

from __future__ import annotations

from aiohttp import web

from router import instances


async def list_instances(request: web.Request) -> web.Response:
    """Each instance: host, pid, version, started and seen, API address, readiness and problems,
    draining, leases, interfaces, and `health` (ready, not ready, stale)."""
    from router.api import CONFIG, STORE

    cluster = request.app[CONFIG].cluster
    found = await instances.list_instances(request.app[STORE], cluster.lease_seconds)
    return web.json_response({"instance": cluster.instance, "lease_seconds": cluster.lease_seconds,
                              "instances": found})
