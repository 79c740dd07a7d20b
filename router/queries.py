"""The query strings of the HTTP API as models: the handlers validate with them and the
OpenAPI document (router/openapi.py) is made from them, so the two cannot drift apart.

A query value is a string; numbers are digits only (no sign, no exponent), times ISO 8601
(a `Z` suffix allowed, no zone means UTC). An empty value of an optional parameter counts as
absent (`?type=` is no type filter), as the handlers always had it. Unknown parameters are
ignored. A value the model refuses is a 400 whose reason names the parameter and never
quotes its value (`REASONS`, else pydantic's message without the input).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from router.audit import ACTIONS
from router.config import SLUG

if TYPE_CHECKING:
    from aiohttp import web

TYPE_PATTERN = r"^org\.ficus\.[a-z0-9_-]{1,64}(\.[a-z0-9_-]{1,64}(\.[a-z0-9_-]{1,64}(\.v[0-9]{1,4})?)?)?$"
"""A whole event type or a prefix of it: org.ficus.<domain>[.<entity>[.<action>[.v<N>]]]."""
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
PAGE_MAX = 1000
"""The most events (or records, dead letters) one page holds; a larger `limit` is cut to it."""
Q = TypeVar("Q", bound="Query")


def _digits(max_len: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= max_len):
            raise ValueError("not digits")
        return value
    return check


def _iso_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ValueError("not an ISO 8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def _action(value: str) -> str:
    if value not in ACTIONS:
        raise ValueError("not an action")
    return value


Count = Annotated[int, Field(ge=0), BeforeValidator(_digits(20))]
Time = Annotated[datetime, BeforeValidator(_iso_time)]
Interface = Annotated[str, Field(pattern=SLUG.pattern, description="an interface name (a slug)")]
LetterSource = Annotated[str, Field(pattern=r"^(sink\.)?" + SLUG.pattern.removeprefix("^"),
                                    description="an interface name, or sink.<name> for a sink's dead letters")]
Mode = Literal["live", "shadow"]


class Query(BaseModel):
    """A route's query string."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    REASONS: ClassVar[dict[str, str]] = {}
    """The 400 reason for a refused parameter (by its name in the query)."""

    @model_validator(mode="before")
    @classmethod
    def _absent_when_empty(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        optional = {f.alias or n for n, f in cls.model_fields.items() if f.default is None}
        return {k: v for k, v in data.items() if not (v == "" and k in optional)}

    @classmethod
    def reason(cls, exc: ValidationError) -> str:
        """One line for the first refused parameter: its reason, or pydantic's message (never the input)."""
        err = exc.errors(include_input=False, include_url=False, include_context=False)[0]
        name = str(err["loc"][0])[:40] if err["loc"] else "query"
        return cls.REASONS.get(name) or f"{name}: {err['msg']}"


def parse(model: type[Q], query: Mapping[str, str]) -> Q:
    """The query as `model`; ValueError with the 400 reason when it is refused."""
    try:
        return model.model_validate({k: query[k] for k in query})  # a repeated key: its first value
    except ValidationError as exc:
        raise ValueError(model.reason(exc)) from None


def of(request: web.Request, model: type[Q]) -> Q:
    """A request's query as `model`, or ApiProblem 400 (router/api.py)."""
    from router.api import ApiProblem

    try:
        return parse(model, request.query)
    except ValueError as exc:
        raise ApiProblem(400, str(exc)) from None


_SLUG_REASON = "interface names are slugs: lowercase letters, digits, - and _"


class EventFilters(Query):
    """The filters of GET /api/v1/events and /api/v1/events/stream."""

    REASONS: ClassVar[dict[str, str]] = {
        "type": "type is org.ficus.<domain>[.<entity>[.<action>[.v<N>]]]",
        "interface": _SLUG_REASON,
        "facility": "facility is at most 64 characters",
        "from": 'from must be an ISO 8601 time, e.g. "2026-11-25T08:00:00Z"',
        "to": 'to must be an ISO 8601 time, e.g. "2026-11-25T08:00:00Z"',
        "mode": "mode is live or shadow",
        "cursor": "not a cursor of this API",
        "after": "after must be a non-negative integer",
    }

    type: str | None = Field(None, pattern=TYPE_PATTERN, description=(
        "a whole event type (org.ficus.revenue.charge.posted.v1) or a prefix of it (org.ficus.revenue)"))
    interface: Interface | None = Field(None, description="events of this interface (needs nats.event_index)")
    facility: str | None = Field(None, max_length=64, description=(
        "events of this facility, the record's (MSH-4, the file's or row's) (needs nats.event_index)"))
    start: Time | None = Field(None, alias="from", description="events stored at or after this time (ISO 8601)")
    end: Time | None = Field(None, alias="to", description="events stored up to this time (ISO 8601)")
    mode: Mode = Field("live", description="live events, or those of interfaces in shadow")
    cursor: str | None = Field(None, max_length=1024, description=(
        "where the previous page ended (its `cursor`); only with the same filters"))
    after: Annotated[int, Field(ge=0), BeforeValidator(_digits(18))] | None = Field(None, description=(
        "start after this stream sequence (a page's `next_after`); the cursor is preferred"))


class EventsQuery(EventFilters):
    """GET /api/v1/events."""

    REASONS: ClassVar[dict[str, str]] = {**EventFilters.REASONS, "limit": "limit must be a non-negative integer"}

    limit: Annotated[int, Field(ge=0), BeforeValidator(_digits(9))] = Field(100, description=(
        f"events per page; at most {PAGE_MAX} are served"))


class StreamQuery(EventFilters):
    """GET /api/v1/events/stream (the cursor may come as the Last-Event-ID header instead)."""

    REASONS: ClassVar[dict[str, str]] = {**EventFilters.REASONS,
                                         "heartbeat": "heartbeat is a number of seconds, 1 to 60"}

    heartbeat: Annotated[int, Field(ge=1, le=60), BeforeValidator(_digits(3))] = Field(15, description=(
        "seconds between heartbeat comment lines"))


class EventQuery(Query):
    """GET /api/v1/events/{id}."""

    REASONS: ClassVar[dict[str, str]] = {"mode": "mode is live or shadow"}

    mode: Mode = Field("live", description="the stream the sequence is in: live events, or shadow ones")


class DlqQuery(Query):
    """GET /api/v1/dlq."""

    REASONS: ClassVar[dict[str, str]] = {
        "interface": _SLUG_REASON.rstrip(".") + " (sink.<name> for a sink's dead letters)",
        "after": "after must be a non-negative integer", "limit": "limit must be a non-negative integer"}

    interface: LetterSource | None = None
    after: Count = Field(0, description="dead letters after this one (an id)")
    limit: Count = Field(100, description=f"dead letters per page; at most {PAGE_MAX} are served")


class AuditQuery(Query):
    """GET /api/v1/audit."""

    REASONS: ClassVar[dict[str, str]] = {
        "since": 'since must be an ISO 8601 time, e.g. "2026-11-25T08:00:00Z"',
        "action": f"action is one of {', '.join(ACTIONS)}",
        "actor": "actor is at most 128 characters",
        "interface": _SLUG_REASON,
        "after": "after must be a non-negative integer",
        "limit": "limit must be a non-negative integer",
    }

    since: Time | None = Field(None, description="records from this time (ISO 8601); default 24 hours ago")
    after: Count = Field(0, description="records after this stream sequence (a listing's `next_after`)")
    actor: str | None = Field(None, max_length=128, description="records of this actor (an authenticated name)")
    interface: Interface | None = Field(None, description="records naming this interface")
    action: Annotated[str, AfterValidator(_action)] | None = Field(
        None, description="records of this action", json_schema_extra={"enum": list(ACTIONS)})
    limit: Count = Field(100, description=f"records per page (at least 1; at most {PAGE_MAX} are served)")


class ReadyQuery(Query):
    """GET /readyz."""

    REASONS: ClassVar[dict[str, str]] = {"interface": "interface: interface names (slugs), comma-separated"}

    interface: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}(,[a-z0-9][a-z0-9_-]{0,62}){0,63}$",
        description="only these interfaces (comma-separated) and the instance's own problems (NATS, the embedded "
                    "server, draining): what a load balancer checks for one MLLP backend; 404 for an unknown one")

    def names(self) -> list[str]:
        return self.interface.split(",") if self.interface else []


class LedgerQuery(Query):
    """GET /api/v1/ledger/{iface}."""

    REASONS: ClassVar[dict[str, str]] = {"day": "day must be a date, YYYY-MM-DD"}

    day: str | None = Field(None, pattern=DATE_PATTERN, description="one UTC day (YYYY-MM-DD); default every day kept")


class GlParityQuery(Query):
    """GET /api/v1/parity/{iface}/gl."""

    REASONS: ClassVar[dict[str, str]] = {"day": "day must be a date, YYYY-MM-DD"}

    day: str = Field(pattern=DATE_PATTERN, description="the posting day compared (YYYY-MM-DD)")


class ChargesQuery(Query):
    """GET /api/v1/accounts/{account}/charges."""

    REASONS: ClassVar[dict[str, str]] = {"from": "from must be a date, YYYY-MM-DD",
                                         "to": "to must be a date, YYYY-MM-DD"}

    since: str | None = Field(None, alias="from", pattern=DATE_PATTERN, description=(
        "charges of this day or later (service date, else posting date; YYYY-MM-DD)"))
    until: str | None = Field(None, alias="to", pattern=DATE_PATTERN, description=(
        "charges of this day or earlier (YYYY-MM-DD)"))
