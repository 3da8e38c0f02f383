"""Reading images back: one image with all its metadata, and the filtered, paginated search."""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import desc, exists, func, select
from sqlalchemy.orm import Session, selectinload

from services.classify import registry
from services.data.categories import to_slug
from services.errors import BadInput, NotFound
from services.images.schemas import MAX_LOOKUP, ImageDetail, KnownImage, LookupResponse, RecordRef
from services.scale.units import bin_edges_nm, parse_length, range_conditions, to_nm
from services.tables import (
    HumanLabel,
    HumanScale,
    Image,
    ImageRecord,
    ImageStatus,
    Prediction,
    ScaleReading,
    Subcategory,
)

MAX_PAGE = 500


def image_detail(session: Session, image_id: int) -> ImageDetail:
    """The image's row with its scale reading, the prediction it shows, its latest label and subcategory."""
    img = session.get(Image, image_id, options=[selectinload(Image.records)])
    if img is None:
        raise NotFound(f"image {image_id} not found")
    return detail_of(session, img)


def detail_of(session: Session, img: Image) -> ImageDetail:
    """:func:`image_detail` for a row already read (with its records loaded)."""
    image_id = img.id
    scale = session.scalar(select(ScaleReading).where(ScaleReading.image_id == image_id))
    # The active model's prediction when there is one, else the latest of any model.
    active = registry.active(session)
    pred = None
    if active is not None:
        pred = session.scalar(select(Prediction).where(Prediction.image_id == image_id,
                                                       Prediction.model_version == active.version))
    if pred is None:
        pred = session.scalar(
            select(Prediction).where(Prediction.image_id == image_id).order_by(desc(Prediction.id)).limit(1)
        )
    label = session.scalar(
        select(HumanLabel).where(HumanLabel.image_id == image_id).order_by(desc(HumanLabel.id)).limit(1)
    )
    sub = session.get(Subcategory, img.subcategory_id) if img.subcategory_id else None
    human_scale = session.scalar(
        select(HumanScale).where(HumanScale.image_id == image_id).order_by(desc(HumanScale.id)).limit(1))
    return ImageDetail(img, scale, pred, label, sub, human_scale)


