"""What the images domain reads out: one image with all its metadata, a page of search results, uploads.

Services return ORM rows (or :class:`ImageDetail`, the rows that make one image's record); these
models are the typed contract the API declares as ``response_model`` and documents in OpenAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, computed_field, field_validator, model_validator

from services.data.categories import NAMES, SLUGS
from services.scale.units import scale_bin
from services.tables import HumanLabel, HumanScale, Image, ImageRecord, Prediction, ScaleReading, Subcategory
from services.types import UtcDateTime


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ScaleReadingRead(ReadModel):
    """How the image's scale was read: ``source`` is metadata, ocr or none."""

    source: str
    scale_value: float | None = None
    scale_unit: str | None = None
    bar_px: float | None = None
    pixel_size_nm: float | None = None
    confidence: float | None = None
    fields: dict[str, Any] = Field(default_factory=dict, description="acquisition fields: mag, hv_kv, wd_mm, …")
    databar_box: list[int] | None = Field(None, description="[x0, y0, x1, y1] of the data bar")
    detail: dict[str, Any] | None = Field(None, description="both readings and how they were made")
    reason: str | None = None


class PredictionRead(ReadModel):
    """One model's prediction for an image, with the ten calibrated probabilities."""

    category: str
    category_index: int
    probabilities: dict[str, float]
    confidence: float
    margin: float | None = None
    needs_review: bool
    ood_score: float | None = None
    model_version: str
    created_at: UtcDateTime | None = None

    @field_validator("probabilities", mode="before")
    @classmethod
    def _by_slug(cls, v: Any) -> Any:
        return dict(zip(SLUGS, v)) if isinstance(v, (list, tuple)) else v

    @computed_field  # type: ignore[prop-decorator]
    @property
    def category_name(self) -> str | None:
        return NAMES.get(self.category)


class HumanLabelRead(ReadModel):
    category: str
    labelled_by: str
    created_at: UtcDateTime | None = None


class HumanScaleRef(ReadModel):
    """A curator's scale reading: while it is the latest, it is the image's scale."""

    scale_value: float
    scale_unit: str
    bar_px: float | None = None
    pixel_size_nm: float
    action: str
    labelled_by: str
    created_at: UtcDateTime | None = None


class SubcategoryRef(ReadModel):
    id: int
    name: str
    parent_category: str | None = None
    method: str
    k: int


class StepsRead(BaseModel):
    scale: str
    classification: str


@dataclass
class ImageDetail:
    """The rows that make one image's record."""

    image: Image
    scale: ScaleReading | None
    prediction: Prediction | None
    label: HumanLabel | None
    subcategory: Subcategory | None
    human_scale: HumanScale | None = None


class RecordRef(BaseModel):
    """A repository record (and version) the image belongs to."""

    record_id: str
    record_version: str | None = Field(None, description="the record's version as the repository names it")
    linked_at: UtcDateTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        if isinstance(data, ImageRecord):
            return {"record_id": data.record_id, "record_version": data.record_version or None,
                    "linked_at": data.created_at}
        return data


def _records(img: Image) -> dict[str, Any]:
    links = list(img.records)
    return {"record_id": links[0].record_id if links else None, "records": links}


_SUMMARY_COLUMNS = ("id", "filename", "status", "category", "category_source", "confidence",
                    "pixel_size_nm", "scale_nm", "subcategory_id", "created_at")
_DETAIL_COLUMNS = ("sha256", "bytes", "width", "height", "format", "bit_depth", "pages", "mode", "error",
                   "updated_at")


class ImageSummary(BaseModel):
    """One image in a search result."""

    id: int
    filename: str
    record_id: str | None = Field(None, description="the first record the image was stored under (see records)")
    records: list[RecordRef] = Field(default_factory=list, description="every record (version) holding the "
                                                                       "image, oldest first")
    status: str
    category: str | None = None
    category_source: str | None = Field(None, description="model or human")
    confidence: float | None = None
    pixel_size_nm: float | None = None
    scale_nm: float | None = Field(None, description="length of the scale bar in nm")
    scale_bin: str | None = Field(None, description="1-2-5 bin of the scale bar, e.g. '1 µm–2 µm'")
    subcategory_id: int | None = None
    created_at: UtcDateTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        if isinstance(data, Image):
            fields = {c: getattr(data, c) for c in _SUMMARY_COLUMNS}
            return {**fields, **_records(data), "scale_bin": scale_bin(data.scale_nm)}
        return data


