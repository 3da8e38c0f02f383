"""The HTTP server's own defences: uvicorn's h11 protocol with deadlines for slow clients.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline for a
request's headers or for a body that stops arriving, so a client sending a byte every few seconds
(slowloris) holds a connection for as long as it likes. :class:`GuardedH11Protocol` adds both:

* the request line and headers must arrive within ``SEMTAG_HTTP_HEADER_TIMEOUT_S`` of their first byte
  (or of the connection); otherwise the client gets a JSON 408 and the connection is closed;
* while a body is being received, a gap of more than ``SEMTAG_HTTP_BODY_IDLE_TIMEOUT_S`` with no bytes
  closes the connection (the application sees a disconnect and discards the partial upload). A pause
  the server asked for (flow control while the application is busy) does not count.

``limit_concurrency`` (``SEMTAG_HTTP_MAX_CONNECTIONS``) bounds the connections one process holds; above
it new requests get a 503.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_BODY = json.dumps({"error": {"code": "request_timeout",
                                      "message": "the request headers did not arrive in time"}}).encode()
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the two deadlines, read from the settings (module-level, so that
    ``--workers N`` can hand it to its worker processes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from semtag.settings import get_settings

        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.http_header_timeout_s
        self.body_idle_timeout_s = settings.http_body_idle_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- deadlines --
    def _cancel(self, attr: str) -> None:
        timer = getattr(self, attr)
        if timer is not None:
            timer.cancel()
            setattr(self, attr, None)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.logger.info("closing a connection whose request headers did not arrive in %.0f s", self.header_timeout_s)
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def _arm_body_deadline(self) -> None:
        self._cancel("_body_timer")
        if self.conn.their_state is h11.SEND_BODY:
            self._body_timer = self.loop.call_later(self.body_idle_timeout_s, self._body_too_slow)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow is not None and self.flow.read_paused:  # we stopped reading, not the client
            self._arm_body_deadline()
            return
        self.logger.info("closing a connection whose request body stalled for %.0f s", self.body_idle_timeout_s)
        self.transport.close()

    # -- protocol events --
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # a new request on a kept-alive connection starts its clock
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel("_header_timer")
        self._arm_body_deadline()

    def on_response_complete(self) -> None:
        self._cancel("_body_timer")
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("_header_timer")
        self._cancel("_body_timer")
        super().connection_lost(exc)
