"""Subscriptions, the dispatcher and the delivery records.

The dispatcher (:func:`dispatch`; a Celery task on the ``maintenance`` queue, run by the beat every
``SEMTAG_EVENTS_DISPATCH_EVERY_S`` and nudged after commits that wrote events; in embedded mode a thread of
the API) works in three steps, each its own transaction, so a crash anywhere loses nothing:

1. **fan out**: outbox rows not yet dispatched become one delivery per active subscription that takes their
   type (and existed when the event happened). The body is fixed here, once: every attempt sends the same
   bytes under the same ``webhook-id`` (the event id). ``image.processed`` carries the image's metadata in
   the subscription's format, rendered now.
2. **claim** the deliveries that are due (or whose claim lapsed: a dispatcher died while sending): status
   ``sending``, a lease, the attempt counted.
3. **send** them concurrently and **record** each outcome, fenced by the attempt number (a dispatcher whose
   lease lapsed cannot overwrite a newer attempt). A failure is retried with exponential backoff and jitter;
   once a failure comes after ``SEMTAG_EVENTS_RETRY_WINDOW_S`` (24 h) from the first attempt, the delivery is
   dead-lettered. The last retry is placed at the window's end, so every delivery is tried for the whole
   window. Receivers deduplicate by ``webhook-id``: a delivery may arrive twice (a receiver that answered
   after our timeout, a dispatcher that died after sending), never under another id.

``now`` may be given (tests drive retries with it); the signature's timestamp is always the real clock's,
as receivers check it against theirs.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from services.access.webhook import check_url_allowed
from services.errors import BadInput, NotFound
from services.events.delivery import Outcome, Outgoing, send_all
from services.events.errors import BadSecret, DeliveryInFlight, DeliveryNotFound, SubscriptionNotFound
from services.events.schemas import (
    DeliveryCounts,
    DeliveryDetail,
    DeliveryRead,
    EventEnvelope,
    EventType,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionRead,
    SubscriptionUpdate,
)
from services.runtime import Runtime
from services.tables import DeliveryStatus, EventDelivery, EventOutbox, EventSubscription, utcnow
from services.types import iso_utc

log = logging.getLogger(__name__)

MAX_PAGE = 500
FAN_OUT_BATCH = 200
SECRET_PREFIX = "whsec_"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# ---- subscriptions ----------------------------------------------------------------------------

def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _checked_secret(secret: str) -> str:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise BadSecret("secret must be whsec_ followed by the base64 of 24–64 random bytes; leave it out to have "
                        "one made")
    return secret


def _checked_url(rt: Runtime, url: str) -> str:
    """The URL, once it passes the outbound allow-list and its host resolves to an address it allows."""
    try:
        check_url_allowed(url, rt.settings.events_url_allowlist, "SEMTAG_EVENTS_URL_ALLOWLIST")
    except BadInput as exc:
        if exc.code == "fetch_failed":
            raise BadInput("the url's host cannot be resolved", "url_unresolvable") from None
        raise
    return url


def _counts(session: Session, ids: list[int]) -> dict[int, DeliveryCounts]:
    out = {i: DeliveryCounts() for i in ids}
    if ids:
        rows = session.execute(select(EventDelivery.subscription_id, EventDelivery.status, func.count())
                               .where(EventDelivery.subscription_id.in_(ids))
                               .group_by(EventDelivery.subscription_id, EventDelivery.status))
        for sid, status, n in rows:
            setattr(out[sid], status, int(n))
    return out


def _read(session: Session, sub: EventSubscription) -> SubscriptionRead:
    read = SubscriptionRead.model_validate(sub)
    read.deliveries = _counts(session, [sub.id])[sub.id]
    return read


def create_subscription(rt: Runtime, req: SubscriptionCreate, created_by: str | None) -> SubscriptionCreated:
    """A new subscription; the reply is the only place its secret is ever shown."""
    url = _checked_url(rt, req.url)
    secret = _checked_secret(req.secret.get_secret_value()) if req.secret is not None else new_secret()
    with rt.session() as s:
        sub = EventSubscription(url=url, secret=secret, event_types=[t.value for t in req.event_types],
                                metadata_format=req.metadata_format.value, description=req.description,
                                active=True, created_by=created_by, created_at=utcnow(), updated_at=utcnow())
        s.add(sub)
        s.flush()
        read = _read(s, sub)
    log.info("event subscription %s created by %s for %s", sub.id, created_by, ", ".join(sub.event_types))
    return SubscriptionCreated(**read.model_dump(), secret=secret)


def _subscription(session: Session, sub_id: int, lock: bool = False) -> EventSubscription:
    sub = session.get(EventSubscription, sub_id, with_for_update=lock)
    if sub is None:
        raise SubscriptionNotFound(f"subscription {sub_id} not found")
    return sub


def get_subscription(session: Session, sub_id: int) -> SubscriptionRead:
    return _read(session, _subscription(session, sub_id))


def list_subscriptions(session: Session) -> list[SubscriptionRead]:
    subs = list(session.scalars(select(EventSubscription).order_by(EventSubscription.id)))
    counts = _counts(session, [s.id for s in subs])
    out = []
    for sub in subs:
        read = SubscriptionRead.model_validate(sub)
        read.deliveries = counts[sub.id]
        out.append(read)
    return out


def update_subscription(rt: Runtime, sub_id: int, req: SubscriptionUpdate) -> SubscriptionRead | SubscriptionCreated:
    """Change a subscription; with ``rotate_secret`` the reply shows the new secret (once). Deliveries already
    made keep their body; the next attempts are signed with the new secret."""
    url = _checked_url(rt, req.url) if req.url is not None else None
    with rt.session() as s:
        sub = _subscription(s, sub_id, lock=True)
        if url is not None:
            sub.url = url
        if req.event_types is not None:
            sub.event_types = list(dict.fromkeys(t.value for t in req.event_types))
        if req.metadata_format is not None:
            sub.metadata_format = req.metadata_format.value
        if req.description is not None:
            sub.description = req.description
        if req.active is not None:
            sub.active = req.active
        secret = new_secret() if req.rotate_secret else None
        if secret is not None:
            sub.secret = secret
        sub.updated_at = utcnow()
        s.flush()
        read = _read(s, sub)
    return SubscriptionCreated(**read.model_dump(), secret=secret) if secret is not None else read


def delete_subscription(rt: Runtime, sub_id: int) -> SubscriptionRead:
    """Remove a subscription and its deliveries (pending ones are never sent)."""
    with rt.session() as s:
        sub = _subscription(s, sub_id, lock=True)
        read = _read(s, sub)
        s.execute(delete(EventDelivery).where(EventDelivery.subscription_id == sub_id))
        s.delete(sub)
    return read


# ---- deliveries as admins see them -------------------------------------------------------------

def _delivery_read(d: EventDelivery, ev: EventOutbox, window_s: int, detail: bool = False) -> DeliveryRead:
    fields: dict[str, Any] = dict(
        id=d.id, event_id=ev.event_id, event_type=ev.type, subject=ev.subject, subscription_id=d.subscription_id,
        status=d.status, attempts=d.attempts, created_at=d.created_at, last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code, last_error=d.last_error,
        next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.pending.value else None,
        retry_until=_aware(d.retry_from) + timedelta(seconds=window_s), delivered_at=d.delivered_at)
    if detail:
        return DeliveryDetail(**fields, body=json.loads(d.body))
    return DeliveryRead(**fields)


def list_deliveries(rt: Runtime, session: Session, status: str | None = None, subscription_id: int | None = None,
                    event_type: str | None = None, limit: int = 50,
                    cursor: int | None = None) -> tuple[list[DeliveryRead], int | None]:
    """Deliveries, newest first (``status="dead"``: the dead-letter list)."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadInput(f"limit must be between 1 and {MAX_PAGE}", "bad_limit")
    q = select(EventDelivery, EventOutbox).join(EventOutbox, EventOutbox.id == EventDelivery.event_id)
    if status is not None:
        q = q.where(EventDelivery.status == DeliveryStatus(status).value)
    if subscription_id is not None:
        q = q.where(EventDelivery.subscription_id == subscription_id)
    if event_type is not None:
        q = q.where(EventOutbox.type == EventType(event_type).value)
    if cursor is not None:
        q = q.where(EventDelivery.id < cursor)
    rows = session.execute(q.order_by(EventDelivery.id.desc()).limit(limit + 1)).all()
    window = rt.settings.events_retry_window_s
    items = [_delivery_read(d, ev, window) for d, ev in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit and items else None)


