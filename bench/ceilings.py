"""The machine's ceilings, measured beside Ficus in the same run (each in its own process).

    python -m bench.ceilings js-publish NATS_URL --kind dft --seconds 5   # (a) nats-py straight to JetStream
    python -m bench.ceilings hl7-server PORT                              # (b) the hl7 package's MLLP server
    python -m bench.ceilings template-server PORT                         # (b') raw template ACK server
    python -m bench.ceilings min-loop PORT NATS_URL                       # frame -> publish -> PubAck -> ACK
    python -m bench.ceilings same-writes PORT NATS_URL --kind dft         # the same JetStream writes as Ficus

The servers run until SIGTERM; bench.mllp_load drives them exactly as it drives Ficus.
All use uvloop, as `ficus run` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

ACK_TEMPLATE = b"MSH|^~\\&|ACK|BENCH|HIS|NORTH|20240101000000||ACK|%s|P|2.5.1\rMSA|AA|%s\r"
SB, EB = b"\x0b", b"\x1c\x0d"


def control_id(payload: bytes) -> bytes:
    """MSH-10 by a split of the first segment: the least a correct ACK needs."""
    fields = payload.split(b"\r", 1)[0].split(b"|", 10)
    return fields[9] if len(fields) > 9 else b""


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# -- (a) the same payloads straight to JetStream ---------------------------------------------

async def js_publish(url: str, kind: str, seconds: float, window: int, warmup: float = 1.0,
                     fast: bool = False) -> dict[str, Any]:
    import nats
    from nats.js.api import StreamConfig

    from bench.messages import Feed
    from router.publisher import FastPublisher
    from router.store import Outgoing

    nc = await nats.connect(url, pending_size=8 * 1024 * 1024)
    js = nc.jetstream(publish_async_max_pending=window)
    stream = f"CEIL{int(time.time() * 1000) % 10**9}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"], duplicate_window=600))
    feed = Feed(kind, int(time.time() * 10))
    subject = f"{stream.lower()}.raw"
    i = counted = 0
    start = time.perf_counter()
    warm_at = start + warmup
    stop_at = warm_at + seconds
    fp = FastPublisher(nc) if fast else None
    while (now := time.perf_counter()) < stop_at:
        if fp is not None:
            # One batch of `window` publishes awaited together: the same pipelining depth.
            await fp.publish([Outgoing(subject, feed.get(0, i + k), f"{stream}-{i + k}") for k in range(window)], 10.0)
            i += window
        else:
            for _ in range(256):
                await js.publish_async(subject, feed.get(0, i), headers={"Nats-Msg-Id": f"{stream}-{i}"})
                i += 1
        if now < warm_at:
            counted = i
    await js.publish_async_completed()
    if fp is not None:
        await fp.stop()
    elapsed = time.perf_counter() - warm_at
    info = await js.stream_info(stream)
    await js.delete_stream(stream)
    await nc.close()
    return {"kind": kind, "window": window, "messages": i - counted, "seconds": round(elapsed, 2),
            "msgs_per_s": round((i - counted) / elapsed), "stored": info.state.messages}


# -- (b) the hl7 package's asyncio MLLP server ----------------------------------------------

async def hl7_server(port: int) -> None:
    import hl7.mllp

    async def handle(reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()  # runs hl7.parse
                writer.writemessage(message.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(handle, host="127.0.0.1", port=port, encoding="utf-8")
    async with server:
        await _until_term()


# -- (b') a raw template-ACK server with the same framing -------------------------------------

async def template_server(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(SB)
                payload = (await reader.readuntil(EB))[:-2]
                cid = control_id(payload)
                writer.write(SB + ACK_TEMPLATE % (cid, cid) + EB)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await _until_term()


# -- the minimal frame -> publish (Msg-Id) -> PubAck -> ACK loop -----------------------------

async def min_loop(port: int, url: str, fast: bool = False) -> None:
    """With ``fast``, the publish goes through Ficus's own FastPublisher instead of nats-py's
    ``publish_async``: the ceiling must not be weaker than the path Ficus itself uses."""
    import hashlib

    import nats
    from nats.js.api import StreamConfig

    from router.publisher import FastPublisher
    from router.store import Outgoing

    nc = await nats.connect(url, pending_size=8 * 1024 * 1024)
    js = nc.jetstream(publish_async_max_pending=4096)
    await js.add_stream(StreamConfig(name="MINLOOP", subjects=["minloop.>"], duplicate_window=600))
    fp = FastPublisher(nc) if fast else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(SB)
                payload = (await reader.readuntil(EB))[:-2]
                msg_id = hashlib.sha256(payload).hexdigest()[:32]
                if fp is not None:
                    await fp.publish([Outgoing("minloop.raw", payload, msg_id)], 5.0)  # the PubAck: stored
                else:
                    ack = await js.publish_async("minloop.raw", payload, headers={"Nats-Msg-Id": msg_id})
                    await ack  # the PubAck: stored
                cid = control_id(payload)
                writer.write(SB + ACK_TEMPLATE % (cid, cid) + EB)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await _until_term()
    await nc.close()


# -- the minimal loop with Ficus's writes per message ------------------------------------------

def same_writes_items(kind: str, interface: str = "bench") -> tuple[list[Any], list[Any]]:
    """The messages Ficus stores for one `kind` message, as templates: the events and the ledger
    delta Ficus itself makes for a message of the benchmark feed (same subjects, headers, bytes).

    Counted in the streams after a `ficus run` (bench/mllp_ratio.py --count): per ADT^A01 the
    raw copy, 1 event and 1 ledger delta (3 writes); per DFT^P03 with 3 FT1 the raw copy,
    3 events and 1 ledger delta (5 writes)."""
    from datetime import UTC, datetime

    from bench.messages import Feed
    from canonical.translate import TranslationContext, translate_hl7
    from router import ledger, names
    from router.store import event_message

    raw = Feed(kind, 1).get(0, 0)
    ctx = TranslationContext(interface, "live", names.raw_ref(names.STREAM_RAW, 1), datetime.now(UTC))
    events = translate_hl7(raw, "hl7v2", ctx).events
    stored = [event_message(ev, interface) for ev in events]
    entry = ledger.Entry(ledger.facility_of(events), "published", 1, len(events), ledger.money_of(events))
    return stored, [ledger.delta(interface, "modern", [entry], "0" * 32)]


async def same_writes(port: int, url: str, kind: str, interface: str = "bench", two_trips: bool = False) -> None:
    """frame -> the raw copy, the events and the ledger delta (pre-encoded, of Ficus's sizes,
    each with its own Nats-Msg-Id, to streams configured as Ficus's) published together ->
    every PubAck -> ACK. Ficus's own FastPublisher, all writes of a message in one batch: the
    best a minimal implementation doing Ficus's writes would do.

    ``two_trips``: the raw copy acknowledged first, then the rest, as Ficus must (its events
    carry the raw copy's stream sequence): what that second round trip costs by itself."""
    import hashlib

    import nats

    from router import names
    from router.config import NatsConfig
    from router.publisher import FastPublisher
    from router.store import Outgoing
    from router.store.core import stream_configs

    events, deltas = same_writes_items(kind, interface)
    nc = await nats.connect(url, pending_size=8 * 1024 * 1024)
    js = nc.jetstream()
    wanted = {names.STREAM_RAW, names.STREAM_CANONICAL, names.STREAM_LEDGER}
    for config in stream_configs(NatsConfig()):
        if config.name in wanted:
            await js.add_stream(config)
    fp = FastPublisher(nc, names.HDR_MSG_ID)
    await fp.start()
    raw_subject = names.raw_subject(interface)
    # Each write's Msg-Id made from the raw id with the length of Ficus's (event ids, "ledger-" ids).
    templates = [(o.subject, o.payload, o.headers, o.msg_id[:-32]) for o in (*events, *deltas)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        raw_headers = {names.HDR_PEER: f"{peername[0]}:{peername[1]}"}
        try:
            while True:
                await reader.readuntil(SB)
                payload = (await reader.readuntil(EB))[:-2]
                cid = control_id(payload)
                raw_id = hashlib.sha256(payload).hexdigest()[:32]
                items = [Outgoing(raw_subject, payload, raw_id,
                                  {**raw_headers, names.HDR_CONTROL_ID: cid.decode("ascii", "replace")})]
                items += [Outgoing(subject, body, f"{prefix}{raw_id[:30]}{k:02d}", headers)
                          for k, (subject, body, headers, prefix) in enumerate(templates)]
                if two_trips:
                    await fp.publish(items[:1], 5.0)
                    await fp.publish(items[1:], 5.0)
                else:
                    await fp.publish(items, 5.0)  # every PubAck: all stored
                writer.write(SB + ACK_TEMPLATE % (cid, cid) + EB)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await _until_term()
    await fp.stop()
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("js-publish")
    p.add_argument("url")
    p.add_argument("--kind", default="dft")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--fast", action="store_true", help="Ficus's FastPublisher instead of publish_async")
    for name in ("hl7-server", "template-server"):
        sub.add_parser(name).add_argument("port", type=int)
    p = sub.add_parser("min-loop")
    p.add_argument("port", type=int)
    p.add_argument("url")
    p.add_argument("--fast", action="store_true", help="Ficus's FastPublisher instead of publish_async")
    p = sub.add_parser("same-writes")
    p.add_argument("port", type=int)
    p.add_argument("url")
    p.add_argument("--kind", choices=("adt", "dft"), default="dft")
    p.add_argument("--two-trips", action="store_true", help="the raw copy acknowledged before the other writes")
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.cmd == "js-publish":
        print(json.dumps(runner(js_publish(args.url, args.kind, args.seconds, args.window, fast=args.fast))))
    elif args.cmd == "hl7-server":
        runner(hl7_server(args.port))
    elif args.cmd == "template-server":
        runner(template_server(args.port))
    elif args.cmd == "same-writes":
        runner(same_writes(args.port, args.url, args.kind, two_trips=args.two_trips))
    else:
        runner(min_loop(args.port, args.url, args.fast))


if __name__ == "__main__":
    main()
