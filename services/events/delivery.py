"""Sending one delivery: a Standard Webhooks request (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``; signed with the ``standardwebhooks`` package) to an allow-listed address.

The receiver's URL goes through the same checks as the ingest webhook's fetches
(:func:`services.access.webhook.check_url_allowed`, against ``SEMTAG_EVENTS_URL_ALLOWLIST``): scheme, host and
port must match an entry, the host is resolved once and the request connects to that address (no DNS
rebinding), an address on a private, loopback or link-local network needs an entry that names or pins it,
redirects are not followed, proxies are not used, and the timeout bounds the whole exchange.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

import anyio
import httpx
from standardwebhooks import Webhook

from services.access.webhook import check_url_allowed
from services.errors import BadInput

log = logging.getLogger(__name__)

USER_AGENT = f"semtag/{metadata.version('semtag')} (Standard Webhooks)"


@dataclass(frozen=True)
class Outgoing:
    """What a dispatcher claimed: a delivery, its attempt number, and where and how to send it."""

    delivery_id: int
    attempt: int
    subscription_id: int
    event_id: str
    url: str
    secret: str
    body: str


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    attempt: int
    ok: bool
    status_code: int | None = None
    error: str | None = None


def signed_headers(secret: str, event_id: str, body: str, when: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` (the signature covers ``id.timestamp.body``)."""
    when = when or datetime.now(UTC)
    signature = Webhook(secret).sign(event_id, when, body)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature}


async def send(item: Outgoing, allowlist: list[str], timeout_s: float) -> Outcome:
    """POST one delivery; any 2xx is success, anything else (another status, a refusal, a timeout) a failure
    to retry. The body is the same on every attempt; the timestamp and signature are made anew."""
    try:
        target = await anyio.to_thread.run_sync(check_url_allowed, item.url, allowlist,
                                                "SEMTAG_EVENTS_URL_ALLOWLIST")
    except BadInput as exc:
        return Outcome(item.delivery_id, item.attempt, False, error=f"{exc.code}: {exc.message}")
    headers = {"Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT,
               **signed_headers(item.secret, item.event_id, item.body)}
    try:
        with anyio.fail_after(timeout_s):  # the whole exchange: connect, send, status and body
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
                resp = await client.post(target.url, content=item.body.encode(), headers=headers,
                                         extensions={"sni_hostname": target.host})
    except TimeoutError:
        return Outcome(item.delivery_id, item.attempt, False, error=f"no answer within {timeout_s:g} s")
    except (httpx.HTTPError, OSError) as exc:
        return Outcome(item.delivery_id, item.attempt, False, error=f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= resp.status_code < 300:
        return Outcome(item.delivery_id, item.attempt, True, resp.status_code)
    return Outcome(item.delivery_id, item.attempt, False, resp.status_code, f"HTTP {resp.status_code}")


def send_all(items: list[Outgoing], allowlist: list[str], timeout_s: float, concurrency: int) -> list[Outcome]:
    """Send the deliveries, ``concurrency`` at a time (a slow receiver holds one slot, not the round)."""
    outcomes: list[Outcome] = []

    async def _run() -> None:
        limiter = anyio.CapacityLimiter(max(1, concurrency))

        async def one(item: Outgoing) -> None:
            async with limiter:
                try:
                    outcomes.append(await send(item, allowlist, timeout_s))
                except Exception as exc:  # one delivery's bug must not lose the others' outcomes
                    log.exception("event delivery %s crashed", item.delivery_id)
                    outcomes.append(Outcome(item.delivery_id, item.attempt, False,
                                            error=f"internal error: {type(exc).__name__}"))

        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)

    if items:
        anyio.run(_run)
    return outcomes
