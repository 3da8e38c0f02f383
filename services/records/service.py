"""Records: read one with its images; take a record or an image down.

Every takedown goes through :func:`apply_deletion`: one transaction that locks the images concerned,
removes the record links, erases the rows and blobs of the images no record holds any more and writes
the audit row. The blobs are erased (``rt.store.delete``) before that transaction commits, while the
rows are still locked: an upload of the same bytes at the same moment waits for the commit and then
stores them anew, so no committed row ever points at an erased blob. Should the commit fail after the
blobs went, the rows survive without their bytes and the same DELETE, retried, finishes the takedown.

What is erased stays erased: the tasks of the pipeline look the image up by id and do nothing for one
that is gone (a redelivered or restored message included), and ids are never reused (sequences on
PostgreSQL, AUTOINCREMENT on SQLite).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, desc, func, select
from sqlalchemy.orm import Session, selectinload

from services.errors import BadInput, NotFound
from services.events import outbox as events
from services.images.ingest import clean_record_id
from services.images.queries import MAX_PAGE, Page, decode_cursor, detail_of, encode_cursor
from services.images.schemas import ImageDetail
from services.runtime import Runtime
from services.tables import Deletion, HumanLabel, Image, ImageRecord, Prediction, ScaleReading

log = logging.getLogger(__name__)


@dataclass
class RecordView:
    record_id: str
    versions: list[str | None]
    image_count: int
    images: list[ImageDetail]
    next_cursor: str | None


def _checked(record_id: str) -> str:
    cleaned = clean_record_id(record_id)
    if cleaned is None:
        raise BadInput("record_id must not be empty", "bad_record_id")
    return cleaned


def _link_filter(record_id: str, version: str | None) -> Any:
    cond = ImageRecord.record_id == record_id
    if version is not None:
        cond = cond & (ImageRecord.record_version == version)
    return cond


def record_image_ids(session: Session, record_id: str, version: str | None = None,
                     after: int = 0, limit: int | None = None) -> list[int]:
    """The ids of the record's images in ascending order (keyset: ids above ``after``)."""
    stmt = (select(ImageRecord.image_id).where(_link_filter(record_id, version), ImageRecord.image_id > after)
            .group_by(ImageRecord.image_id).order_by(ImageRecord.image_id))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def get_record(session: Session, record_id: str, version: str | None = None, limit: int | None = 100,
               cursor: str | None = None) -> RecordView:
    """The record's versions and one page of its images with all their metadata (``limit=None``: all of
    them, for a document describing the whole record); 404 when unknown."""
    record_id = _checked(record_id)
    if limit is not None and not 1 <= limit <= MAX_PAGE:
        raise BadInput(f"limit must be between 1 and {MAX_PAGE}", "bad_limit")
    versions = [v or None for v in session.scalars(
        select(ImageRecord.record_version).where(ImageRecord.record_id == record_id)
        .group_by(ImageRecord.record_version).order_by(ImageRecord.record_version))]
    if not versions or (version is not None and (version or None) not in versions):
        what = f"record {record_id!r}" + (f" version {version!r}" if version is not None else "")
        raise NotFound(f"{what} not found")
    count = session.scalar(select(func.count(func.distinct(ImageRecord.image_id)))
                           .where(_link_filter(record_id, version))) or 0
    after = decode_cursor(cursor) if cursor else 0
    ids = record_image_ids(session, record_id, version, after, None if limit is None else limit + 1)
    more = limit is not None and len(ids) > limit
    ids = ids[:limit]
    details: list[ImageDetail] = []
    for start in range(0, len(ids), MAX_PAGE):
        chunk = ids[start:start + MAX_PAGE]
        rows = {img.id: img for img in session.scalars(
            select(Image).where(Image.id.in_(chunk)).options(selectinload(Image.records)))}
        details.extend(detail_of(session, rows[i]) for i in chunk if i in rows)
    return RecordView(record_id, versions, count, details, encode_cursor(ids[-1]) if more and ids else None)


# ---- takedowns ----------------------------------------------------------------------------

@dataclass
class DeletionPlan:
    """What one DELETE asks for: the record links to remove and the images to erase whatever holds them."""

    kind: str                      # record | image
    target: str
    actor: str
    record_id: str | None = None
    record_version: str | None = None
    image_ids: list[int] = field(default_factory=list)  # images concerned (locked in this order)
    force: bool = False            # erase the images even if other records hold them (DELETE /v1/images/{id})


