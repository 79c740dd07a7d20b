"""The JSON answers of the routes an ERP, a dashboard or an operator's script calls, as models.

Only documentation: the handlers build their answers as dicts (router/api.py, views.py,
sinks_api.py, replay.py, ledger.py, stats.py); router/openapi.py turns these models into the
OpenAPI document's 200 answers so integrators can generate clients, and tests/test_openapi.py
holds real answers to them. A shape that is fixed forbids other keys, so a field added to a
handler's answer without its model here fails that test; open-ended keys (counters by name,
facilities, adjustment groups) are dicts. Money is a decimal string, never a float. The
descriptions follow the README's HTTP API table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from canonical.events import ChargeData
from router.config import Mode
from router.dlq import Kind

Amount = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$",
                              description="a decimal amount as a string (never a float)")]


class Answer(BaseModel):
    """An answer whose keys are fixed: no others."""

    model_config = ConfigDict(extra="forbid")


# -- health ------------------------------------------------------------------------------------

class Health(Answer):
    """GET /healthz: the process answers."""

    status: Literal["ok"]
    uptime_seconds: float


class Readiness(Answer):
    """GET /readyz (200 ready, 503 not)."""

    ready: bool
    problems: list[str] = Field(description="one line per problem, `<interface>: <reason>`")
    publisher: str = Field(description="the publishing path in use: fast or publish_async")
    ingest: str = Field(description="file chunks and row batches as JetStream fast-ingest batches: "
                                    "fast-ingest, or off (not taken by the server, or `nats.fast_ingest = false`)")
    ingest_batches: int = Field(description="fast-ingest batches committed since start")


# -- status lookups (router/views.py) ------------------------------------------------------------

class Denial(Answer):
    reason_codes: list[str] = Field(description="'<group>-<CARC>' of every adjustment of the claim")
    remark_codes: list[str]


class ClaimRemittance(Answer):
    """One adjudication of a claim, in stream order."""

    trace_number: str | None
    st_control: str | None
    interchange_control: str | None
    status_code: str | None = Field(description="CLP02 (1 primary, 4 denied, 22 reversal...)")
    charge: Amount | None
    paid: Amount | None
    reversal: bool | None
    seq: int = Field(description="the event's sequence in FICUS_CANONICAL")


class Claim(Answer):
    """GET /api/v1/claims/{claim}: a claim's latest known state, money netted over every remittance
    that carried it (a reversal, CLP02 = 22, carries negative amounts)."""

    payer_claim_control_number: str = Field(description="CLP07")
    truncated: bool = Field(description="the entry outgrew a KV value: later facts are missing")
    patient_control_number: str | None = Field(description="CLP01 of its latest original adjudication")
    status_code: str | None = Field(description="CLP02 of its latest original (non-reversal) adjudication")
    reversed: bool
    reversals_applied: int
    denied: bool
    denial: Denial | None = Field(description="reason and remark codes, when denied")
    charge: Amount
    paid: Amount
    patient_responsibility: Amount
    adjustments: dict[str, dict[str, Amount]] = Field(description="netted amounts by group, then reason code")
    remittances: list[ClaimRemittance]


class Transaction(Answer):
    """One ST of a remittance; `balanced`: BPR02 = sum of CLP04 - PLB."""

    seq: int
    trace_number: str | None
    st_control: str | None
    interchange_control: str | None
    handling_code: str | None = Field(description="BPR01")
    credit_debit: str | None = Field(description="BPR03")
    payment_method: str | None = Field(description="BPR04")
    payment_date: str | None
    production_date: str | None
    payer_id: str | None
    payee_id: str | None
    claim_count: int | None
    group_control: str | None
    amount: Amount = Field(description="BPR02")
    total_charge: Amount | None
    total_paid: Amount
    total_provider_adjustment: Amount
    balanced: bool


class RemittanceClaim(Answer):
    payer_claim_control_number: str | None
    patient_control_number: str | None
    st_control: str | None
    status_code: str | None
    charge: Amount | None
    paid: Amount | None
    patient_responsibility: Amount | None
    reversal: bool | None
    denied: bool | None


class Remittance(Answer):
    """GET /api/v1/remittances/{trace}: its transactions, the totals, `balanced`, and its claims."""

    trace_number: str = Field(description="TRN02")
    transactions: list[Transaction]
    amount: Amount
    total_charge: Amount
    total_paid: Amount
    total_provider_adjustment: Amount
    balanced: bool
    truncated: bool
    claims: list[RemittanceClaim]


class Charge(ChargeData):
    """One charge: the event's data (org.ficus.revenue.charge.posted/credited) with its id and type."""

    event_id: str
    type: str


