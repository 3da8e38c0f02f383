"""Curators' work: human labels (who, when) and the review queue of uncertain predictions."""

from __future__ import annotations

from sqlalchemy import and_, desc, func, select
from sqlalchemy.orm import Session

from services.classify import registry
from services.curation.schemas import LabelRead, LabelRemoved, ReviewItem, ReviewPage
from services.data.categories import to_slug
from services.errors import BadParams, NotFound
from services.tables import HumanLabel, Image, Prediction, utcnow

MAX_PAGE = 500


def set_label(session: Session, image_id: int, category: str | int, labelled_by: str) -> HumanLabel:
    """Store a human label; it becomes the image's searchable category (source ``human``)."""
    img = session.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found")
    slug = to_slug(category)
    row = HumanLabel(image_id=image_id, category=slug, labelled_by=labelled_by, created_at=utcnow())
    session.add(row)
    img.category, img.category_source, img.confidence = slug, "human", None
    session.flush()
    return row


def remove_label(session: Session, image_id: int) -> LabelRemoved:
    """Undo the image's current human label: an earlier label, else the active model's prediction, takes over."""
    img = session.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found")
    labels = list(session.scalars(select(HumanLabel).where(HumanLabel.image_id == image_id)
                                  .order_by(desc(HumanLabel.id)).limit(2)))
    if not labels:
        raise NotFound(f"image {image_id} has no human label", "no_label")
    removed = LabelRead.model_validate(labels[0])
    session.delete(labels[0])
    if len(labels) > 1:
        img.category, img.category_source, img.confidence = labels[1].category, "human", None
    else:
        model = registry.active(session)
        pred = None if model is None else session.scalar(
            select(Prediction).where(Prediction.image_id == image_id, Prediction.model_version == model.version))
        if pred is None:
            img.category, img.category_source, img.confidence = None, None, None
        else:
            img.category, img.category_source, img.confidence = pred.category, "model", pred.confidence
    img.updated_at = utcnow()
    session.flush()
    return LabelRemoved(image_id=image_id, removed=removed, category=img.category,
                        category_source=img.category_source)


def predictions_of(session: Session, image_id: int) -> list[Prediction]:
    if session.get(Image, image_id) is None:
        raise NotFound(f"image {image_id} not found")
    return list(session.scalars(select(Prediction).where(Prediction.image_id == image_id)
                                .order_by(desc(Prediction.id))))


def review_queue(session: Session, limit: int = 50, offset: int = 0, needs_review: bool = True) -> ReviewPage:
    """Images whose active-model prediction needs review (or, with ``needs_review=False``, is confident)
    and that no human labelled, least confident first."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise BadParams(f"limit must be 1–{MAX_PAGE} and offset ≥ 0")
    model = registry.active(session)
    if model is None:
        return ReviewPage(model_version=None, total=0, items=[], limit=limit, offset=offset)
    active = model.version
    labelled = select(HumanLabel.image_id)
    cond = and_(Prediction.model_version == active, Prediction.needs_review.is_(needs_review),
                Prediction.image_id.not_in(labelled))
    total = session.scalar(select(func.count()).select_from(Prediction).where(cond)) or 0
    rows = session.execute(
        select(Prediction, Image.filename, Image.record_id).join(Image, Image.id == Prediction.image_id)
        .where(cond).order_by(Prediction.confidence, Prediction.id).limit(limit).offset(offset)
    ).all()
    items = [ReviewItem(image_id=p.image_id, filename=fn, record_id=rec, category=p.category,
                        confidence=p.confidence, margin=p.margin, ood_score=p.ood_score) for p, fn, rec in rows]
    return ReviewPage(model_version=active, total=total, items=items, limit=limit, offset=offset,
                      next_offset=offset + limit if offset + limit < total else None)


__all__ = ["set_label", "remove_label", "predictions_of", "review_queue"]
