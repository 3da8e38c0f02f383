"""Receivers of semtag's events: real HTTP servers on 127.0.0.1 that verify every request with the
standardwebhooks package and record webhook-id → payload; some fail, some are down, some are slow."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from semtag.bootstrap import build_runtime
from semtag.settings import Settings
from services import migrate
from services.events import service
from services.events.schemas import EventType, SubscriptionCreate
from services.runtime import NullQueue, Runtime


class Receiver:
    """A receiver on its own port. ``fail_first``: answer 500 to that many requests; ``hang_first``: hold that
    many requests (after recording them: the receiver processed them, but answers too late) until released;
    :meth:`down` and :meth:`up` stop and restart it on the same port (connections refused meanwhile)."""

    def __init__(self, fail_first: int = 0, hang_first: int = 0, status: int = 200) -> None:
        self.secret: str | None = None
        self.fail_first, self.hang_first, self.status = fail_first, hang_first, status
        self.requests = 0                       # every request that reached the handler
        self.received: list[tuple[str, dict]] = []  # (webhook-id, payload) of every verified request
        self.rejected: list[str] = []            # requests whose signature did not verify
        self.held: list[str] = []                # webhook-ids of the requests held past the sender's timeout
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._srv: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/semtag"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with rec._lock:
                    rec.requests += 1
                    n = rec.requests
                try:
                    payload = Webhook(rec.secret or "").verify(body, dict(self.headers.items()))
                except (WebhookVerificationError, ValueError) as exc:
                    with rec._lock:
                        rec.rejected.append(f"{self.headers.get('webhook-id')}: {exc}")
                    self._answer(400)
                    return
                with rec._lock:
                    rec.received.append((self.headers["webhook-id"], payload))
                if n <= rec.hang_first:
                    with rec._lock:
                        rec.held.append(self.headers["webhook-id"])
                    rec.release.wait(120)
                self._answer(500 if n <= rec.fail_first else rec.status)

            def _answer(self, code: int) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up (a hung request past its timeout)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def up(self) -> None:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        srv.daemon_threads = True
        self.port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self._srv = srv

    def down(self) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def ids(self) -> set[str]:
        with self._lock:
            return {i for i, _ in self.received}

    def by_id(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        with self._lock:
            for i, p in self.received:
                out.setdefault(i, []).append(p)
        return out

    def close(self) -> None:
        self.release.set()
        self.down()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def event_settings(base: Settings, **kw: object) -> Settings:
    """``base`` with the outbound allow-list open to 127.0.0.1. The delivery timeout is generous: a bound for
    a loaded machine, not a speed expectation (the slow-receiver test sets a short one of its own)."""
    return base.model_copy(update={"events_url_allowlist": ["127.0.0.1:*"], "events_delivery_timeout_s": 20.0,
                                   **kw})


@pytest.fixture
def ev_rt(settings: Settings) -> Runtime:
    """A runtime with no API and no dispatcher of its own (nothing runs unless the test calls it), on SQLite
    and on PostgreSQL."""
    rt = build_runtime(event_settings(settings), queue=NullQueue())
    migrate.upgrade(rt.db_url)
    return rt


def subscribe(rt: Runtime, rec: Receiver, types: list[EventType] | None = None, fmt: str = "kit-sem") -> int:
    made = service.create_subscription(rt, SubscriptionCreate(url=rec.url, event_types=types or list(EventType),
                                                              metadata_format=fmt), "test")
    rec.secret = made.secret
    return made.id


def body_of(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True)


__all__ = ["Receiver", "subscribe", "event_settings", "body_of", "Path"]
