"""A receiver for a Ficus sink ([[sinks]]): checks each request's Standard Webhooks signature,
drops repeats by Idempotency-Key, and answers 2xx only once the events are processed.

    WEBHOOK_SECRET=whsec_... python sink_receiver.py --port 9000 --seen seen-keys.txt

Ficus acknowledges an event only after a 2xx, so it sends again after a failure, a timeout
or its own restart: the same event comes with the same `Idempotency-Key` (the event id; a
batch has a key of its own, so its events are checked by id too), and what was processed
before is answered 200 without doing anything twice. A request whose signature does not
verify (the wrong secret, a body changed on the way, a timestamp more than 5 minutes off) is
refused with 401 and nothing is done. Needs `standardwebhooks` (pip install standardwebhooks);
the rest is the standard library.
"""

from __future__ import annotations

import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver(ThreadingHTTPServer):
    def __init__(self, port: int, secret: str, seen: Path) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.webhook = Webhook(secret)
        self.seen_path = seen
        # A real ERP keeps the keys in its database, in the transaction that posts the event.
        self.seen = set(seen.read_text().split()) if seen.exists() else set()
        self.lock = threading.Lock()


def process(event: dict[str, Any]) -> None:
    data = event.get("data", {})
    print(f"received {event['type']} {event['id']} {data.get('account_number', '')}".rstrip(), flush=True)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            payload = self.server.webhook.verify(body, dict(self.headers.items()))
        except WebhookVerificationError:
            print("refused: bad signature", flush=True)
            return self.answer(401)
        key = self.headers.get("Idempotency-Key", "")
        with self.server.lock:
            if key in self.server.seen:
                print(f"repeat {key} dropped", flush=True)
                return self.answer(200)
            # One CloudEvent (application/cloudevents+json; its id is the key) or a batch of them
            # (a JSON array under a key of its own): a batch may hold an event processed before.
            for event in payload if isinstance(payload, list) else [payload]:
                if event["id"] not in self.server.seen:
                    process(event)
                    self.remember(event["id"])
            self.remember(key)
        self.answer(204)

    def remember(self, key: str) -> None:
        if key not in self.server.seen:
            self.server.seen.add(key)
            with self.server.seen_path.open("a") as seen:
                seen.write(key + "\n")

    def answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per event above is enough


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--seen", type=Path, default=Path("seen-keys.txt"))
    args = parser.parse_args()
    server = Receiver(args.port, os.environ["WEBHOOK_SECRET"], args.seen)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
