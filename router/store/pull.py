"""A durable pull consumer whose messages the caller acknowledges one by one (push sinks).

Unlike `durable.consume`, which acknowledges after its handler, the holder decides: `ack`
after the receiver accepted, `nak` to have it again now, `in_progress` to keep a message
it still works on from being delivered again after `ack_wait`. Every nats-py error comes
out as a StoreError.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from router.store.core import Store
from router.store.errors import mapped


@dataclass(frozen=True, slots=True)
class Held:
    """One delivered message, not yet acknowledged."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    _msg: Msg

    async def ack(self) -> None:
        with mapped("ack"):
            await self._msg.ack()

    async def nak(self) -> None:
        with mapped("nak"):
            await self._msg.nak()

    async def in_progress(self) -> None:
        with mapped("in progress"):
            await self._msg.in_progress()


class PullConsumer:
    """A named durable consumer on `stream`, filtered by `subjects`, created or updated by `ensure`."""

    def __init__(self, store: Store, stream: str, name: str) -> None:
        self.stream = stream
        self.name = name
        self._js: JetStreamContext = store._js  # the store package's own door to nats-py
        self._sub: JetStreamContext.PullSubscription | None = None

    async def ensure(self, subjects: list[str], *, ack_wait: float, max_ack_pending: int,
                     since: datetime | None = None) -> None:
        """Creates the consumer (starting at new messages) or updates its filters and limits.

        With `since`, the consumer is made again, starting at the first message stored at or
        after that time (a replay): what it had delivered and not acknowledged is forgotten.
        """
        config = ConsumerConfig(
            durable_name=self.name, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if since is None else DeliverPolicy.BY_START_TIME,
            opt_start_time=None if since is None else since.astimezone(UTC),
            ack_wait=ack_wait, max_ack_pending=max_ack_pending,
            filter_subjects=subjects if len(subjects) > 1 else None,
            filter_subject=subjects[0] if len(subjects) == 1 else None)
        with mapped(f"{self.stream}: consumer {self.name}"):
            if since is not None:
                await self.close()
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self._js.delete_consumer(self.stream, self.name)
            else:
                try:
                    info = await self._js.consumer_info(self.stream, self.name)
                except nats.js.errors.NotFoundError:
                    pass
                else:
                    # Its start (new, a sequence, a time) cannot change; filters and limits can.
                    config = dataclasses.replace(
                        info.config, ack_wait=config.ack_wait, max_ack_pending=max_ack_pending,
                        filter_subject=config.filter_subject, filter_subjects=config.filter_subjects)
            await self._js.add_consumer(self.stream, config)

    async def restart_after_crash(self, subjects: list[str], *, ack_wait: float, max_ack_pending: int) -> bool:
        """Makes the consumer again from its ack floor when messages are delivered and not
        acknowledged (a holder killed): JetStream would hand them out again only after
        `ack_wait`, behind newer ones, and the newer ones of a key would overtake them.
        Returns True when it did (what was acknowledged past the floor comes again too)."""
        with mapped(f"{self.stream}: consumer {self.name}"):
            info = await self._js.consumer_info(self.stream, self.name)
            if not info.num_ack_pending:
                return False
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            config = ConsumerConfig(
                durable_name=self.name, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=(floor or 0) + 1, ack_wait=ack_wait, max_ack_pending=max_ack_pending,
                filter_subjects=subjects if len(subjects) > 1 else None,
                filter_subject=subjects[0] if len(subjects) == 1 else None)
            await self.close()
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._js.delete_consumer(self.stream, self.name)
            await self._js.add_consumer(self.stream, config)
        return True

    async def fetch(self, batch: int, timeout: float) -> list[Held]:
        """Up to `batch` messages, waiting at most `timeout` seconds for the first ([] if none)."""
        with mapped(f"{self.stream}: consumer {self.name}"):
            if self._sub is None:
                self._sub = await self._js.pull_subscribe_bind(self.name, stream=self.stream)
            try:
                msgs = await self._sub.fetch(batch, timeout=timeout)
            except TimeoutError:
                # nats.errors.TimeoutError, or nats-py's bare asyncio.TimeoutError when no answer
                # came within `timeout` (seen under load): either way, nothing to deliver yet.
                return []
        return [Held(m.metadata.sequence.stream, m.subject, m.data, dict(m.headers or {}), m) for m in msgs]

    async def pending(self) -> int:
        """Messages not yet delivered to the consumer (its lag)."""
        with mapped(f"{self.stream}: consumer {self.name}"):
            info = await self._js.consumer_info(self.stream, self.name)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with mapped("unsubscribe"):
                await sub.unsubscribe()
