"""What the records domain reads out: one record with its images, a deletion (the audit row)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.images.schemas import ImageRead
from services.tables import Deletion
from services.types import UtcDateTime


class RecordRead(BaseModel):
    """A repository record: its versions and one page of its images, each with all its metadata."""

    record_id: str
    versions: list[str | None] = Field(description="the record's versions semtag knows (null: unversioned)")
    image_count: int = Field(description="images in the record (in the version asked for, if any)")
    images: list[ImageRead]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class DeletionRead(BaseModel):
    """One takedown, as the audit trail keeps it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 3, "kind": "record", "target": "rec-1", "record_version": None, "deleted_by": "admin key",
        "deleted_at": "2026-11-27T10:00:00Z", "images_erased": [4, 5], "images_kept": [6],
        "links_removed": 3, "blobs_erased": 2}]})

    id: int
    kind: str = Field(description="record or image")
    target: str = Field(description="the record id, or the image id")
    record_version: str | None = None
    deleted_by: str
    deleted_at: UtcDateTime
    images_erased: list[int] = Field(description="images erased with their rows and blobs: no record holds them")
    images_kept: list[int] = Field(description="images of the record that another record still holds")
    links_removed: int
    blobs_erased: int

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        if isinstance(data, Deletion):
            d = data.detail or {}
            return {"id": data.id, "kind": data.kind, "target": data.target, "record_version": data.record_version,
                    "deleted_by": data.deleted_by, "deleted_at": data.deleted_at,
                    "images_erased": [i["id"] for i in d.get("images_erased", [])],
                    "images_kept": d.get("images_kept", []), "links_removed": len(d.get("links_removed", [])),
                    "blobs_erased": len(d.get("blobs_erased", []))}
        return data


class DeletionPage(BaseModel):
    items: list[DeletionRead]
    next_cursor: str | None = None
