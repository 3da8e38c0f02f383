"""Writing events: :func:`emit` adds an ``event_outbox`` row in the caller's own transaction (the transactional
outbox), so an event is committed with the change it reports, or rolled back with it, and never lost between
the commit and its sending. One helper per event type builds its data from the rows at hand.

Where the events are written (each inside the transaction that makes the change):

============================  ============================================================================
``image.processed``           ``services.images.pipeline.refresh_status``, when an image becomes done
``image.labelled``            ``services.curation.service.set_label`` / ``remove_label``
``image.scale_corrected``     :func:`scale_corrected`, for the curators' scale readings (``PUT /v1/images/{id}/scale``)
``subcategories.updated``     ``services.clustering.subcategories.write_tree``
``model.activated``           ``services.classify.registry.activate``
``record.deleted``            ``services.records.service.apply_deletion``
============================  ============================================================================

A helper writes nothing when no active subscription takes its type (one small query), so a deployment
without subscribers pays no rows. After the commit, the runtime that opened the session is nudged
(:meth:`services.runtime.Runtime.nudge_events`) so the dispatcher sends soon; should the nudge be lost (a
crash right after the commit, the broker down), the periodic dispatcher finds the row all the same.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.events.schemas import (
    ErasedImage,
    EventType,
    ImageLabelledData,
    ImageProcessedData,
    ModelActivatedData,
    RecordDeletedData,
    ScaleCorrectedData,
    SubcategoriesUpdatedData,
    SubcategoryBrief,
)
from services.images.schemas import RecordRef
from services.tables import Deletion, EventOutbox, EventSubscription, Image, ImageRecord, ModelVersion, utcnow

_SUBSCRIBED = "semtag_events_subscribed"   # session.info: the event types some active subscription takes
_NUDGE = "semtag_events_nudge"             # session.info: an after-commit nudge is registered


def new_event_id() -> str:
    """A fresh event id (the webhook-id): ``evt_`` and 32 hex digits."""
    return f"evt_{uuid.uuid4().hex}"


def subscribed(session: Session, type_: EventType | str) -> bool:
    """Whether an active subscription takes this event type (read once per session)."""
    types = session.info.get(_SUBSCRIBED)
    if types is None:
        types = {t for row in session.scalars(select(EventSubscription.event_types)
                                              .where(EventSubscription.active.is_(True))) for t in (row or [])}
        session.info[_SUBSCRIBED] = types
    return EventType(type_).value in types


def emit(session: Session, type_: EventType | str, subject: str, payload: BaseModel | dict[str, Any]) -> EventOutbox:
    """Write an event into the outbox in ``session``'s transaction: sent once that commits, never otherwise.

    ``subject`` names what it is about (``image/12``, ``record/rec-1``); ``payload`` is the envelope's ``data``.
    """
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else dict(payload)
    row = EventOutbox(event_id=new_event_id(), type=EventType(type_).value, subject=subject[:255], payload=data,
                      created_at=utcnow())
    session.add(row)
    _nudge_after_commit(session)
    return row


def _nudge_after_commit(session: Session) -> None:
    rt = session.info.get("runtime")
    if rt is None or session.info.get(_NUDGE):
        return
    session.info[_NUDGE] = True

    def _after_commit(sess: Session) -> None:
        sess.info.pop(_NUDGE, None)
        rt.nudge_events()

    sa_event.listen(session, "after_commit", _after_commit, once=True)


def records_of(session: Session, image_id: int) -> list[RecordRef]:
    rows = session.execute(select(ImageRecord.record_id, ImageRecord.record_version)
                           .where(ImageRecord.image_id == image_id).order_by(ImageRecord.id))
    return [RecordRef(record_id=r, record_version=v or None) for r, v in rows]


# ---- one helper per event type ---------------------------------------------------------------

def image_processed(session: Session, img: Image) -> EventOutbox | None:
    """``image.processed``: the image just became done (its metadata is rendered per subscription when the
    event is dispatched, in the subscription's format)."""
    if not subscribed(session, EventType.image_processed):
        return None
    data = ImageProcessedData(image_id=img.id, sha256=img.sha256, filename=img.filename, status=img.status,
                              category=img.category, category_source=img.category_source,
                              confidence=img.confidence, pixel_size_nm=img.pixel_size_nm, scale_nm=img.scale_nm,
                              subcategory_id=img.subcategory_id, records=records_of(session, img.id))
    return emit(session, EventType.image_processed, f"image/{img.id}", data)


def image_labelled(session: Session, img: Image, action: str, label: str,
                   labelled_by: str | None = None) -> EventOutbox | None:
    """``image.labelled``: a human label was set (``action="set"``) or undone (``"removed"``)."""
    if not subscribed(session, EventType.image_labelled):
        return None
    data = ImageLabelledData(image_id=img.id, sha256=img.sha256, action=action,
                             label=label, labelled_by=labelled_by, category=img.category,
                             category_source=img.category_source, records=records_of(session, img.id))
    return emit(session, EventType.image_labelled, f"image/{img.id}", data)


def scale_corrected(session: Session, img: Image, action: str, corrected_by: str | None = None, *,
                    scale_value: float | None = None, scale_unit: str | None = None,
                    bar_px: float | None = None) -> EventOutbox | None:
    """``image.scale_corrected``: a curator's scale reading was stored or undone. Call it in the transaction
    that stores (or removes) the reading, after the image row holds its new ``pixel_size_nm``/``scale_nm``:
    ``action`` is ``confirmed`` or ``corrected`` (the reading's own), or ``removed`` for an undo."""
    if not subscribed(session, EventType.image_scale_corrected):
        return None
    data = ScaleCorrectedData(image_id=img.id, sha256=img.sha256, action=action, scale_value=scale_value,
                              scale_unit=scale_unit, bar_px=bar_px, pixel_size_nm=img.pixel_size_nm,
                              scale_nm=img.scale_nm, corrected_by=corrected_by, records=records_of(session, img.id))
    return emit(session, EventType.image_scale_corrected, f"image/{img.id}", data)


def subcategories_updated(session: Session, run_id: int | None, params: dict[str, Any],
                          tree: list[dict[str, Any]]) -> EventOutbox | None:
    """``subcategories.updated``: a clustering run replaced the tree (``tree`` as ``write_tree`` returns it)."""
    if not subscribed(session, EventType.subcategories_updated):
        return None
    data = SubcategoriesUpdatedData(run_id=run_id, method=str(params.get("method")),
                                    within=str(params.get("within")), k=int(params.get("k") or 0),
                                    images=sum(int(t["size"]) for t in tree),
                                    subcategories=[SubcategoryBrief.model_validate(t) for t in tree])
    return emit(session, EventType.subcategories_updated, f"clustering/{run_id if run_id is not None else 'cli'}",
                data)


def model_activated(session: Session, model: ModelVersion, previous: str | None) -> EventOutbox | None:
    """``model.activated``: ``model`` is the active one of its task now (``previous`` was)."""
    if not subscribed(session, EventType.model_activated):
        return None
    data = ModelActivatedData(version=model.version, task=model.task, architecture=model.architecture,
                              file_sha256=model.file_sha256, previous_version=previous)
    return emit(session, EventType.model_activated, f"model/{model.version}", data)


def record_deleted(session: Session, audit: Deletion) -> EventOutbox | None:
    """``record.deleted``: a takedown, as its audit row has it (written in the takedown's transaction)."""
    if not subscribed(session, EventType.record_deleted):
        return None
    d = audit.detail or {}
    data = RecordDeletedData(
        deletion_id=audit.id, kind=audit.kind, target=audit.target, record_version=audit.record_version,
        deleted_by=audit.deleted_by, deleted_at=audit.deleted_at or utcnow(),
        images_erased=[ErasedImage(id=i["id"], sha256=i["sha256"]) for i in d.get("images_erased", [])],
        images_kept=list(d.get("images_kept", [])),
        links_removed=[RecordRef(record_id=lk["record_id"], record_version=lk.get("record_version"))
                       for lk in d.get("links_removed", [])])
    return emit(session, EventType.record_deleted, f"{audit.kind}/{audit.target}", data)
