"""HTTP handlers of the status lookups (router/views.py): claims, remittances, account charges.

Their answers are claim and account money of identified claims and accounts, i.e. message
content: an admin or a client granted content (router/api.py CONSUMER), each read audited. The audit record
names the view key (`views.key_of`: URL-safe base64 of the id), not the id in clear.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from router import queries
from router.views import View, charges_answer, claim_answer, key_of, remittance_answer, views_of

MAX_ID = 200


def _ident(request: web.Request, name: str) -> str:
    from router.api import ApiProblem

    ident = request.match_info[name]
    if not ident or len(ident) > MAX_ID:
        raise ApiProblem(400, f"{name} must be 1 to {MAX_ID} characters")
    return ident


def _views_on(request: web.Request) -> None:
    """The lookups answer only where the views are kept (`[views] enabled`); else 409, saying so."""
    from router.api import CONFIG, ApiProblem

    if not request.app[CONFIG].views.enabled:
        raise ApiProblem(409, "the status views are off on this service ([views] enabled = false)")


async def _lookup(request: web.Request, view: View, ident: str) -> dict[str, Any] | None:
    """The view entry a lookup asks for (None: not in the views), its read noted for the audit."""
    from router.api import STORE, note

    note(request, view=view, key=key_of(ident))
    entry: dict[str, Any] | None = await views_of(request.app[STORE]).get(view, ident)
    return entry


async def get_claim(request: web.Request) -> web.Response:
    """GET /api/v1/claims/{claim}: a claim by payer claim control number (CLP07)."""
    from router.api import _error

    _views_on(request)
    entry = await _lookup(request, "claims", _ident(request, "claim"))
    if entry is None:
        return _error(404, "no such claim in the views")
    return web.json_response(claim_answer(entry))


async def get_remittance(request: web.Request) -> web.Response:
    """GET /api/v1/remittances/{trace}: a remittance by its trace number (TRN02)."""
    from router.api import _error

    _views_on(request)
    entry = await _lookup(request, "remittances", _ident(request, "trace"))
    if entry is None:
        return _error(404, "no such remittance in the views")
    return web.json_response(remittance_answer(entry))


async def get_charges(request: web.Request) -> web.Response:
    """GET /api/v1/accounts/{account}/charges?from=&to=: an account's charges (service date, else posting)."""
    from router.api import _error, note

    _views_on(request)
    ident = _ident(request, "account")
    query = queries.of(request, queries.ChargesQuery)
    since, until = query.since, query.until
    entry = await _lookup(request, "charges", ident)
    if entry is None:
        return _error(404, "no such account in the views")
    answer = charges_answer(entry, since, until)
    note(request, count=len(answer["charges"]))
    return web.json_response(answer)


async def rebuild_views(request: web.Request) -> web.Response:
    """POST /api/v1/views/rebuild: drops the view buckets and applies the live stream again."""
    from router.api import STORE, begin, note

    _views_on(request)
    await begin(request)
    read = await views_of(request.app[STORE]).rebuild()
    note(request, events=read)
    return web.json_response({"events": read})
