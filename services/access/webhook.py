"""The repository's ingest webhook: HMAC-SHA256 signatures (semtag's own X-Semtag-* headers, or Standard
Webhooks' webhook-id/-timestamp/-signature), base64 bodies, allow-listed URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from services.errors import BadInput, Unauthorized, Unavailable
from services.runtime import Runtime
from services.storage import BlobTooLarge, BlobWriter
from services.tables import WebhookDelivery, utcnow

log = logging.getLogger(__name__)


class WebhookDisabled(Unavailable):
    code = "webhook_disabled"


SIGNATURE_HEADER = "X-Semtag-Signature"
TIMESTAMP_HEADER = "X-Semtag-Timestamp"
# Standard Webhooks (https://www.standardwebhooks.com): accepted alongside semtag's own headers
STD_ID_HEADER = "webhook-id"
STD_TIMESTAMP_HEADER = "webhook-timestamp"
STD_SIGNATURE_HEADER = "webhook-signature"


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
            raise Unauthorized(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header (or the Standard Webhooks "
                               f"headers {STD_ID_HEADER}, {STD_TIMESTAMP_HEADER}, {STD_SIGNATURE_HEADER})",
                               "missing_signature")
        _check_timestamp(timestamp, TIMESTAMP_HEADER, max_skew_s, now)
        self._given = signature.strip().encode("utf-8", "surrogateescape")  # a header may carry any byte
        self._mac = hmac.new(secret.encode(), timestamp.strip().encode() + b".", hashlib.sha256)

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def verify(self) -> None:
        if not hmac.compare_digest(("sha256=" + self._mac.hexdigest()).encode(), self._given):
            raise Unauthorized("signature does not match the body", "bad_signature")


def _check_timestamp(timestamp: str, header: str, max_skew_s: int, now: float | None) -> None:
    if not re.fullmatch(r"\d{1,12}", timestamp.strip()):
        raise Unauthorized(f"{header} must be Unix seconds", "bad_timestamp")
    ts = int(timestamp.strip())
    now = time.time() if now is None else now
    if abs(now - ts) > max_skew_s:
        raise Unauthorized(
            f"signature timestamp is {int(now - ts)} s from now; allowed ±{max_skew_s} s (replay protection)",
            "stale_signature",
        )


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks signature: a ``whsec_…`` secret is base64 (as the standardwebhooks
    libraries read it); any other secret is used as its UTF-8 bytes, the same key as the X-Semtag scheme."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_") + "==")
    return secret.encode()


class StandardSignedBody(SignedBody):
    """A Standard Webhooks request, checked like :class:`SignedBody`: the headers before the body is read,
    then ``v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>`` as the body streams in (any of the
    space-separated signatures may match). Hand-written rather than the ``standardwebhooks`` package's
    ``verify``, which needs the whole body in memory: a webhook body may be hundreds of megabytes."""

    def __init__(self, secret: str | None, msg_id: str | None, timestamp: str | None, signature: str | None,
                 max_skew_s: int, now: float | None = None) -> None:
        if not secret:
            raise WebhookDisabled("the ingest webhook is disabled: SEMTAG_WEBHOOK_SECRET is not set")
        if not msg_id or not timestamp or not signature:
            raise Unauthorized(f"Standard Webhooks requests carry {STD_ID_HEADER}, {STD_TIMESTAMP_HEADER} and "
                               f"{STD_SIGNATURE_HEADER}", "missing_signature")
        if len(msg_id) > 255 or not msg_id.isascii() or not msg_id.isprintable() or " " in msg_id:
            raise Unauthorized(f"{STD_ID_HEADER} must be at most 255 printable ASCII characters", "bad_webhook_id")
        _check_timestamp(timestamp, STD_TIMESTAMP_HEADER, max_skew_s, now)
        self._candidates = []
        for part in signature.split():
            version, _, value = part.partition(",")
            if version == "v1":
                try:
                    self._candidates.append(base64.b64decode(value, validate=True))
                except (binascii.Error, ValueError):
                    continue
        if not self._candidates:
            raise Unauthorized(f"{STD_SIGNATURE_HEADER} has no v1 signature", "bad_signature")
        self._mac = hmac.new(standard_key(secret), f"{msg_id}.{timestamp.strip()}.".encode(), hashlib.sha256)

    def verify(self) -> None:
        digest = self._mac.digest()
        if not any(hmac.compare_digest(digest, c) for c in self._candidates):
            raise Unauthorized("signature does not match the body", "bad_signature")


def check_request(secret: str | None, headers: Mapping[str, str], max_skew_s: int,
                  now: float | None = None) -> tuple[SignedBody, str]:
    """The body check for a webhook request and the key its replays are known by: Standard Webhooks when it
    carries any of their headers (a replay is the same ``webhook-id``, however often re-signed), semtag's
    X-Semtag-* otherwise (a replay is the same signature)."""
    if any(headers.get(h) is not None for h in (STD_ID_HEADER, STD_TIMESTAMP_HEADER, STD_SIGNATURE_HEADER)):
        msg_id = headers.get(STD_ID_HEADER)
        check: SignedBody = StandardSignedBody(secret, msg_id, headers.get(STD_TIMESTAMP_HEADER),
                                               headers.get(STD_SIGNATURE_HEADER), max_skew_s, now)
        return check, hashlib.sha256(f"{STD_ID_HEADER}:{msg_id}".encode()).hexdigest()
    signature = headers.get(SIGNATURE_HEADER)
    check = SignedBody(secret, headers.get(TIMESTAMP_HEADER), signature, max_skew_s, now)
    return check, delivery_key(signature or "")


class ReplayInProgress(Unavailable):
    """The first delivery of this signed request is still being processed: retry shortly."""

    code = "replay_in_progress"


def delivery_key(signature: str) -> str:
    """What identifies a delivery: its signature (unique per secret, timestamp and body)."""
    return hashlib.sha256(signature.strip().encode("utf-8", "surrogateescape")).hexdigest()


def claim_delivery(rt: Runtime, key: str, window_s: int, stale_after_s: float) -> tuple[int, dict[str, Any]] | None:
    """None when this signed request is new (it is now claimed); for a replay inside the window, the
    status and body of the first reply. A replay of a request still being processed is a 503 with
    Retry-After; a claim left unfinished for ``stale_after_s`` (its process died) is taken over."""
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
        if row is not None and row.status_code is not None and row.response is not None:
            return row.status_code, row.response
        taken = s.execute(update(WebhookDelivery).where(
            WebhookDelivery.signature_sha256 == key, WebhookDelivery.status_code.is_(None),
            WebhookDelivery.received_at < utcnow() - timedelta(seconds=stale_after_s),
        ).values(received_at=utcnow()).execution_options(synchronize_session=False))
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return None
    raise ReplayInProgress("this signed request is already being processed; retry shortly",
                           headers={"Retry-After": "5"})


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


DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class AllowEntry:
    """One SEMTAG_WEBHOOK_URL_ALLOWLIST entry: ``[scheme://]host[:port|:*][=address]``. Without a scheme
    both http and https match; without a port only the scheme's default port; ``:*`` any port.
    ``=address`` pins the host to that address: it is connected to without a DNS lookup, and may be
    private (a file server on the facility's network)."""

    scheme: str | None
    host: str
    port: int | None  # None: the default port; -1: any
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        text, _, pin = text.partition("=")
        address = str(ipaddress.ip_address(pin.strip().strip("[]"))) if pin else None
        raw = text.strip().lower().rstrip("/")
        any_port = raw.endswith(":*")
        parts = urlsplit((raw[:-2] if any_port else raw) if "://" in raw else "//" + (raw[:-2] if any_port else raw))
        if not parts.hostname or (parts.scheme and parts.scheme not in DEFAULT_PORTS):
            raise ValueError(f"not an allow-list entry: {text!r}")
        return cls(parts.scheme or None, parts.hostname, -1 if any_port else parts.port, address)

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme not in (None, scheme) or self.host != host:
            return False
        return self.port == -1 or port == (self.port if self.port is not None else DEFAULT_PORTS[scheme])

    @property
    def names_an_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
            return True
        except ValueError:
            return False


@dataclass(frozen=True)
class FetchTarget:
    """Where to connect (the address that was checked, never resolved again) and what to say."""

    url: str          # the URL with the checked address in place of the host name
    host: str         # the host name: TLS server name and certificate check
    host_header: str  # the Host header: the name, bracketed if IPv6, with the port unless the default
    address: str


def _is_internal(address: str) -> bool:
    """Anything but a global unicast address: private, loopback, link-local, shared (100.64/10), reserved,
    multicast; IPv6 addresses that carry an IPv4 one (mapped, 6to4, NAT64) are judged by it."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in ipaddress.ip_network("64:ff9b::/96") else None)
        if embedded is not None:
            ip = embedded
    return not ip.is_global or ip.is_multicast


def check_url_allowed(url: str, allowlist: list[str], setting: str = "SEMTAG_WEBHOOK_URL_ALLOWLIST") -> FetchTarget:
    """The address to fetch ``url`` from, once its scheme, host and port match an allow-list entry and its
    host resolves to an address that may be reached: a private, loopback or link-local address only when
    the matching entry names that address itself (e.g. ``10.1.2.3:8443``). ``setting`` names the allow-list
    in messages (the ingest webhook's fetches, or the outbound events')."""
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise BadInput("url must be an absolute http(s) URL without spaces or control characters", "bad_url")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for 'host:1:2', a non-numeric or out-of-range port
    except ValueError:
        raise BadInput("url is not a valid http(s) URL (host or port cannot be parsed)", "bad_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise BadInput("url must be an absolute http(s) URL without credentials", "bad_url")
    scheme, host = parts.scheme, parts.hostname.lower()
    port = port or DEFAULT_PORTS[scheme]
    entries = []
    for text in allowlist:
        try:
            entries.append(AllowEntry.parse(text))
        except ValueError:
            log.warning("ignoring malformed %s entry %r", setting, text)
    entry = next((e for e in entries if e.matches(scheme, host, port)), None)
    if entry is None:
        raise BadInput(f"{scheme}://{host}:{port} is not on the allow-list ({setting})", "url_not_allowed")
    if entry.address is not None:
        address = entry.address
    else:
        try:
            address = str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
        except (OSError, UnicodeError):
            raise BadInput("the file could not be fetched from the url", "fetch_failed") from None
    if entry.address is None and _is_internal(address) and not (
            entry.names_an_address and ipaddress.ip_address(entry.host) == ipaddress.ip_address(address)):
        raise BadInput(f"{host} resolves to an internal address; allow it explicitly with an entry such as "
                       f"'{host}:{port}=ADDRESS'", "url_not_allowed")
    netloc = f"[{address}]" if ":" in address else address
    target = urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
    named = f"[{host}]" if ":" in host else host
    host_header = named if port == DEFAULT_PORTS[scheme] else f"{named}:{port}"
    return FetchTarget(target, host, host_header, address)


def fetch_into(url: str, writer: BlobWriter, allowlist: list[str], timeout_s: float,
               bearer_token: str | None = None) -> None:
    """Stream the URL's body into the writer (no redirects: a redirect could leave the allow-list).

    ``timeout_s`` bounds the whole exchange, headers included: a host that trickles bytes is cut off
    at the deadline. The fetch connects directly (proxy variables are not used: the connection goes to
    the address that was checked). ``bearer_token`` (a restricted file) is sent to that host only, in this
    one request's ``Authorization`` header; it is not kept, and no message or log line carries it."""
    target = check_url_allowed(url, allowlist)
    try:
        anyio.run(_download, target, writer, timeout_s, bearer_token)
    except BlobTooLarge:
        raise
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        # One message for every transport failure: refused, reset, timed out and unreachable must look alike,
        # or the webhook maps which ports answer. The detail goes to the log.
        log.info("webhook fetch of %s failed: %s: %s", url, type(exc).__name__, exc)
        raise BadInput("the file could not be fetched from the url", "fetch_failed") from None


async def _download(target: FetchTarget, writer: BlobWriter, timeout_s: float, bearer_token: str | None) -> None:
    headers = {"Host": target.host_header}
    if bearer_token is not None:
        headers["Authorization"] = f"Bearer {bearer_token}"
    with anyio.fail_after(timeout_s):  # the whole download, not each read
        # Connect to the address that was checked (no second DNS lookup to rebind); name the host for
        # HTTP (Host) and TLS (server name and certificate check).
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", target.url, headers=headers, extensions={"sni_hostname": target.host}) as resp:
            if resp.status_code != 200:
                raise BadInput(f"fetching the url returned HTTP {resp.status_code}", "fetch_failed")
            async for chunk in resp.aiter_bytes():
                writer.write(chunk)