class ImageRead(ImageSummary):
    """One image with every piece of metadata found so far."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 1, "sha256": "9f2c…", "filename": "sample.tif", "record_id": "rec-1",
        "records": [{"record_id": "rec-1", "record_version": "v2", "linked_at": "2026-11-26T10:00:00Z"}],
        "bytes": 1048576,
        "width": 1024, "height": 768, "format": "TIFF", "bit_depth": 8, "pages": 1, "mode": "L",
        "status": "done", "error": None, "steps": {"scale": "done", "classification": "done"},
        "pixel_size_nm": 4.96, "scale_nm": 1000.0, "scale_bin": "1 µm–2 µm",
        "scale": {"source": "metadata", "scale_value": 1.0, "scale_unit": "µm", "bar_px": 201.6,
                  "pixel_size_nm": 4.96, "confidence": 0.99, "fields": {"hv_kv": 5.0, "mag": 25000},
                  "databar_box": [0, 690, 1024, 768], "detail": {}, "reason": None},
        "category": "nanowires", "category_name": "Nanowires", "category_source": "model", "confidence": 0.93,
        "classification": None, "model_version": "v3-ft-fp32-1a2b3c4d", "human_label": None,
        "subcategory": None, "created_at": "2026-11-26T10:00:00Z", "updated_at": "2026-11-26T10:00:02Z"}]})

    sha256: str
    bytes: int
    width: int
    height: int
    format: str
    bit_depth: int
    pages: int
    mode: str
    error: str | None = None
    steps: StepsRead
    scale: ScaleReadingRead | None = None
    scale_source: str | None = Field(None, description="where pixel_size_nm and scale_nm come from: human "
                                     "(human_scale), metadata, ocr, or none")
    human_scale: HumanScaleRef | None = None
    category_name: str | None = None
    classification: PredictionRead | None = Field(None, description="the active model's prediction "
                                                  "(or the latest of any model)")
    model_version: str | None = None
    human_label: HumanLabelRead | None = None
    subcategory: SubcategoryRef | None = None
    updated_at: UtcDateTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_detail(cls, data: Any) -> Any:
        if not isinstance(data, ImageDetail):
            return data
        img = data.image
        return {**{c: getattr(img, c) for c in _SUMMARY_COLUMNS + _DETAIL_COLUMNS}, **_records(img),
                "scale_bin": scale_bin(img.scale_nm),
                "steps": {"scale": img.scale_state, "classification": img.inference_state},
                "scale": data.scale, "human_scale": data.human_scale,
                "scale_source": ("human" if data.human_scale is not None
                                 else data.scale.source if data.scale else None),
                "category_name": NAMES.get(img.category) if img.category else None,
                "classification": data.prediction,
                "model_version": data.prediction.model_version if data.prediction else None,
                "human_label": data.label, "subcategory": data.subcategory}


class ImagePage(BaseModel):
    items: list[ImageSummary]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class PredictionHistory(BaseModel):
    image_id: int
    predictions: list[PredictionRead] = Field(description="every model's prediction, newest first")


class UploadError(BaseModel):
    code: str
    message: str


class UploadItem(BaseModel):
    filename: str | None
    id: int | None = None
    sha256: str | None = None
    status: str | None = None
    duplicate: bool | None = None
    record_id: str | None = None
    record_version: str | None = None
    record_added: bool | None = Field(None, description="true when this upload linked the image to the record "
                                                        "(version) anew; false when it already was")
    error: UploadError | None = None


class UploadResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "items": [{"filename": "a.tif", "id": 1, "sha256": "9f2c…", "status": "pending", "duplicate": False},
                  {"filename": "notes.pdf", "error": {"code": "unsupported_format",
                                                     "message": "PDF files are not supported; send TIFF, PNG, "
                                                                "JPEG or BMP"}}],
        "accepted": 1, "rejected": 1}]})

    items: list[UploadItem]
    accepted: int
    rejected: int


# ---- backfill: which bytes are known already (POST /v1/images/lookup) ----

MAX_LOOKUP = 1000
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]


class LookupRequest(BaseModel):
    """The sha256 of files a client holds; the reply says which semtag stores already."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"sha256": ["9f2c" + "0" * 60]}]})

    sha256: list[Sha256Hex] = Field(min_length=1, max_length=MAX_LOOKUP,
                                    description=f"hex SHA-256 digests, 1–{MAX_LOOKUP} per request")