def delete_record(rt: Runtime, record_id: str, actor: str, version: str | None = None) -> Deletion:
    """Remove the record (or one version of it) from its images; erase those no record holds any more."""
    record_id = _checked(record_id)
    with rt.session() as s:
        ids = record_image_ids(s, record_id, version)
    if not ids:
        what = f"record {record_id!r}" + (f" version {version!r}" if version is not None else "")
        raise NotFound(f"{what} not found")
    return apply_deletion(rt, DeletionPlan("record", record_id, actor, record_id, version, ids))


def delete_image(rt: Runtime, image_id: int, actor: str) -> Deletion:
    """Erase the image, its rows, its blobs and its record links (a takedown of these bytes)."""
    with rt.session() as s:
        if s.get(Image, image_id) is None:
            raise NotFound(f"image {image_id} not found")
    return apply_deletion(rt, DeletionPlan("image", str(image_id), actor, image_ids=[image_id], force=True))


def apply_deletion(rt: Runtime, plan: DeletionPlan) -> Deletion:
    """Carry out a takedown in one transaction and write its audit row; the one place every deletion passes
    (an outbound ``record.deleted`` event belongs in this transaction too)."""
    with rt.session() as s:
        # Lock in id order (no deadlock between two takedowns); an upload linking the same image waits.
        locked = list(s.scalars(select(Image).where(Image.id.in_(plan.image_ids)).order_by(Image.id)
                                .with_for_update()))
        if not locked:
            raise NotFound(f"{plan.kind} {plan.target!r} not found")
        ids = [img.id for img in locked]
        links_q = select(ImageRecord).where(ImageRecord.image_id.in_(ids))
        if not plan.force:
            links_q = links_q.where(_link_filter(plan.record_id or "", plan.record_version))
        links = list(s.scalars(links_q.order_by(ImageRecord.id)))
        if not plan.force and not links:  # another takedown got there first
            raise NotFound(f"record {plan.target!r} not found")
        removed = [{"image_id": lk.image_id, "record_id": lk.record_id, "record_version": lk.record_version or None}
                   for lk in links]
        s.execute(delete(ImageRecord).where(ImageRecord.id.in_([lk.id for lk in links])))
        held = set(s.scalars(select(ImageRecord.image_id).where(ImageRecord.image_id.in_(ids))))
        doomed = [img for img in locked if plan.force or img.id not in held]
        kept = sorted(held) if not plan.force else []
        erased = [{"id": i.id, "sha256": i.sha256, "filename": i.filename} for i in doomed]
        keys = _erase_rows(s, doomed)
        audit = Deletion(kind=plan.kind, target=plan.target, record_version=plan.record_version,
                         deleted_by=plan.actor, detail={"images_erased": erased, "images_kept": kept,
                                                        "links_removed": removed, "blobs_erased": keys})
        s.add(audit)
        s.flush()
        events.record_deleted(s, audit)
        for key in keys:  # still inside the transaction, the rows locked: see the module's docstring
            rt.store.delete(key)
    log.info("deletion %s: %s %r by %s erased %d image(s), kept %d", audit.id, plan.kind, plan.target, plan.actor,
             len(doomed), len(kept))
    return audit


def _erase_rows(s: Session, images: list[Image]) -> list[str]:
    """Delete the images' rows (and their results); the blob keys no remaining image uses."""
    if not images:
        return []
    ids = [i.id for i in images]
    keys = {k for i in images for k in (i.storage_key, i.sidecar_key, i.input_key) if k}
    s.execute(delete(ScaleReading).where(ScaleReading.image_id.in_(ids)))
    s.execute(delete(Prediction).where(Prediction.image_id.in_(ids)))
    s.execute(delete(HumanLabel).where(HumanLabel.image_id.in_(ids)))
    s.execute(delete(ImageRecord).where(ImageRecord.image_id.in_(ids)))
    s.execute(delete(Image).where(Image.id.in_(ids)).execution_options(synchronize_session=False))
    still_used = set(s.scalars(select(Image.storage_key).where(Image.storage_key.in_(keys)))) | set(
        s.scalars(select(Image.sidecar_key).where(Image.sidecar_key.in_(keys)))) | set(
        s.scalars(select(Image.input_key).where(Image.input_key.in_(keys))))
    return sorted(keys - still_used)


def list_deletions(session: Session, limit: int = 50, cursor: str | None = None) -> Page:
    """The audit trail, newest first."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadInput(f"limit must be between 1 and {MAX_PAGE}", "bad_limit")
    stmt = select(Deletion)
    if cursor:
        stmt = stmt.where(Deletion.id < decode_cursor(cursor))
    rows = list(session.scalars(stmt.order_by(desc(Deletion.id)).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].id) if more and rows else None)