def get_delivery(rt: Runtime, session: Session, delivery_id: int) -> DeliveryDetail:
    row = session.execute(select(EventDelivery, EventOutbox).join(EventOutbox, EventOutbox.id == EventDelivery.event_id)
                          .where(EventDelivery.id == delivery_id)).first()
    if row is None:
        raise DeliveryNotFound(f"delivery {delivery_id} not found")
    out = _delivery_read(row[0], row[1], rt.settings.events_retry_window_s, detail=True)
    assert isinstance(out, DeliveryDetail)
    return out


def _requeue(d: EventDelivery, now: datetime) -> None:
    d.status = DeliveryStatus.pending.value
    d.next_attempt_at = now
    d.retry_from = now  # a fresh retry window
    d.lease_until = None


def redeliver(rt: Runtime, delivery_id: int, now: datetime | None = None) -> DeliveryDetail:
    """Send a delivery again soon, with a fresh retry window, under its own webhook-id (a dead letter, or a
    delivered one the receiver lost). 409 while a dispatcher is sending it."""
    now = now or utcnow()
    with rt.session() as s:
        d = s.get(EventDelivery, delivery_id, with_for_update=True)
        if d is None:
            raise DeliveryNotFound(f"delivery {delivery_id} not found")
        if d.status == DeliveryStatus.sending.value and d.lease_until is not None and _aware(d.lease_until) > now:
            raise DeliveryInFlight(f"delivery {delivery_id} is being sent right now; look again in a moment")
        _requeue(d, now)
    rt.nudge_events()
    with rt.session() as s:
        return get_delivery(rt, s, delivery_id)


