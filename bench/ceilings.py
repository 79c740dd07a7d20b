"""The machine's ceilings, measured beside Ficus in the same run (each in its own process).

    python -m bench.ceilings js-publish NATS_URL --kind dft --seconds 5   # (a) nats-py straight to JetStream
    python -m bench.ceilings hl7-server PORT                              # (b) the hl7 package's MLLP server
    python -m bench.ceilings template-server PORT                         # (b') raw template ACK server
    python -m bench.ceilings min-loop PORT NATS_URL                       # frame -> publish -> PubAck -> ACK

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
    else:
        runner(min_loop(args.port, args.url, args.fast))


if __name__ == "__main__":
    main()
