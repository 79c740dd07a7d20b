"""Live posting (issue 15 item 3): journal entries as canonical events arrive.

Two durable pull consumers, shared by every instance like the views' (each event goes to one of
them): ``ficus-posting`` on FICUS_CANONICAL (``canonical.>``) and ``ficus-posting-shadow`` on
FICUS_SHADOW (``shadow.canonical.>``). Shadow events are posted too: an interface in shadow is
still in the hospital's books (its legacy path feeds the legacy export), so GL parity needs its
entries; they are only ever shadow entries. Each event goes through
``canonical.posting.engine.post`` with the rules of ``[posting] rules`` -- the same function
``ficus post`` runs offline, so the entries are byte-identical -- and:

- its entries are stored (router/gl_parity.py ``entry_messages``: the entry on its subject, live
  or ``shadow.``, and its copy in the posting index by posting day), Nats-Msg-Id = entry id;
- a refusal (no rule, an unmapped account, an unbalanced result) is dead-lettered on
  ``dlq.posting`` (kind ``rejected``): the reason, the money at risk as the letter's amount, the
  source event id as its unit, its type, facility and raw reference, and its place in its stream
  as the locator, so nothing is lost and ``ficus dlq`` lists it;
- a skipped event (a rule says it posts nothing) is only acknowledged;
- our own entries (``canonical.finance.``) are not posted again.

The source event is acknowledged only after its entries (or its dead letter) are stored. An
instance killed in between leaves it unacknowledged: the next start makes the consumer again from
its ack floor (as the sinks do), the event is posted again and its entries, with the same ids,
are dropped by the streams' duplicate window -- each entry is stored once. A consumer is created
at new events: enabling posting does not book the history kept in the streams (``ficus post``
does that offline, for a day's parity).

Where a live event's entries go (``[posting] mode``): ``shadow``, ``live``, or ``follow`` the route
of ``gl_interface`` (modern: live, else shadow), read per event from the routing table. The
entry's bytes are the engine's whatever the subject (``ficusmode`` is the source event's).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from canonical.posting.engine import Posting, post
from canonical.posting.rules import Rules
from router import gl_parity, names
from router.config import PostingConfig
from router.dlq import DeadLetter, now_iso
from router.routes import RouteTable
from router.store import Outgoing, Store, StoreError
from router.store.pull import Held, PullConsumer

log = logging.getLogger("ficus.posting")

CONSUMERS = (("ficus-posting", names.STREAM_CANONICAL, "canonical.>"),
             ("ficus-posting-shadow", names.STREAM_SHADOW, "shadow.canonical.>"))
"""(durable name, stream, subject) of the two consumers."""
OWN = ("canonical.finance.", "shadow.canonical.finance.")
"""Subjects of journal entries: never posted again."""
DLQ_INTERFACE = "posting"
"""The dead letters of refused events go to ``dlq.posting``."""


@dataclass
class PostingStats:
    """Counts since this instance started (for logs and tests)."""

    events: int = 0
    entries: int = 0
    skipped: int = 0
    refused: int = 0


class Poster:
    """Posts events with one set of rules; :meth:`run` consumes until cancelled."""

    def __init__(self, cfg: PostingConfig, store: Store, rules: Rules, routes: RouteTable | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.rules = rules
        self.routes = routes
        self.stats = PostingStats()

    def mode_for(self, subject: str) -> Literal["live", "shadow"]:
        """Where the entries of an event stored on `subject` go."""
        if subject.startswith("shadow."):
            return "shadow"
        if self.cfg.mode == "live":
            return "live"
        if self.cfg.mode == "follow" and self.routes is not None and self.cfg.gl_interface is not None:
            return "live" if self.routes.mode_for(self.cfg.gl_interface) == "modern" else "shadow"
        return "shadow"

    def messages(self, stream: str, seq: int, subject: str, data: bytes) -> tuple[list[Outgoing], Posting | None]:
        """What one stored event comes to: the messages to store, and its posting (None: not ours)."""
        if subject.startswith(OWN):
            return [], None
        try:
            event: dict[str, Any] = json.loads(data)
            if not isinstance(event, dict):
                raise TypeError("not an object")
            posting = post(event, self.rules)
        except (ValueError, TypeError) as exc:  # not an event: a letter says where it is, not what it holds
            letter = DeadLetter(interface=DLQ_INTERFACE, kind="rejected", reason=f"not a canonical event: "
                                f"{type(exc).__name__}", mode=self.mode_for(subject), unit=f"{stream}/{seq}",
                                locator=f"{stream}/{seq}", at=now_iso())
            return [letter.outgoing(f"posting:{stream}:{seq}:{self.rules.version}")], None
        mode = self.mode_for(subject)
        if posting.refused is not None:
            why = posting.refused
            letter = DeadLetter(
                interface=DLQ_INTERFACE, kind="rejected", reason=f"not posted (rules {self.rules.version}): "
                f"{why.reason}", mode=mode, unit=why.event_id, message_type=why.event_type,
                facility=why.facility or None, amount=str(why.money_at_risk), raw=event.get("ficusraw") or None,
                sender=why.interface or None, locator=f"{stream}/{seq}", at=now_iso())
            return [letter.outgoing(f"posting:{why.event_id}:{self.rules.version}")], posting
        out: list[Outgoing] = []
        for entry in posting.entries:
            out += gl_parity.entry_messages(entry, entry.ficusinterface, mode)
        return out, posting

    async def handle(self, stream: str, held: Held) -> None:
        """Posts one event and stores what it comes to; raises StoreError when not stored (not acked)."""
        out, posting = self.messages(stream, held.seq, held.subject, held.data)
        await self.store.publish(out)
        if posting is not None:
            self.stats.events += 1
            self.stats.entries += len(posting.entries)
            self.stats.skipped += posting.skipped
            self.stats.refused += posting.refused is not None
        elif out:
            self.stats.refused += 1

    async def run(self) -> None:
        """Both consumers, until cancelled."""
        await asyncio.gather(*(self._consume(name, stream, subject) for name, stream, subject in CONSUMERS))

    async def _consume(self, name: str, stream: str, subject: str) -> None:
        consumer = PullConsumer(self.store, stream, name)
        ack_wait, pending = self.cfg.ack_wait_seconds, self.cfg.batch * 10
        ready = False
        while True:
            try:
                if not ready:
                    await consumer.ensure([subject], ack_wait=ack_wait, max_ack_pending=pending)
                    # An instance killed with events in hand: they come again now, not after ack_wait.
                    await consumer.restart_after_crash([subject], ack_wait=ack_wait, max_ack_pending=pending)
                    ready = True
                for held in await consumer.fetch(self.cfg.batch, 1.0):
                    await self.handle(stream, held)
                    await held.ack()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("posting: consumer %s: %s; retrying", name, exc.reason)
                await consumer.close()
                ready = False
                await asyncio.sleep(1.0)


async def keep(poster: Poster) -> None:
    """The task a service runs: the consumers, restarted after an unexpected error."""
    while True:
        try:
            await poster.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged by kind, retried: posting must not stop
            log.warning("posting: consumer stopped (%s); restarting", type(exc).__name__)
            await asyncio.sleep(1.0)
