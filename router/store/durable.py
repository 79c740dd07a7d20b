"""A durable JetStream pull consumer that hands each fetched batch to a handler, then acknowledges it.

The consumer is named, so its position survives a restart and is shared by every instance
that uses the name: each message goes to one of them. A handler that raises leaves the
batch unacknowledged; JetStream delivers it again after `ack_wait` (so a handler must be
idempotent: a batch may be handled twice, in part or whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from router.store.core import Store, StoredMsg
from router.store.errors import StoreError, mapped

log = logging.getLogger(__name__)

Handler = Callable[[list[StoredMsg]], Awaitable[None]]
"""Handles a batch of messages in stream order (one batch at a time)."""


async def consume(store: Store, stream: str, subject: str, durable: str, handler: Handler,
                  *, batch: int = 100, wait: float = 1.0, ack_wait: float = 30.0,
                  after: Callable[[], Awaitable[None]] | None = None) -> None:
    """Runs until cancelled: fetches up to `batch` messages, hands them to `handler` together,
    then acknowledges each (a handler can group the writes of a batch), then awaits `after`
    (a consumer that paces itself pauses there, its batch acknowledged, not in `ack_wait`).

    A lost connection or a failed handler is logged (kinds only) and retried after a pause.
    """
    js = store._js  # the store package's own door to nats-py
    config = ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                            ack_wait=ack_wait, max_ack_pending=batch * 10, filter_subject=subject)
    sub = None
    while True:
        try:
            if sub is None:
                with mapped(f"{stream}: consumer {durable}"):
                    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
            try:
                msgs = await sub.fetch(batch, timeout=wait)
            except nats.errors.TimeoutError:
                continue
            stored = []
            for msg in msgs:
                meta = msg.metadata
                stored.append(StoredMsg(meta.sequence.stream, msg.subject, msg.data, dict(msg.headers or {}),
                                        meta.num_pending))
            await handler(stored)
            for msg in msgs:
                await msg.ack()
            if after is not None:
                await after()
        except asyncio.CancelledError:
            raise
        except nats.errors.ConnectionClosedError:
            log.info("%s: consumer %s: the connection is closed; stopped", stream, durable)
            return
        except (StoreError, nats.errors.Error, nats.js.errors.Error, OSError, ValueError) as exc:
            log.warning("%s: consumer %s: %s; retrying", stream, durable, type(exc).__name__)
            with contextlib.suppress(Exception):
                if sub is not None:
                    await sub.unsubscribe()
            sub = None
            await asyncio.sleep(1.0)


async def delete_consumer(store: Store, stream: str, durable: str) -> None:
    """Deletes a durable consumer; absent is fine."""
    with mapped(f"{stream}: delete consumer {durable}"), contextlib.suppress(nats.js.errors.NotFoundError):
        await store._js.delete_consumer(stream, durable)


async def delete_bucket(store: Store, bucket: str) -> None:
    """Deletes a KV bucket and its history; absent is fine (`Store.kv` creates it again)."""
    with mapped(f"bucket {bucket}: delete"), contextlib.suppress(nats.js.errors.NotFoundError):
        await store._js.delete_key_value(bucket)
