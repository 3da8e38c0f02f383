"""What the images domain reads out: one image with all its metadata, a page of search results, uploads.

Services return ORM rows (or :class:`ImageDetail`, the rows that make one image's record); these
models are the typed contract the API declares as ``response_model`` and documents in OpenAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from services.data.categories import NAMES, SLUGS
from services.scale.units import scale_bin
from services.tables import HumanLabel, Image, Prediction, ScaleReading, Subcategory
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


_SUMMARY_COLUMNS = ("id", "filename", "record_id", "status", "category", "category_source", "confidence",
                    "pixel_size_nm", "scale_nm", "subcategory_id", "created_at")
_DETAIL_COLUMNS = ("sha256", "bytes", "width", "height", "format", "bit_depth", "pages", "mode", "error",
                   "updated_at")


class ImageSummary(BaseModel):
    """One image in a search result."""

    id: int
    filename: str
    record_id: str | None = None
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
            return {**fields, "scale_bin": scale_bin(data.scale_nm)}
        return data


class ImageRead(ImageSummary):
    """One image with every piece of metadata found so far."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 1, "sha256": "9f2c…", "filename": "sample.tif", "record_id": "rec-1", "bytes": 1048576,
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
        return {**{c: getattr(img, c) for c in _SUMMARY_COLUMNS + _DETAIL_COLUMNS},
                "scale_bin": scale_bin(img.scale_nm),
                "steps": {"scale": img.scale_state, "classification": img.inference_state},
                "scale": data.scale, "category_name": NAMES.get(img.category) if img.category else None,
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
