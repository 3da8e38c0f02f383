"""The repository's ingest webhook: HMAC-SHA256 signatures, base64 bodies, allow-listed URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from services.errors import BadInput, Conflict, Unauthorized, Unavailable
from services.runtime import Runtime
from services.storage import BlobTooLarge, BlobWriter
from services.tables import WebhookDelivery, utcnow

log = logging.getLogger(__name__)


class WebhookDisabled(Unavailable):
    code = "webhook_disabled"


SIGNATURE_HEADER = "X-Semtag-Signature"
TIMESTAMP_HEADER = "X-Semtag-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>." + body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class SignedBody:
    """Checks a webhook request in two steps, so that nothing unauthenticated is held in memory:
    the headers before the body is read (:meth:`start`), then the HMAC, fed chunk by chunk as the
    body streams to disk (:meth:`update`, :meth:`verify`)."""

    def __init__(self, secret: str | None, timestamp: str | None, signature: str | None, max_skew_s: int,
                 now: float | None = None) -> None:
        if not secret:
            raise WebhookDisabled("the ingest webhook is disabled: SEMTAG_WEBHOOK_SECRET is not set")
        if not timestamp or not signature:
            raise Unauthorized(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header", "missing_signature")
        if not re.fullmatch(r"\d{1,12}", timestamp.strip()):
            raise Unauthorized(f"{TIMESTAMP_HEADER} must be Unix seconds", "bad_timestamp")
        ts = int(timestamp)
        now = time.time() if now is None else now
        if abs(now - ts) > max_skew_s:
            raise Unauthorized(
                f"signature timestamp is {int(now - ts)} s from now; allowed ±{max_skew_s} s (replay protection)",
                "stale_signature",
            )
        self._given = signature.strip().encode("utf-8", "surrogateescape")  # a header may carry any byte
        self._mac = hmac.new(secret.encode(), timestamp.strip().encode() + b".", hashlib.sha256)

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def verify(self) -> None:
        if not hmac.compare_digest(("sha256=" + self._mac.hexdigest()).encode(), self._given):
            raise Unauthorized("signature does not match the body", "bad_signature")


class ReplayInProgress(Conflict):
    code = "replay_in_progress"


def delivery_key(signature: str) -> str:
    """What identifies a delivery: its signature (unique per secret, timestamp and body)."""
    return hashlib.sha256(signature.strip().encode("utf-8", "surrogateescape")).hexdigest()


def claim_delivery(rt: Runtime, key: str, window_s: int) -> tuple[int, dict[str, Any]] | None:
    """None when this signed request is new (it is now claimed); for a replay inside the window, the
    status and body of the first reply. A replay of a request still being processed is a 409."""
    with rt.session() as s:  # deliveries older than the window can no longer be replayed: forget them
        s.execute(delete(WebhookDelivery).where(
            WebhookDelivery.received_at < utcnow() - timedelta(seconds=2 * window_s)))
    try:
        with rt.session() as s:
            s.add(WebhookDelivery(signature_sha256=key, received_at=utcnow()))
        return None
    except IntegrityError:
        pass
    with rt.session() as s:
        row = s.scalar(select(WebhookDelivery).where(WebhookDelivery.signature_sha256 == key))
        if row is None or row.status_code is None or row.response is None:
            raise ReplayInProgress("this signed request is already being processed; its reply comes with the first")
        return row.status_code, row.response


def record_reply(rt: Runtime, key: str, status_code: int, body: dict[str, Any]) -> None:
    """Keep the reply a replay will get."""
    with rt.session() as s:
        s.execute(update(WebhookDelivery).where(WebhookDelivery.signature_sha256 == key)
                  .values(status_code=status_code, response=body))


def release_delivery(rt: Runtime, key: str) -> None:
    """Forget a claim whose processing hit an outage, so that the repository's retry is processed anew."""
    with rt.session() as s:
        s.execute(delete(WebhookDelivery).where(WebhookDelivery.signature_sha256 == key))


def decode_base64_into(data: str, writer: BlobWriter, chunk_chars: int = 4 * 1024 * 1024) -> None:
    """Decode standard base64 (whitespace allowed) into the writer in chunks."""
    if not isinstance(data, str):
        raise BadInput("content_base64 must be a string", "bad_base64")
    data = "".join(data.split())
    if len(data) % 4:
        raise BadInput("content_base64 is not valid base64 (length is not a multiple of 4)", "bad_base64")
    try:
        for i in range(0, len(data), chunk_chars):
            writer.write(base64.b64decode(data[i:i + chunk_chars], validate=True))
    except binascii.Error as exc:
        raise BadInput(f"content_base64 is not valid base64: {exc}", "bad_base64") from None


def check_url_allowed(url: str, allowlist: list[str]) -> None:
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise BadInput("url must be an absolute http(s) URL without spaces or control characters", "bad_url")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for 'host:1:2', a non-numeric or out-of-range port
    except ValueError:
        raise BadInput("url is not a valid http(s) URL (host or port cannot be parsed)", "bad_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("url must be an absolute http(s) URL", "bad_url")
    host = parts.hostname.lower()
    hostport = f"{host}:{port}" if port else host
    allowed = {h.lower() for h in allowlist}
    if host not in allowed and hostport not in allowed:
        raise BadInput(f"host {host!r} is not on the webhook URL allow-list", "url_not_allowed")


def fetch_into(url: str, writer: BlobWriter, allowlist: list[str], timeout_s: float) -> None:
    """Stream the URL's body into the writer (no redirects: a redirect could leave the allow-list).

    ``timeout_s`` bounds the whole download, not each read: a server that trickles a byte every few
    seconds is cut off at the deadline (give or take one read, at most 5 s)."""
    check_url_allowed(url, allowlist)
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.stream("GET", url, timeout=min(timeout_s, 5.0), follow_redirects=False) as resp:
            if resp.status_code != 200:
                raise BadInput(f"fetching the url returned HTTP {resp.status_code}", "fetch_failed")
            for chunk in resp.iter_bytes():  # as it arrives: a fixed chunk size would wait for a trickle to fill it
                writer.write(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the download took longer than the fetch timeout")
    except BlobTooLarge:
        raise
    except httpx.HTTPError as exc:
        # One message for every transport failure: refused, reset, timed out and unreachable must look alike,
        # or the webhook maps which ports answer. The detail goes to the log.
        log.info("webhook fetch of %s failed: %s: %s", url, type(exc).__name__, exc)
        raise BadInput("the file could not be fetched from the url", "fetch_failed") from None
