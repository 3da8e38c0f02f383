"""Curators' work: human labels (who, when) and the review queue of uncertain predictions."""

from __future__ import annotations

from sqlalchemy import and_, desc, func, or_, select
from sqlalchemy.orm import Session

from services.classify import registry
from services.curation.schemas import (
    CurationHistory,
    HumanScaleRead,
    LabelRead,
    LabelRemoved,
    ReviewItem,
    ReviewPage,
    ReviewScale,
    ScaleRemoved,
    ScaleRequest,
    TopCategory,
)
from services.data.categories import SLUGS, to_slug
from services.errors import BadInput, BadParams, NotFound
from services.events import outbox as events
from services.scale.units import normalise_unit, to_nm
from services.tables import HumanLabel, HumanScale, Image, ImageRecord, Prediction, ScaleReading, utcnow

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
    events.image_labelled(session, img, "set", slug, labelled_by)
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
    events.image_labelled(session, img, "removed", removed.category)
    return LabelRemoved(image_id=image_id, removed=removed, category=img.category,
                        category_source=img.category_source)


def predictions_of(session: Session, image_id: int) -> list[Prediction]:
    if session.get(Image, image_id) is None:
        raise NotFound(f"image {image_id} not found")
    return list(session.scalars(select(Prediction).where(Prediction.image_id == image_id)
                                .order_by(desc(Prediction.id))))


OOD_FLAG = 0.5  # an ood_score from here up is out of distribution (services/classify/inference.py)


