"""The curation domain's contracts: human labels and the review queue."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, computed_field

from services.data.categories import NAMES
from services.types import UtcDateTime


class LabelRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"category": "particles"}, {"category": 6}]})

    category: str | Annotated[int, Strict()] = Field(
        description="a slug, the display name, a dataset folder name or the index 0–9")


class LabelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    category: str
    labelled_by: str
    created_at: UtcDateTime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def category_name(self) -> str:
        return NAMES[self.category]


class LabelRemoved(BaseModel):
    """What a removed label leaves: the image's category now comes from an earlier label, the model, or nothing."""

    image_id: int
    removed: LabelRead
    category: str | None = None
    category_source: str | None = Field(None, description="human (an earlier label), model, or null")


class TopCategory(BaseModel):
    category: str
    probability: float


class ReviewScale(BaseModel):
    """The image's scale as the queue shows it."""

    source: str = Field(description="human, metadata, ocr or none")
    scale_value: float | None = None
    scale_unit: str | None = None
    pixel_size_nm: float | None = None
    confidence: float | None = None


class ReviewItem(BaseModel):
    image_id: int
    filename: str
    record_id: str | None = None
    category: str
    confidence: float
    margin: float | None = None
    ood_score: float | None = None
    ood: bool = Field(False, description="out of distribution (ood_score >= 0.5)")
    model_version: str | None = None
    top3: list[TopCategory] = Field(default_factory=list, description="the three most probable categories")
    scale: ReviewScale | None = None
    labelled: str | None = Field(None, description="the current human label, when the queue includes labelled ones")


class ReviewPage(BaseModel):
    model_version: str | None = Field(description="the active model; null when none is active")
    total: int
    items: list[ReviewItem]
    limit: int
    offset: int
    next_offset: int | None = None


class ScaleRequest(BaseModel):
    """A curator's scale reading: the scale bar's label, and optionally the bar's length in pixels or the
    pixel size. Without them the machine reading's measured bar is used."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"scale_value": 2, "scale_unit": "µm"}, {"scale_value": 500, "scale_unit": "nm", "bar_px": 181.5}]})

    scale_value: float = Field(gt=0, le=1e6, allow_inf_nan=False, description="the number on the scale bar")
    scale_unit: str = Field(max_length=16, description="nm, µm (or um), mm, …")
    bar_px: float | None = Field(None, gt=0, le=1e6, allow_inf_nan=False,
                                 description="the bar's length in pixels; default: the machine's measurement")
    pixel_size_nm: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False,
                                        description="the pixel size; default: scale / bar length")


class HumanScaleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    scale_value: float
    scale_unit: str
    bar_px: float | None = None
    pixel_size_nm: float
    action: str = Field(description="confirmed (the machine's reading) or corrected")
    labelled_by: str
    created_at: UtcDateTime | None = None


class ScaleRemoved(BaseModel):
    """What an undone scale reading leaves: an earlier curator's reading, the machine's, or nothing."""

    image_id: int
    removed: HumanScaleRead
    scale_source: str | None = Field(None, description="human (an earlier reading), metadata, ocr, or null")
    pixel_size_nm: float | None = None
    scale_nm: float | None = None


class CurationHistory(BaseModel):
    """Every human label and scale reading the image has, newest first, with who and when."""

    image_id: int
    labels: list[LabelRead]
    scales: list[HumanScaleRead]
