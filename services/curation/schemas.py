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


class ReviewItem(BaseModel):
    image_id: int
    filename: str
    record_id: str | None = None
    category: str
    confidence: float
    margin: float | None = None
    ood_score: float | None = None


class ReviewPage(BaseModel):
    model_version: str | None = Field(description="the active model; null when none is active")
    total: int
    items: list[ReviewItem]
    limit: int
    offset: int
    next_offset: int | None = None