def redeliver_dead(rt: Runtime, subscription_id: int | None = None, now: datetime | None = None) -> int:
    """Put every dead letter (of one subscription, or all) back in the queue; how many."""
    now = now or utcnow()
    with rt.session() as s:
        if subscription_id is not None:
            _subscription(s, subscription_id)
        cond = EventDelivery.status == DeliveryStatus.dead.value
        if subscription_id is not None:
            cond = cond & (EventDelivery.subscription_id == subscription_id)
        n = s.execute(update(EventDelivery).where(cond).values(
            status=DeliveryStatus.pending.value, next_attempt_at=now, retry_from=now, lease_until=None)
            .execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    if n:
        rt.nudge_events()
    return int(n or 0)


# ---- the dispatcher ----------------------------------------------------------------------------

def envelope(ev: EventOutbox, data: dict[str, Any]) -> str:
    """The delivery body: compact JSON, ASCII only (the bytes signed are the bytes sent)."""
    return EventEnvelope(id=ev.event_id, type=EventType(ev.type), timestamp=iso_utc(ev.created_at) or "",
                         data=data).model_dump_json()


def _data_for(session: Session, ev: EventOutbox, sub: EventSubscription, cache: dict[str, Any]) -> dict[str, Any]:
    if ev.type != EventType.image_processed.value:
        return ev.payload
    from services.export.formats import image_document

    fmt = sub.metadata_format
    if fmt not in cache:
        try:
            cache[fmt] = image_document(session, int(ev.payload["image_id"]), fmt)
        except NotFound:  # taken down before the event was dispatched: its record.deleted follows
            cache[fmt] = None
    return {**ev.payload, "metadata_format": fmt, "metadata": cache[fmt]}


def fan_out(rt: Runtime, now: datetime, limit: int = FAN_OUT_BATCH) -> int:
    """Turn up to ``limit`` undispatched outbox rows into deliveries; how many events were dispatched."""
    with rt.session() as s:
        q = select(EventOutbox).where(EventOutbox.dispatched_at.is_(None)).order_by(EventOutbox.id).limit(limit)
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)  # two dispatchers take different rows
        events = list(s.scalars(q))
        if not events:
            return 0
        subs = list(s.scalars(select(EventSubscription).where(EventSubscription.active.is_(True))
                              .order_by(EventSubscription.id)))
        made = 0
        for ev in events:
            cache: dict[str, Any] = {}
            for sub in subs:
                if ev.type not in (sub.event_types or []) or _aware(sub.created_at) > _aware(ev.created_at):
                    continue
                s.add(EventDelivery(event_id=ev.id, subscription_id=sub.id, body=envelope(ev, _data_for(s, ev, sub,
                                                                                                         cache)),
                                    status=DeliveryStatus.pending.value, attempts=0, next_attempt_at=now,
                                    retry_from=now, created_at=now))
                made += 1
            ev.dispatched_at = now
    if made:
        log.info("events: %d event(s) fanned out into %d deliveries", len(events), made)
    return len(events)


def claim(rt: Runtime, now: datetime, limit: int) -> list[Outgoing]:
    """Claim up to ``limit`` due deliveries (and those whose sender's lease lapsed) for one round."""
    s_ = rt.settings
    lease = timedelta(seconds=s_.events_delivery_timeout_s + 60)
    due = and_(or_(and_(EventDelivery.status == DeliveryStatus.pending.value, EventDelivery.next_attempt_at <= now),
                   and_(EventDelivery.status == DeliveryStatus.sending.value, EventDelivery.lease_until < now)),
               EventDelivery.subscription_id.in_(select(EventSubscription.id)  # a paused one's wait
                                                 .where(EventSubscription.active.is_(True))))
    out: list[Outgoing] = []
    with rt.session() as s:
        q = select(EventDelivery.id).where(due).order_by(EventDelivery.next_attempt_at, EventDelivery.id).limit(limit)
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        ids = list(s.scalars(q))
        for did in ids:
            # conditional: on SQLite two dispatchers may have read the same ids; only one update matches
            res = s.execute(update(EventDelivery).where(EventDelivery.id == did, due).values(
                status=DeliveryStatus.sending.value, attempts=EventDelivery.attempts + 1, lease_until=now + lease,
                last_attempt_at=now).execution_options(synchronize_session=False))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                continue
            d, sub, ev = s.execute(
                select(EventDelivery, EventSubscription, EventOutbox)
                .join(EventSubscription, EventSubscription.id == EventDelivery.subscription_id)
                .join(EventOutbox, EventOutbox.id == EventDelivery.event_id).where(EventDelivery.id == did)).one()
            out.append(Outgoing(d.id, d.attempts, sub.id, ev.event_id, sub.url, sub.secret, d.body))
    return out


