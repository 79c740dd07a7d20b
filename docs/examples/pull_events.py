"""Read Ficus's canonical events page by page from the HTTP API, resuming with the cursor.

    FICUS_TOKEN=... python pull_events.py --api https://ficus.example:8443 \
        --type org.ficus.revenue.charge --state erp-cursor.txt

Each page is `GET /api/v1/events?...&cursor=<cursor>`; the cursor of the last page processed
is saved (after processing, so a crash reads that page again: drop repeats by event id). The
cursor is given even when nothing follows yet, so the loop polls with it. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def get_page(api: str, token: str | None, params: dict[str, str]) -> dict[str, Any]:
    url = f"{api}/api/v1/events?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        page: dict[str, Any] = json.load(resp)
    return page


def process(item: dict[str, Any]) -> None:
    event = item["event"]
    print(f"{item['seq']} {event['type']} {event['id']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--type", default="org.ficus.revenue", help="a type or a prefix of one")
    parser.add_argument("--state", type=Path, default=Path("events-cursor.txt"), help="where the cursor is kept")
    parser.add_argument("--limit", default="100")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls once caught up")
    parser.add_argument("--once", action="store_true", help="stop when caught up instead of polling")
    args = parser.parse_args()
    token = os.environ.get("FICUS_TOKEN")  # a client with content access (role viewer, content = true)

    while True:
        params = {"type": args.type, "limit": args.limit}
        if args.state.exists():
            params["cursor"] = args.state.read_text().strip()  # the cursor is bound to these filters
        page = get_page(args.api, token, params)
        for item in page["events"]:
            process(item)
        if page["cursor"]:
            args.state.write_text(page["cursor"])  # after processing: at least once, never skipped
        if not page["more"]:
            if args.once:
                return
            time.sleep(args.poll)


if __name__ == "__main__":
    main()
