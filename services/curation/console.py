"""What the curator console reads: the dashboard's counts and plots, and the scale-triage lists.

Everything is aggregated in the database (GROUP BY, CASE), so the dashboard costs a few queries
whatever the repository's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from services.classify import registry
from services.data.categories import NAMES, SLUGS
from services.errors import BadInput
from services.scale.units import bin_edges_nm, format_nm
from services.tables import HumanLabel, HumanScale, Image, ImageStatus, Prediction, ScaleReading, utcnow

LOW_SCALE_CONFIDENCE = 0.6  # below it a machine reading goes to triage
TRIAGE_KINDS = {"ocr": "read by OCR only", "low": "low confidence", "disagree": "metadata and OCR disagree",
                "none": "no scale found"}


@dataclass
class Dashboard:
    total: int
    by_status: dict[str, int]
    by_category: list[tuple[str, str, int]]  # slug, name, count (all ten, and 'unclassified')
    by_scale_bin: list[tuple[str, int]]
    review_backlog: int
    active_model: str | None
    triage_backlog: int
    confidence: dict[str, list[int]] = field(default_factory=dict)  # model version → 10 bins of 0.1
    labels_per_day: list[tuple[str, int]] = field(default_factory=list)  # the last 30 days, oldest first


def dashboard(session: Session, days: int = 30) -> Dashboard:
    by_status = {s.value: 0 for s in ImageStatus}
    for status, n in session.execute(select(Image.status, func.count()).group_by(Image.status)):
        by_status[status] = n
    total = sum(by_status.values())
    cats = dict(session.execute(select(Image.category, func.count()).group_by(Image.category)).all())
    by_category = [(slug, NAMES[slug], int(cats.get(slug, 0))) for slug in SLUGS]
    if cats.get(None):
        by_category.append(("", "unclassified", int(cats[None])))
    edges = bin_edges_nm()
    labels = [f"{format_nm(lo)}–{format_nm(hi)}" for lo, hi in zip(edges, edges[1:])]
    bin_of = case(*[(and_(Image.scale_nm >= lo, Image.scale_nm < hi), str(n))
                    for n, (lo, hi) in enumerate(zip(edges, edges[1:]))], else_="-")
    counts: dict[str, int] = dict(session.execute(select(bin_of, func.count()).where(Image.scale_nm.is_not(None))
                                  .group_by(bin_of)).all())
    by_bin = [(labels[int(k)], int(v)) for k, v in sorted(((k, v) for k, v in counts.items() if k != "-"),
                                                          key=lambda kv: int(kv[0]))]
    no_scale = total - sum(v for _, v in by_bin)
    if no_scale:
        by_bin.append(("no scale", no_scale))
    model = registry.active(session)
    backlog = 0
    if model is not None:
        backlog = session.scalar(select(func.count()).select_from(Prediction).where(
            Prediction.model_version == model.version, Prediction.needs_review.is_(True),
            Prediction.image_id.not_in(select(HumanLabel.image_id)))) or 0
    triage = session.scalar(select(func.count()).select_from(ScaleReading).where(
        _triage_condition("ocr") | _triage_condition("low") | _triage_condition("disagree"),
        ScaleReading.image_id.not_in(select(HumanScale.image_id)))) or 0
    conf_bin = case(*[(Prediction.confidence < (b + 1) / 10, b) for b in range(9)], else_=9)
    confidence: dict[str, list[int]] = {}
    for version, b, n in session.execute(select(Prediction.model_version, conf_bin, func.count())
                                         .group_by(Prediction.model_version, conf_bin)):
        confidence.setdefault(version, [0] * 10)[int(b)] = int(n)
    since = utcnow() - timedelta(days=days)
    day = func.date(HumanLabel.created_at)
    per_day = {str(d)[:10]: int(n) for d, n in session.execute(
        select(day, func.count()).where(HumanLabel.created_at >= since).group_by(day))}
    today = utcnow().date()
    series = [(str(today - timedelta(days=i)), per_day.get(str(today - timedelta(days=i)), 0))
              for i in range(days - 1, -1, -1)]
    return Dashboard(total, by_status, by_category, by_bin, int(backlog), model.version if model else None,
                     int(triage), confidence, series)


def _triage_condition(kind: str) -> Any:
    if kind == "ocr":
        return ScaleReading.source == "ocr"
    if kind == "low":
        return and_(ScaleReading.source != "none", or_(ScaleReading.confidence.is_(None),
                                                      ScaleReading.confidence < LOW_SCALE_CONFIDENCE))
    if kind == "disagree":
        return ScaleReading.detail["disagree"].as_boolean().is_(True)
    if kind == "none":
        return ScaleReading.source == "none"
    raise BadInput(f"unknown triage list {kind!r}; choose one of {', '.join(TRIAGE_KINDS)}", "bad_filter")


@dataclass
class TriageItem:
    image_id: int
    filename: str
    width: int
    reading: ScaleReading


def scale_triage(session: Session, kind: str, limit: int = 20, after: int | None = None,
                 include_confirmed: bool = False) -> tuple[list[TriageItem], int, int | None]:
    """Machine readings that want a curator's look (``kind`` of :data:`TRIAGE_KINDS`), by image id; the page,
    the total and the next ``after``. Images a curator already read are left out unless asked for."""
    if not 1 <= limit <= 200:
        raise BadInput("limit must be 1–200", "bad_limit")
    cond = [_triage_condition(kind)]
    if not include_confirmed:
        cond.append(ScaleReading.image_id.not_in(select(HumanScale.image_id)))
    total = session.scalar(select(func.count()).select_from(ScaleReading).where(*cond)) or 0
    q = (select(ScaleReading, Image.filename, Image.width).join(Image, Image.id == ScaleReading.image_id)
         .where(*cond).order_by(ScaleReading.image_id).limit(limit + 1))
    if after is not None:
        q = q.where(ScaleReading.image_id > after)
    rows = session.execute(q).all()
    items = [TriageItem(r.image_id, fn, w, r) for r, fn, w in rows[:limit]]
    return items, int(total), items[-1].image_id if len(rows) > limit else None