def retry_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``base · 2^(attempt−1)`` capped at ``max_s``, then a random point in
    its upper half (spreads retries of many deliveries that failed together)."""
    d = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return d * (0.5 + 0.5 * rng.random())


def record(rt: Runtime, outcome: Outcome, now: datetime, rng: random.Random) -> str | None:
    """Store an attempt's outcome; the delivery's new status, or None when a newer attempt owns it."""
    s_ = rt.settings
    with rt.session() as s:
        d = s.get(EventDelivery, outcome.delivery_id, with_for_update=True)
        if d is None or d.attempts != outcome.attempt or d.status != DeliveryStatus.sending.value:
            return None  # the subscription was deleted, or our lease lapsed and another attempt took over
        d.lease_until = None
        d.last_status_code = outcome.status_code
        if outcome.ok:
            d.status, d.delivered_at, d.next_attempt_at, d.last_error = (DeliveryStatus.delivered.value, now, None,
                                                                         None)
            return d.status
        d.last_error = (outcome.error or "failed")[:1000]
        deadline = _aware(d.retry_from) + timedelta(seconds=s_.events_retry_window_s)
        if now >= deadline:
            d.status, d.next_attempt_at = DeliveryStatus.dead.value, None
            log.warning("event delivery %s to subscription %s dead-lettered after %d attempts: %s", d.id,
                        d.subscription_id, d.attempts, d.last_error)
        else:
            delay = retry_delay(d.attempts, s_.events_retry_base_s, s_.events_retry_max_delay_s, rng)
            d.status = DeliveryStatus.pending.value
            d.next_attempt_at = min(now + timedelta(seconds=delay), deadline)
        return d.status


def prune(rt: Runtime, now: datetime) -> int:
    """Forget events older than the retention whose every delivery was delivered (dead letters stay)."""
    cutoff = now - timedelta(days=rt.settings.events_retention_days)
    open_delivery = exists().where(EventDelivery.event_id == EventOutbox.id,
                                   EventDelivery.status != DeliveryStatus.delivered.value)
    with rt.session() as s:
        ids = list(s.scalars(select(EventOutbox.id).where(EventOutbox.dispatched_at < cutoff, ~open_delivery)
                             .limit(5000)))
        if ids:
            s.execute(delete(EventDelivery).where(EventDelivery.event_id.in_(ids)))
            s.execute(delete(EventOutbox).where(EventOutbox.id.in_(ids)))
    return len(ids)


@dataclass
class DispatchReport:
    dispatched: int = 0           # outbox rows fanned out
    sent: int = 0                 # attempts made
    outcomes: dict[str, int] = field(default_factory=dict)  # delivered / pending (to retry) / dead


def dispatch(rt: Runtime, now: datetime | None = None, *, rng: random.Random | None = None, max_rounds: int = 5,
             batch: int = 100, clock: Callable[[], datetime] | None = None) -> DispatchReport:
    """Fan the outbox out, then send what is due, in up to ``max_rounds`` rounds of ``batch`` deliveries.

    ``now`` fixes the dispatcher's clock (for scheduling, not for signatures); ``rng`` the jitter.
    """
    tick: Callable[[], datetime] = clock or ((lambda: now) if now is not None else utcnow)
    rng = rng or random.Random()
    report = DispatchReport()
    for _ in range(25):  # at most 5,000 events a call; the next call goes on
        n = fan_out(rt, tick())
        report.dispatched += n
        if n < FAN_OUT_BATCH:
            break
    s_ = rt.settings
    for _ in range(max_rounds):
        items = claim(rt, tick(), batch)
        if not items:
            break
        for outcome in send_all(items, s_.events_url_allowlist, s_.events_delivery_timeout_s, s_.events_concurrency):
            report.sent += 1
            status = record(rt, outcome, tick(), rng)
            if status is not None:
                report.outcomes[status] = report.outcomes.get(status, 0) + 1
            if not outcome.ok:
                log.info("event delivery %s (attempt %d) to subscription %s failed: %s", outcome.delivery_id,
                         outcome.attempt, next((i.subscription_id for i in items
                                                if i.delivery_id == outcome.delivery_id), "?"), outcome.error)
    prune(rt, tick())
    return report