class KnownImage(BaseModel):
    """Bytes semtag stores: the image, its state, whether it has a sidecar, and every record holding it."""

    sha256: str
    id: int
    filename: str
    status: str
    has_sidecar: bool
    records: list[RecordRef] = Field(default_factory=list, description="every record (version) holding the image")


class LookupResponse(BaseModel):
    known: list[KnownImage] = Field(description="the digests semtag stores, in the order asked")
    unknown: list[str] = Field(description="the digests it does not store (send those files)")


# ---- re-processing (the ``reprocess`` job, ``semtag reprocess``) ----

ReprocessStep = Literal["scale", "classify"]
ScaleSourceFilter = Literal["metadata", "ocr", "none", "unread"]
StatusFilter = Literal["pending", "processing", "done", "failed"]
LaxDateTime = Annotated[datetime | None, Field(strict=False)]


class ReprocessParams(BaseModel):
    """Re-read the scale and/or classify again the images that match every filter given (none: all images).

    Reclassifying adds the active model's prediction to images that have none from it (earlier ones stay
    as history); a human label stays the image's category. Re-reading replaces the machine's scale
    reading; a curator's reading stays the image's scale."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"steps": ["scale"], "scale_source": ["ocr", "none"]},
        {"steps": ["classify"], "model_version": "v3-ft-fp32-1a2b3c4d", "record_id": "10.5281/zenodo.77"}]})

    steps: list[ReprocessStep] = Field(default_factory=lambda: list(get_args(ReprocessStep)), min_length=1,
                                       max_length=2,
                                       description="scale: read the scale again; classify: with the active model")
    record_id: str | None = Field(None, min_length=1, max_length=255, description="images in this record")
    record_version: str | None = Field(None, min_length=1, max_length=64, description="with record_id: that version")
    uploaded_from: LaxDateTime = Field(None, description="uploaded at or after (RFC 3339; no zone: UTC)")
    uploaded_before: LaxDateTime = Field(None, description="uploaded before (RFC 3339; no zone: UTC)")
    status: list[StatusFilter] | None = Field(None, min_length=1, description="images in one of these states")
    scale_source: list[ScaleSourceFilter] | None = Field(
        None, min_length=1, description="whose machine reading came from metadata, ocr, none (no scale found), "
                                        "or unread (no reading stored)")
    model_version: str | None = Field(None, min_length=1, max_length=64,
                                      description="images a prediction of this model version exists for")
    dry_run: bool = Field(False, description="count what would be done, change nothing")

    @field_validator("uploaded_from", "uploaded_before", mode="before")
    @classmethod
    def _text_dates(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, (str, datetime)):
            raise ValueError("give a date or time as text, e.g. 2026-01-31 or 2026-01-31T12:00:00Z")
        return v

    @field_validator("uploaded_from", "uploaded_before")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> ReprocessParams:
        if len(set(self.steps)) != len(self.steps):
            raise ValueError("steps are listed twice")
        if self.record_version is not None and self.record_id is None:
            raise ValueError("record_version needs record_id")
        if self.uploaded_from and self.uploaded_before and self.uploaded_from >= self.uploaded_before:
            raise ValueError("uploaded_from is not before uploaded_before")
        return self