class Charges(Answer):
    """GET /api/v1/accounts/{account}/charges: in stream order; `net_amount` sums those listed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    account: str
    since: str | None = Field(alias="from", description="YYYY-MM-DD, inclusive (service date, else posting)")
    until: str | None = Field(alias="to")
    charges: list[Charge]
    truncated: bool
    net_amount: Amount


# -- interfaces, routes, parity ---------------------------------------------------------------------

class Lag(Answer):
    shadow_backlog: int
    in_flight: int


class SetAside(Answer):
    file: str
    attempts: int
    cause: str


class Poller(Answer):
    connected: bool
    last_error: str | None
    reconnects: int
    last_poll_at: str | None


class Checkpoint(Answer):
    last_key: Any
    last_ts: Any


class Interface(Answer):
    """One interface: config, route, counts, lag and its kind's details."""

    name: str
    kind: Literal["hl7-mllp", "folder", "sftp", "odbc"]
    format: str
    mapping: str | None
    address: str
    legacy: str | None
    route: Mode
    facilities: dict[str, Mode] = Field(description="per-facility route overrides")
    counts: dict[str, int] = Field(description="received, acked, nacked, published, shadow_published, "
                                   "dead_lettered, errors, legacy_forwarded, legacy_errors, ...")
    last_message_at: float | None = Field(description="Unix time")
    last_error: str | None
    last_error_at: float | None
    lag: Lag
    listener: dict[str, int] | None = Field(None, description="MLLP only: listener counters (connections open "
                                            "and total, refused, idle closed, peer resets, junk bytes, ...)")
    busy_file: str | None = Field(None, description="file interfaces only")
    set_aside: list[SetAside] | None = Field(None, description="file interfaces only")
    changed_under_ficus: int | None = Field(None, description="file interfaces only")
    table: str | None = Field(None, description="ODBC only")
    poller: Poller | None = Field(None, description="ODBC only")
    checkpoint: Checkpoint | None = Field(None, description="ODBC only")
    batches: int | None = Field(None, description="ODBC only")


class Interfaces(Answer):
    """GET /api/v1/interfaces."""

    interfaces: list[Interface]


class Route(Answer):
    mode: Mode
    facilities: dict[str, Mode]
    reason: str
    actor: str
    changed_at: str
    revision: int


class Routes(Answer):
    """GET /api/v1/routes: the routing table, by interface."""

    routes: dict[str, Route]


class Flip(Answer):
    """The route change that started a parity window."""

    revision: int
    at: str
    actor: str
    entered: list[str]


class Window(Answer):
    """A parity window as the gate judges it."""

    started_at: str | None
    flip: Flip | None
    revision: int | None
    samples: int
    agree: int
    disagree: int
    ratio: float | None


class PreviousWindow(Window):
    ended_at: str | None
    note: str | None = None


class RouteChanged(Answer):
    """PUT /api/v1/routes/{iface}: the new route and the parity window judged."""

    interface: str
    route: Route
    parity: Window