@dataclass
class ImageFilter:
    category: str | None = None
    subcategory: int | None = None
    pixel_size_min_nm: float | None = None
    pixel_size_max_nm: float | None = None
    min_confidence: float | None = None
    status: str | None = None
    record_id: str | None = None       # matches an image through any of its records
    record_version: str | None = None  # with record_id: that version of the record only
    scale_bin: str | None = None  # e.g. '1 µm–2 µm' (or '1um-2um'): a 1-2-5 bin of scale-bar length
    scale_min_nm: float | None = None
    scale_max_nm: float | None = None

    def __post_init__(self) -> None:
        if self.scale_bin is not None:
            self._bin_range = parse_scale_bin(self.scale_bin)
        if self.category is not None:
            self.category = to_slug(self.category)
        if self.status is not None and self.status not in {s.value for s in ImageStatus}:
            raise BadInput(f"status must be one of {', '.join(s.value for s in ImageStatus)}", "bad_filter")
        for name in ("pixel_size_min_nm", "pixel_size_max_nm", "scale_min_nm", "scale_max_nm"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise BadInput(f"{name} must be a finite, non-negative number", "bad_filter")
        if (self.pixel_size_min_nm is not None and self.pixel_size_max_nm is not None
                and self.pixel_size_min_nm > self.pixel_size_max_nm):
            raise BadInput("pixel_size_min_nm is larger than pixel_size_max_nm", "bad_filter")
        if self.record_version is not None and self.record_id is None:
            raise BadInput("record_version needs record_id", "bad_filter")
        if self.min_confidence is not None and not (math.isfinite(self.min_confidence)
                                                    and 0.0 <= self.min_confidence <= 1.0):
            raise BadInput("min_confidence must be between 0 and 1", "bad_filter")

    def apply(self, stmt):  # noqa: ANN001, ANN201
        if self.category is not None:
            stmt = stmt.where(Image.category == self.category)
        if self.subcategory is not None:
            stmt = stmt.where(Image.subcategory_id == self.subcategory)
        if self.pixel_size_min_nm is not None:
            stmt = stmt.where(Image.pixel_size_nm >= self.pixel_size_min_nm)
        if self.pixel_size_max_nm is not None:
            stmt = stmt.where(Image.pixel_size_nm <= self.pixel_size_max_nm)
        if self.min_confidence is not None:
            stmt = stmt.where(Image.confidence >= self.min_confidence)
        if self.status is not None:
            stmt = stmt.where(Image.status == self.status)
        if self.record_id is not None:
            link = (ImageRecord.image_id == Image.id) & (ImageRecord.record_id == self.record_id)
            if self.record_version is not None:
                link = link & (ImageRecord.record_version == self.record_version)
            stmt = stmt.where(exists().where(link))
        if self.scale_bin is not None:
            stmt = stmt.where(*range_conditions(Image.scale_nm, *self._bin_range))
        if self.scale_min_nm is not None or self.scale_max_nm is not None:  # [min, max), as the bins
            stmt = stmt.where(*range_conditions(Image.scale_nm, self.scale_min_nm, self.scale_max_nm))
        return stmt


def parse_scale_bin(text: str) -> tuple[float, float]:
    """'1 µm–2 µm' / '1um-2um' -> (1000, 2000) nm; only the 1-2-5 bins are accepted."""
    parts = [p for p in re.split(r"\s*(?:–|—|-|\.\.|to)\s*", text.strip()) if p]
    edges = bin_edges_nm()
    if len(parts) == 2:
        lo, hi = parse_length(parts[0]), parse_length(parts[1])
        if lo and hi:
            lo_nm, hi_nm = to_nm(*lo), to_nm(*hi)
            for a, b in zip(edges, edges[1:]):
                if abs(a - lo_nm) < 1e-6 * a and abs(b - hi_nm) < 1e-6 * b:
                    return a, b
    raise BadInput(f"scale_bin {text!r} is not a 1-2-5 bin such as '1 µm–2 µm' or '200nm-500nm'", "bad_filter")


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"i:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = raw.split(":", 1)
        if kind != "i" or not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ValueError  # ids are 64-bit: 18 digits always fit
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadInput("cursor is not valid; use the next_cursor of a previous page", "bad_cursor") from None


@dataclass
class Page:
    """One page of a keyset-paginated query."""

    items: list[Any]
    next_cursor: str | None


def list_images(session: Session, flt: ImageFilter, limit: int = 50, cursor: str | None = None) -> Page:
    """Keyset pagination by ascending id: stable while images are added."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadInput(f"limit must be between 1 and {MAX_PAGE}", "bad_limit")
    stmt = flt.apply(select(Image).options(selectinload(Image.records)))
    if cursor:
        stmt = stmt.where(Image.id > decode_cursor(cursor))
    rows = session.scalars(stmt.order_by(Image.id).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(list(rows), encode_cursor(rows[-1].id) if more and rows else None)


def count_by_status(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in ImageStatus}
    for status, n in session.execute(select(Image.status, func.count()).group_by(Image.status)):
        counts[status] = n
    return counts


def known_images(session: Session, sha256s: list[str]) -> LookupResponse:
    """Which of these digests semtag stores, with each image's records: a backfill asks before it sends
    (``POST /v1/images/lookup`` and ``semtag ingest`` in local mode both answer through here)."""
    wanted = list(dict.fromkeys(s.lower() for s in sha256s))
    if not 1 <= len(wanted) <= MAX_LOOKUP:
        raise BadInput(f"ask about 1–{MAX_LOOKUP} digests at a time", "bad_lookup")
    rows = session.scalars(select(Image).where(Image.sha256.in_(wanted))
                           .options(selectinload(Image.records))).all()
    by_sha = {img.sha256: img for img in rows}
    known = [KnownImage(sha256=sha, id=img.id, filename=img.filename, status=img.status,
                        has_sidecar=img.sidecar_key is not None,
                        records=[RecordRef.model_validate(r) for r in img.records])
             for sha in wanted if (img := by_sha.get(sha)) is not None]
    return LookupResponse(known=known, unknown=[sha for sha in wanted if sha not in by_sha])
