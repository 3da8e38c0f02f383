"""Curators' work: human labels (who, when) and the review queue of uncertain predictions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, desc, func, select
from sqlalchemy.orm import Session

from services.data.categories import NAMES, to_slug
from services.errors import BadInput, NotFound
from services.images.pipeline import active_model_in
from services.tables import HumanLabel, Image, Prediction, utcnow

MAX_PAGE = 500


def set_label(session: Session, image_id: int, category: str | int, labelled_by: str) -> dict[str, Any]:
    """Store a human label; it becomes the image's searchable category (source ``human``)."""
    img = session.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found")
    slug = to_slug(category)
    row = HumanLabel(image_id=image_id, category=slug, labelled_by=labelled_by, created_at=utcnow())
    session.add(row)
    img.category, img.category_source, img.confidence = slug, "human", None
    session.flush()
    return {"image_id": image_id, "category": slug, "category_name": NAMES[slug], "labelled_by": labelled_by,
            "created_at": row.created_at}


def predictions_of(session: Session, image_id: int) -> list[dict[str, Any]]:
    if session.get(Image, image_id) is None:
        raise NotFound(f"image {image_id} not found")
    rows = session.scalars(select(Prediction).where(Prediction.image_id == image_id).order_by(desc(Prediction.id)))
    from services.images.queries import _prediction_dict

    return [_prediction_dict(p) for p in rows]


def review_queue(session: Session, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Images whose active-model prediction needs review and that no human labelled, least confident first."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise BadInput(f"limit must be 1–{MAX_PAGE} and offset ≥ 0", "bad_params")
    model = active_model_in(session)
    if model is None:
        return {"model_version": None, "total": 0, "items": []}
    active = model.version
    labelled = select(HumanLabel.image_id)
    cond = and_(Prediction.model_version == active, Prediction.needs_review.is_(True),
                Prediction.image_id.not_in(labelled))
    total = session.scalar(select(func.count()).select_from(Prediction).where(cond))
    rows = session.execute(
        select(Prediction, Image.filename, Image.record_id).join(Image, Image.id == Prediction.image_id)
        .where(cond).order_by(Prediction.confidence, Prediction.id).limit(limit).offset(offset)
    ).all()
    items = [{"image_id": p.image_id, "filename": fn, "record_id": rec, "category": p.category,
              "confidence": p.confidence, "margin": p.margin, "ood_score": p.ood_score} for p, fn, rec in rows]
    return {"model_version": active, "total": total, "items": items, "limit": limit, "offset": offset,
            "next_offset": offset + limit if offset + limit < total else None}


__all__ = ["set_label", "predictions_of", "review_queue"]