class FlipRecord(Answer):
    """One flip in the history (its audit record)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    interface: str
    previous: Mode = Field(alias="from")
    from_facilities: dict[str, Mode] = {}
    to: Mode
    facility: str | None
    cleared_facilities: dict[str, Mode] = {}
    reason: str
    actor: str
    at: str
    revision: int
    forced: bool | None = None
    parity: Window | None = None


class RouteHistory(Answer):
    """GET /api/v1/routes/{iface}/history: oldest first."""

    interface: str
    history: list[FlipRecord]


class Disagreement(Answer):
    unit: str
    legacy_ok: bool
    modern_ok: bool
    detail: str
    at: float = Field(description="Unix time")


class Parity(Answer):
    """GET /api/v1/parity/{iface}: the current window, the latest disagreements, the gate."""

    interface: str
    route: Mode
    gate: float
    min_samples: int
    samples: int
    agree: int
    disagree: int
    ratio: float | None
    recent_disagreements: list[Disagreement]
    window: Window
    previous_window: PreviousWindow | None
    instances: dict[str, int] | None = Field(
        default=None, description="the window's samples by Ficus instance (cluster.instance): the counts above "
                                  "are their sum, over the instances that gathered samples in this window")


# -- the ledger -------------------------------------------------------------------------------------

class Money(Answer):
    charges: Amount
    payments: Amount
    adjustments: Amount


class MoneyByOutcome(Answer):
    received: Money
    published: Money
    dead_lettered: Money
    filtered: Money
    duplicates: Money
    legacy: Money
    replayed: Money


class Tally(Answer):
    """Units by outcome: received = published + dead_lettered + filtered + duplicates + legacy."""

    received: int
    published: int
    dead_lettered: int
    filtered: int
    duplicates: int
    legacy: int
    shadow: int
    events: int
    replayed: int
    replayed_events: int
    parity_agree: int = Field(description="units in shadow where Ficus and the legacy path agreed (parity samples)")
    parity_disagree: int = Field(description="units in shadow where they did not")
    money: MoneyByOutcome
    balanced: bool


class FacilityTally(Tally):
    facility: str | None


class LedgerDay(Answer):
    day: str = Field(description="a UTC day, YYYY-MM-DD")
    total: Tally
    facilities: list[FacilityTally]
    balanced: bool
    problems: list[str]


class Ledger(Answer):
    """GET /api/v1/ledger/{iface}: per UTC day (newest first) and facility."""

    interface: str
    days: list[LedgerDay]
    balanced: bool


# -- sinks ------------------------------------------------------------------------------------------

class Sink(Answer):
    """A sink's state (counters since this instance started; no content, no credentials)."""

    name: str
    url: str = Field(description="without user info or query")
    events: Literal["live", "shadow"]
    mode: Literal["single", "batch"]
    paused: bool
    paused_by: str | None
    lag: int | None
    in_flight: int
    delivered: int
    attempts: int
    failures: int
    dead_lettered: int
    last_delivered_at: str | None
    last_error: str | None
    replay_since: str | None


class Sinks(Answer):
    """GET /api/v1/sinks."""

    sinks: list[Sink]


class Alert(Answer):
    """One alert rule's subject: its state and business context (router/alerts.py)."""

    rule: str
    kind: str
    state: Literal["firing", "resolved", "ok"]
    process: str
    interfaces: list[str]
    facilities: list[str]
    money_at_risk: str | None
    since: str | None
    last_sent: str | None
    repeats: int
    summary: str


class Alerts(Answer):
    """GET /api/v1/alerts."""

    alerts: list[Alert]


# -- instances (router/instances.py) ---------------------------------------------------------------

class Instance(Answer):
    """One Ficus instance as the registry has it (KV ficus-instances)."""

    instance: str = Field(description="its cluster.instance")
    host: str
    pid: int
    version: str
    started_at: float = Field(description="Unix seconds")
    seen_at: float = Field(description="when it last wrote its entry (Unix seconds, its clock)")
    seen_seconds_ago: float
    api: str | None = Field(description="its API's address; null when it runs without one")
    ready: bool = Field(description="what its /readyz said when it wrote")
    problems: list[str]
    draining: bool = Field(description="stopping: finishing work in flight")
    leases: list[str] = Field(description="the interfaces whose lease it holds (it polls them)")
    interfaces: list[str] = Field(description="the interfaces of its config")
    received: int = Field(description="units it received since it started, all interfaces together (with "
                          "`workers`: this worker's share)")
    health: Literal["ready", "not ready", "stale"] = Field(
        description="stale: not refreshed within cluster.lease_seconds (stopped without a clean stop, "
        "or cut off from NATS)")


