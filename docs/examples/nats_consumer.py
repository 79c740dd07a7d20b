"""Consume Ficus's canonical events straight from NATS JetStream with a durable pull consumer.

    ficus schemas export schemas/          # JSON Schema per event type + asyncapi.json
    python nats_consumer.py --nats nats://127.0.0.1:4222 --schemas schemas/ \
        --durable erp-charges --subject 'canonical.revenue.charge.>'

The consumer is durable: the server remembers what it acknowledged, so a restart (of this
program or of NATS) goes on where it stopped. Each event is acknowledged only after it was
processed; one that fails processing is not acknowledged (a `nak`) and comes again. Events
are CloudEvents 1.0 (`application/cloudevents+json`); the `Nats-Msg-Id` header is the event
id, the key to drop a repeat with. Needs `nats-py` and, to check events against their
schemas, `jsonschema`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

STREAM = "FICUS_CANONICAL"  # live events; FICUS_SHADOW has those of interfaces in shadow


def load_schemas(directory: Path) -> dict[str, jsonschema.Draft202012Validator]:
    """One validator per event type, from `ficus schemas export`'s <type>.schema.json files."""
    out = {}
    for path in directory.glob("*.schema.json"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        out[path.name.removesuffix(".schema.json")] = jsonschema.Draft202012Validator(schema)
    return out


def process(event: dict[str, Any]) -> None:
    """The consumer's own work (here: one line per event; an ERP would post it)."""
    data = event.get("data", {})
    amount = data.get("amount") or data.get("total_amount") or ""
    print(f"{event['type']} {event['id']} {data.get('account_number', '')} {amount}".rstrip(), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--schemas", type=Path, required=True, help="the directory ficus schemas export wrote")
    parser.add_argument("--durable", default="erp-charges", help="the consumer's name: its place is kept under it")
    parser.add_argument("--subject", default="canonical.revenue.charge.>")
    parser.add_argument("--count", type=int, default=0, help="stop after this many events (0: run on)")
    args = parser.parse_args()

    validators = load_schemas(args.schemas)
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    # Made once, then found again by name. DeliverPolicy.ALL: a new consumer starts at the
    # stream's first event (NEW would start at the next one).
    config = ConsumerConfig(durable_name=args.durable, ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL, filter_subject=args.subject, ack_wait=30)
    sub = await js.pull_subscribe(args.subject, durable=args.durable, stream=STREAM, config=config)
    done = 0
    try:
        while not args.count or done < args.count:
            try:
                msgs = await sub.fetch(batch=50, timeout=5)
            except nats.errors.TimeoutError:
                continue  # nothing new yet
            for msg in msgs:
                event = json.loads(msg.data)
                validator = validators.get(event.get("type", ""))
                if validator is None or not validator.is_valid(event):
                    # A type this consumer does not know (a newer version): leave it for later.
                    print(f"skipped {event.get('type')} {msg.headers and msg.headers.get('Nats-Msg-Id')}", flush=True)
                    await msg.term()
                    continue
                try:
                    process(event)
                except Exception:
                    await msg.nak(delay=5)  # comes again in 5 s
                    raise
                await msg.ack()  # only now: a crash before this line gets the event again
                done += 1
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
