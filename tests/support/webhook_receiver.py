"""A merchant's webhook receiver for the tests: a real HTTP server in a thread that records
every request and answers what the test tells it to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    url: str
    # (webhook-id, how many times this id came before) → the status to answer
    answer: Callable[[str, int], int] = lambda _id, _n: 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, webhook_id: str) -> int:
        with self.lock:
            return sum(1 for r in self.received if r.headers.get("webhook-id") == webhook_id)

    def succeeded_ids(self) -> set[str]:
        with self.lock:
            return {r.headers["webhook-id"] for r in self.received if 200 <= r.answered < 300}

    def of(self, webhook_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.headers.get("webhook-id") == webhook_id]

    def wait(self, until: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"receiver gave up waiting: {len(self.received)}"
            time.sleep(0.05)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            webhook_id = self.headers.get("webhook-id", "")
            with receiver.lock:
                before = sum(
                    1 for r in receiver.received if r.headers.get("webhook-id") == webhook_id
                )
            if receiver.delay:
                time.sleep(receiver.delay)
            status = receiver.answer(webhook_id, before)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                receiver.received.append(Received(headers, body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    receiver = Receiver(url=f"http://127.0.0.1:{httpd.server_address[1]}/hooks")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