def review_queue(session: Session, limit: int = 50, offset: int = 0, needs_review: bool | None = True,
                 category: str | None = None, model_version: str | None = None, ood: bool | None = None,
                 unlabelled: bool = True, after: tuple[float, int] | None = None) -> ReviewPage:
    """Predictions of one model (the active one by default), least confident first: those that need review
    (``needs_review=True``), the confident ones (``False``) or all (``None``); of one predicted ``category``,
    in or out of distribution (``ood``); with no human label yet (``unlabelled``, the default) or all.
    ``after`` = (confidence, image id) of the last item seen pages by key instead of ``offset``."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise BadParams(f"limit must be 1–{MAX_PAGE} and offset ≥ 0")
    if model_version is None:
        model = registry.active(session)
        if model is None:
            return ReviewPage(model_version=None, total=0, items=[], limit=limit, offset=offset)
        version = model.version
    else:
        version = model_version
        if session.scalar(select(Prediction.id).where(Prediction.model_version == version).limit(1)) is None:
            registry.get(session, version)  # NotFound for a model the registry does not know
    cond = [Prediction.model_version == version]
    if needs_review is not None:
        cond.append(Prediction.needs_review.is_(needs_review))
    if unlabelled:
        cond.append(Prediction.image_id.not_in(select(HumanLabel.image_id)))
    if category is not None:
        cond.append(Prediction.category == to_slug(category))
    if ood is True:
        cond.append(Prediction.ood_score >= OOD_FLAG)
    elif ood is False:
        cond.append(or_(Prediction.ood_score.is_(None), Prediction.ood_score < OOD_FLAG))
    where = and_(*cond)
    total = session.scalar(select(func.count()).select_from(Prediction).where(where)) or 0
    first_record = (select(ImageRecord.record_id).where(ImageRecord.image_id == Image.id)
                    .order_by(ImageRecord.id).limit(1).correlate(Image).scalar_subquery())
    q = (select(Prediction, Image.filename, first_record).join(Image, Image.id == Prediction.image_id)
         .where(where).order_by(Prediction.confidence, Prediction.image_id).limit(limit))
    if after is not None:
        q = q.where(or_(Prediction.confidence > after[0],
                        and_(Prediction.confidence == after[0], Prediction.image_id > after[1])))
    else:
        q = q.offset(offset)
    rows = session.execute(q).all()
    ids = [p.image_id for p, _, _ in rows]
    scales = scales_of(session, ids)
    labels = {} if unlabelled else current_labels(session, ids)
    items = [ReviewItem(image_id=p.image_id, filename=fn, record_id=rec, category=p.category,
                        confidence=p.confidence, margin=p.margin, ood_score=p.ood_score,
                        ood=p.ood_score is not None and p.ood_score >= OOD_FLAG, model_version=p.model_version,
                        top3=top3(p.probabilities), scale=scales.get(p.image_id), labelled=labels.get(p.image_id))
             for p, fn, rec in rows]
    nxt = offset + limit if after is None and offset + limit < total else None
    return ReviewPage(model_version=version, total=total, items=items, limit=limit, offset=offset, next_offset=nxt)


def top3(probabilities: list[float]) -> list[TopCategory]:
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:3]
    return [TopCategory(category=SLUGS[i], probability=round(float(probabilities[i]), 4)) for i in order
            if i < len(SLUGS)]


def current_labels(session: Session, ids: list[int]) -> dict[int, str]:
    """The latest human label of each image in ``ids`` that has one."""
    out: dict[int, str] = {}
    if ids:
        for iid, cat in session.execute(select(HumanLabel.image_id, HumanLabel.category)
                                        .where(HumanLabel.image_id.in_(ids)).order_by(HumanLabel.id)):
            out[iid] = cat
    return out


def scales_of(session: Session, ids: list[int]) -> dict[int, ReviewScale]:
    """The scale each image shows: its latest curator's reading, else the machine's."""
    out: dict[int, ReviewScale] = {}
    if not ids:
        return out
    for r in session.scalars(select(ScaleReading).where(ScaleReading.image_id.in_(ids))):
        out[r.image_id] = ReviewScale(source=r.source, scale_value=r.scale_value, scale_unit=r.scale_unit,
                                      pixel_size_nm=r.pixel_size_nm, confidence=r.confidence)
    for h in session.scalars(select(HumanScale).where(HumanScale.image_id.in_(ids)).order_by(HumanScale.id)):
        out[h.image_id] = ReviewScale(source="human", scale_value=h.scale_value, scale_unit=h.scale_unit,
                                      pixel_size_nm=h.pixel_size_nm)
    return out


# ---- curators' scale readings ----------------------------------------------------------------

CONFIRM_TOLERANCE = 1e-6


def set_scale(session: Session, image_id: int, req: ScaleRequest, labelled_by: str) -> HumanScale:
    """Store a curator's scale reading; it becomes the image's scale (pixel size and scale bin)."""
    img = session.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found")
    unit = normalise_unit(req.scale_unit)
    if unit is None:
        raise BadInput(f"unknown length unit {req.scale_unit!r}; use nm, µm (or um), mm, cm, m or pm", "bad_unit")
    machine = session.scalar(select(ScaleReading).where(ScaleReading.image_id == image_id))
    scale_nm = to_nm(req.scale_value, unit)
    same_label = (machine is not None and machine.scale_value is not None and machine.scale_unit is not None
                  and abs(to_nm(machine.scale_value, machine.scale_unit) - scale_nm) <= CONFIRM_TOLERANCE * scale_nm)
    bar_px = req.bar_px if req.bar_px is not None else (machine.bar_px if machine is not None else None)
    if bar_px is not None and bar_px > max(img.width, img.height):
        raise BadInput(f"bar_px {bar_px:g} is longer than the image ({img.width}×{img.height} px)", "bad_scale")
    if req.pixel_size_nm is not None:
        px = req.pixel_size_nm
        if req.bar_px is not None and abs(scale_nm / req.bar_px - px) > 0.01 * px:
            raise BadInput(f"pixel_size_nm {px:g} disagrees with {req.scale_value:g} {unit} over {req.bar_px:g} px "
                           f"({scale_nm / req.bar_px:.4g} nm); send two of the three", "inconsistent_scale")
    elif same_label and req.bar_px is None and machine is not None and machine.pixel_size_nm:
        px = machine.pixel_size_nm  # confirming: the machine's pixel size (metadata's is exact)
    elif bar_px:
        px = scale_nm / bar_px
    else:
        raise BadInput("no bar length is known for this image: send bar_px (the bar's length in pixels) or "
                       "pixel_size_nm with the reading", "bar_unknown")
    action = "confirmed" if same_label and req.bar_px is None and req.pixel_size_nm is None else "corrected"
    row = HumanScale(image_id=image_id, scale_value=float(req.scale_value), scale_unit=unit,
                     bar_px=float(bar_px) if bar_px is not None else None, pixel_size_nm=round(float(px), 6),
                     action=action, labelled_by=labelled_by, created_at=utcnow())
    session.add(row)
    img.pixel_size_nm, img.scale_nm, img.updated_at = row.pixel_size_nm, scale_nm, utcnow()
    session.flush()
    events.scale_corrected(session, img, action, labelled_by, scale_value=row.scale_value,
                           scale_unit=row.scale_unit, bar_px=row.bar_px)
    return row


def remove_scale(session: Session, image_id: int, removed_by: str | None = None) -> ScaleRemoved:
    """Undo the image's latest curator's scale reading: an earlier one, else the machine's, takes over."""
    img = session.get(Image, image_id)
    if img is None:
        raise NotFound(f"image {image_id} not found")
    rows = list(session.scalars(select(HumanScale).where(HumanScale.image_id == image_id)
                                .order_by(desc(HumanScale.id)).limit(2)))
    if not rows:
        raise NotFound(f"image {image_id} has no curator's scale reading", "no_scale_label")
    removed = HumanScaleRead.model_validate(rows[0])
    session.delete(rows[0])
    source: str | None
    if len(rows) > 1:
        source, img.pixel_size_nm = "human", rows[1].pixel_size_nm
        img.scale_nm = to_nm(rows[1].scale_value, rows[1].scale_unit)
    else:
        machine = session.scalar(select(ScaleReading).where(ScaleReading.image_id == image_id))
        source = machine.source if machine is not None else None
        img.pixel_size_nm = machine.pixel_size_nm if machine is not None else None
        img.scale_nm = (to_nm(machine.scale_value, machine.scale_unit)
                        if machine is not None and machine.scale_value and machine.scale_unit else None)
    img.updated_at = utcnow()
    session.flush()
    events.scale_corrected(session, img, "removed", removed_by)
    return ScaleRemoved(image_id=image_id, removed=removed, scale_source=source, pixel_size_nm=img.pixel_size_nm,
                        scale_nm=img.scale_nm)


def has_human_scale(session: Session, image_id: int) -> bool:
    return session.scalar(select(HumanScale.id).where(HumanScale.image_id == image_id).limit(1)) is not None


def history(session: Session, image_id: int) -> CurationHistory:
    """The image's human labels and scale readings, newest first."""
    if session.get(Image, image_id) is None:
        raise NotFound(f"image {image_id} not found")
    labels = session.scalars(select(HumanLabel).where(HumanLabel.image_id == image_id).order_by(desc(HumanLabel.id)))
    scales = session.scalars(select(HumanScale).where(HumanScale.image_id == image_id).order_by(desc(HumanScale.id)))
    return CurationHistory(image_id=image_id, labels=[LabelRead.model_validate(x) for x in labels],
                           scales=[HumanScaleRead.model_validate(x) for x in scales])


__all__ = ["set_label", "remove_label", "predictions_of", "review_queue", "set_scale", "remove_scale", "history"]
