"""/v1/admin: outbound event subscriptions and their deliveries, the dead-letter list (admin role)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from api.dependencies import IdPath, IdQuery, Principal, RuntimeDep, SessionDep, require
from api.errors import AUTH_ERRORS, documented
from services.events import service
from services.events.schemas import (
    EVENT_DESCRIPTIONS,
    DeliveryDetail,
    DeliveryPage,
    DeliveryState,
    EventType,
    EventTypeList,
    EventTypeRead,
    RedeliverResult,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionRead,
    SubscriptionUpdate,
)

router = APIRouter(prefix="/v1/admin", tags=["events"])

Admin = Annotated[Principal, Depends(require("admin"))]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.get("/event-types", response_model=EventTypeList, responses=documented(*AUTH_ERRORS))
def event_types(_who: Admin) -> EventTypeList:
    """The event types a subscription may take, with what each reports."""
    return EventTypeList(items=[EventTypeRead(type=t, description=EVENT_DESCRIPTIONS[t]) for t in EventType])


@router.post("/subscriptions", status_code=201, response_model=SubscriptionCreated,
             responses=documented(*AUTH_ERRORS, 422))
async def create_subscription(req: SubscriptionCreate, rt: RuntimeDep, who: Admin) -> SubscriptionCreated:
    """Subscribe a receiver to event types. The url must match `SEMTAG_EVENTS_URL_ALLOWLIST`. The reply holds
    the signing secret (`whsec_…`, Standard Webhooks): it is shown this once."""
    return await run_in_threadpool(service.create_subscription, rt, req, who.label)


@router.get("/subscriptions", response_model=SubscriptionList, responses=documented(*AUTH_ERRORS))
def list_subscriptions(session: SessionDep, _who: Admin) -> SubscriptionList:
    """Every subscription with its deliveries counted by status (secrets are never shown)."""
    return SubscriptionList(items=service.list_subscriptions(session))


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionRead,
            responses=documented(*AUTH_ERRORS, 404))
def read_subscription(subscription_id: IdPath, session: SessionDep, _who: Admin) -> SubscriptionRead:
    return service.get_subscription(session, subscription_id)


@router.patch("/subscriptions/{subscription_id}", response_model=SubscriptionCreated | SubscriptionRead,
              responses=documented(*AUTH_ERRORS, 404, 422))
async def update_subscription(subscription_id: IdPath, req: SubscriptionUpdate, rt: RuntimeDep,
                              _who: Admin) -> SubscriptionRead:
    """Change the url, the event types, the metadata format, the description, or pause it (`active: false`).
    `rotate_secret: true` makes a new secret and shows it in this reply, once."""
    return await run_in_threadpool(service.update_subscription, rt, subscription_id, req)


@router.delete("/subscriptions/{subscription_id}", response_model=SubscriptionRead,
               responses=documented(*AUTH_ERRORS, 404))
def delete_subscription(subscription_id: IdPath, rt: RuntimeDep, _who: Admin) -> SubscriptionRead:
    """Remove the subscription and its deliveries (what is pending is not sent)."""
    return service.delete_subscription(rt, subscription_id)


@router.get("/event-deliveries", response_model=DeliveryPage, responses=documented(*AUTH_ERRORS, 422))
def list_deliveries(rt: RuntimeDep, session: SessionDep, _who: Admin, status: DeliveryState | None = None,
                    subscription_id: IdQuery = None, event_type: EventType | None = None, limit: Limit = 50,
                    cursor: IdQuery = None) -> DeliveryPage:
    """Deliveries, newest first: attempts, the receiver's last status or error, the next attempt."""
    items, nxt = service.list_deliveries(rt, session, status, subscription_id,
                                         event_type.value if event_type else None, limit, cursor)
    return DeliveryPage(items=items, next_cursor=nxt)


@router.get("/event-deliveries/{delivery_id}", response_model=DeliveryDetail, responses=documented(*AUTH_ERRORS, 404))
def read_delivery(delivery_id: IdPath, rt: RuntimeDep, session: SessionDep, _who: Admin) -> DeliveryDetail:
    """One delivery with the body it sends."""
    return service.get_delivery(rt, session, delivery_id)


@router.post("/event-deliveries/{delivery_id}/redeliver", response_model=DeliveryDetail,
             responses=documented(*AUTH_ERRORS, 404, 409))
def redeliver(delivery_id: IdPath, rt: RuntimeDep, _who: Admin) -> DeliveryDetail:
    """Send it again soon under the same webhook-id, with a fresh retry window (a dead letter, or a delivery
    the receiver lost); 409 while it is being sent."""
    return service.redeliver(rt, delivery_id)


@router.get("/dead-letters", response_model=DeliveryPage, responses=documented(*AUTH_ERRORS, 422))
def dead_letters(rt: RuntimeDep, session: SessionDep, _who: Admin, subscription_id: IdQuery = None,
                 event_type: EventType | None = None, limit: Limit = 50, cursor: IdQuery = None) -> DeliveryPage:
    """Deliveries that failed for the whole retry window (24 h), newest first."""
    items, nxt = service.list_deliveries(rt, session, "dead", subscription_id,
                                         event_type.value if event_type else None, limit, cursor)
    return DeliveryPage(items=items, next_cursor=nxt)


@router.post("/dead-letters/redeliver", response_model=RedeliverResult, responses=documented(*AUTH_ERRORS, 404, 422))
def redeliver_dead(rt: RuntimeDep, _who: Admin, subscription_id: IdQuery = None) -> RedeliverResult:
    """Put every dead letter (of one subscription with `?subscription_id=`) back in the queue."""
    return RedeliverResult(redelivered=service.redeliver_dead(rt, subscription_id))