class Instances(Answer):
    """GET /api/v1/instances: every instance of the registry, by name."""

    instance: str = Field(description="the instance that answered")
    lease_seconds: float = Field(description="the bound after which an entry is stale")
    instances: list[Instance]
# -- leases ------------------------------------------------------------------------------------------

class Lease(Answer):
    """A polling interface's lease (router/leases.py); all null but `interface` when no one holds it."""

    interface: str
    owner: str | None = Field(description="the instance polling it (cluster.instance); null when none does")
    epoch: int | None = Field(description="one more at each new owner; checkpoints and manifest entries carry it")
    acquired_at: float | None
    renewed_at: float | None
    expires_at: float | None = Field(description="Unix seconds; the server removes the record then")
    expires_in: float | None = Field(description="seconds until it expires unless renewed")
    released_from: str | None = Field(description="after a release: the instance that held it")
    released_by: str | None = Field(description="after a release: who released it")
    here: bool = Field(description="held by the instance that answered")


class Leases(Answer):
    """GET /api/v1/leases."""

    instance: str = Field(description="the instance that answered")
    leases: list[Lease]


class LeaseReleased(Answer):
    """POST /api/v1/leases/{iface}/release."""

    interface: str
    released_from: str
    epoch: int
    actor: str
    retry_after_seconds: float = Field(description="the instance released from waits this long before it tries again")


class SinkPaused(Answer):
    sink: str
    paused: bool
    actor: str


class SinkReplayed(Answer):
    sink: str
    replay_since: str
    actor: str


class Rebuilt(Answer):
    events: int = Field(description="events read from the live stream")


# -- dead letters and replay ------------------------------------------------------------------------

class DeadLetter(Answer):
    """GET /api/v1/dlq/{id}: one dead letter (absent fields are not sent)."""

    interface: str
    kind: Kind
    reason: str
    mode: str
    unit: str = Field(description="control id, or file and line")
    raw: str | None = Field(None, description="where its raw unit is stored")
    message_type: str | None = None
    sender: str | None = None
    facility: str | None = None
    amount: str | None = None
    locator: str | None = Field(None, description="a sink letter's event: stream/sequence")
    at: str
    id: int | None = None


class ListedDeadLetter(DeadLetter):
    replayed: bool
    discarded: bool


class DeadLetters(Answer):
    """GET /api/v1/dlq: oldest first."""

    dead_letters: list[ListedDeadLetter]


class LetterReplayed(Answer):
    """POST /api/v1/dlq/{id}/replay."""

    letter: int
    interface: str
    events: int = Field(description="events published (a dry run: that it would publish)")
    status: int | None = Field(None, description="a sink letter: the receiver's status")
    at: str
    dry_run: bool = False
    would_publish: list[dict[str, str]] | None = Field(None, description="a dry run: each event's type and id")
    money: dict[str, str] | None = Field(None, description="a dry run: the money of those events")
    error: str | None = Field(None, description="a dry run: why the replay would still fail")


class Discarded(Answer):
    """POST /api/v1/dlq/{id}/discard."""

    letter: int
    interface: str
    reason: str
    actor: str
    at: str


class Replayed(Answer):
    """POST /api/v1/replay/{iface}: the run's result."""

    interface: str
    dry_run: bool
    replayed: int = Field(description="records published again")
    units: int = Field(description="raw units read back")
    events: int
    failed: int
    money: Money
    reasons: list[str]
    token: str | None = Field(None, description="the run's token")
    diff: dict[str, Any] | None = Field(None, description="a dry run: before/after events and money, changed, added, "
                                        "removed, unchanged, first (the first differing events)")
