"""Follow Ficus's canonical events live (Server-Sent Events), resuming with Last-Event-ID.

    FICUS_TOKEN=... python sse_feed.py --api https://ficus.example:8443 --state erp-last-id.txt

`GET /api/v1/events/stream` sends each event as `id: <cursor>` + `data: {seq, stored_at,
event}`; the id of the last event processed is saved, and a reconnect sends it as
`Last-Event-ID`: the feed goes on just past it, without a gap or a repeat. Without a saved
id the feed starts at `--from` (or with new events only). Comment lines are heartbeats: a
connection silent for three of them is dead, so reconnect. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def events(api: str, token: str | None, params: dict[str, str], last_id: str | None,
           heartbeat: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, item) per event of one connection, until it ends."""
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if last_id:
        headers["Last-Event-ID"] = last_id
    url = f"{api}/api/v1/events/stream?{urllib.parse.urlencode({**params, 'heartbeat': str(heartbeat)})}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=3 * heartbeat) as resp:
        ident, data = "", []
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith(":"):
                continue  # a heartbeat
            if line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                yield ident, json.loads("\n".join(data))
                ident, data = "", []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--type", default="org.ficus.revenue")
    parser.add_argument("--from", dest="start", help="without a saved id: start at this time (ISO 8601)")
    parser.add_argument("--state", type=Path, default=Path("events-last-id.txt"))
    parser.add_argument("--heartbeat", type=int, default=15)
    parser.add_argument("--count", type=int, default=0, help="stop after this many events (0: run on)")
    args = parser.parse_args()
    token = os.environ.get("FICUS_TOKEN")
    params = {"type": args.type, **({"from": args.start} if args.start else {})}
    done = 0
    while True:
        last_id = args.state.read_text().strip() if args.state.exists() else None
        try:
            for ident, item in events(args.api, token, params, last_id, args.heartbeat):
                print(f"{item['seq']} {item['event']['type']} {item['event']['id']}", flush=True)
                args.state.write_text(ident)  # processed: resume after it
                done += 1
                if args.count and done >= args.count:
                    return
        except OSError as exc:  # a dropped connection, a timeout, Ficus restarting
            print(f"reconnecting after: {exc.__class__.__name__}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
