"""The events domain's contracts: event types and their data, the envelope receivers get, subscriptions and
deliveries as the admin API shows them."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.export.formats import MetadataFormat
from services.images.schemas import RecordRef
from services.types import UtcDateTime


class EventType(str, Enum):
    image_processed = "image.processed"
    image_labelled = "image.labelled"
    image_scale_corrected = "image.scale_corrected"
    subcategories_updated = "subcategories.updated"
    model_activated = "model.activated"
    record_deleted = "record.deleted"


EVENT_DESCRIPTIONS = {
    EventType.image_processed: "an image's processing finished (scale read, classified or waiting for a model): "
                               "its results and its metadata in the subscription's format",
    EventType.image_labelled: "a curator set or undid an image's human label",
    EventType.image_scale_corrected: "a curator confirmed, corrected or undid an image's scale reading",
    EventType.subcategories_updated: "a clustering run wrote a new category → subcategory tree",
    EventType.model_activated: "another classification model became the active one",
    EventType.record_deleted: "a takedown (a record, a record version or an image): what was erased and kept",
}


# ---- the data of each event type (the envelope's `data`) ----------------------------------

class ImageProcessedData(BaseModel):
    image_id: int
    sha256: str
    filename: str
    status: str = Field(description="done")
    category: str | None = None
    category_source: str | None = Field(None, description="model or human")
    confidence: float | None = None
    pixel_size_nm: float | None = None
    scale_nm: float | None = None
    subcategory_id: int | None = None
    records: list[RecordRef] = Field(default_factory=list)
    metadata_format: str | None = Field(None, description="the subscription's format: kit-sem, jsonld or semtag")
    metadata: dict[str, Any] | None = Field(None, description="the image's metadata document in that format, as "
                                                              "it stood when the event was dispatched; null when "
                                                              "the image was taken down before")


class ImageLabelledData(BaseModel):
    image_id: int
    sha256: str
    action: Literal["set", "removed"]
    label: str = Field(description="the category of the label set or removed")
    labelled_by: str | None = Field(None, description="who set the label (set only)")
    category: str | None = Field(None, description="the image's category now")
    category_source: str | None = Field(None, description="human, model, or null")
    records: list[RecordRef] = Field(default_factory=list)


class ScaleCorrectedData(BaseModel):
    image_id: int
    sha256: str
    action: str = Field(description="confirmed (the machine's reading), corrected, or removed (undone)")
    scale_value: float | None = None
    scale_unit: str | None = None
    bar_px: float | None = None
    pixel_size_nm: float | None = Field(None, description="the image's pixel size now")
    scale_nm: float | None = Field(None, description="the image's scale-bar length now")
    corrected_by: str | None = None
    records: list[RecordRef] = Field(default_factory=list)


class SubcategoryBrief(BaseModel):
    id: int
    parent_category: str | None = None
    name: str
    size: int
    representatives: list[int] = Field(default_factory=list)


class SubcategoriesUpdatedData(BaseModel):
    run_id: int | None = Field(None, description="the clustering job's id (null for a CLI run)")
    method: str
    within: str
    k: int
    images: int = Field(description="images that belong to a subcategory now")
    subcategories: list[SubcategoryBrief]


class ModelActivatedData(BaseModel):
    version: str
    task: str
    architecture: str
    file_sha256: str
    previous_version: str | None = None


class ErasedImage(BaseModel):
    id: int
    sha256: str


class RecordDeletedData(BaseModel):
    deletion_id: int
    kind: str = Field(description="record (a record or one version of it) or image (one image's bytes)")
    target: str = Field(description="the record id, or the image id")
    record_version: str | None = None
    deleted_by: str
    deleted_at: UtcDateTime
    images_erased: list[ErasedImage]
    images_kept: list[int] = Field(description="images of the record another record still holds")
    links_removed: list[RecordRef]


class EventEnvelope(BaseModel):
    """The JSON body of every delivery (Standard Webhooks' recommended shape, plus the id)."""

    id: str = Field(description="the event id, also sent as the webhook-id header: the same on every retry")
    type: EventType
    timestamp: str = Field(description="when the event happened (RFC 3339, UTC)")
    data: dict[str, Any]


# ---- subscriptions ------------------------------------------------------------------------

class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, json_schema_extra={"examples": [
        {"url": "https://repo.example.org/hooks/semtag", "event_types": ["image.processed", "record.deleted"],
         "metadata_format": "kit-sem", "description": "the repository's indexer"}]})

    url: str = Field(min_length=1, max_length=2048, description="where events are POSTed (SEMTAG_EVENTS_URL_ALLOWLIST)")
    event_types: list[EventType] = Field(min_length=1, max_length=len(EventType))
    metadata_format: MetadataFormat = Field(MetadataFormat.kit_sem, description="image.processed's metadata format")
    description: str | None = Field(None, max_length=255)
    secret: SecretStr | None = Field(None, description="whsec_ and the base64 of 24–64 random bytes; made for you "
                                                       "when absent. Shown once, in this reply")

    @field_validator("event_types")
    @classmethod
    def _unique(cls, v: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(v))


class SubscriptionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=2048)
    event_types: list[EventType] | None = Field(None, min_length=1, max_length=len(EventType))
    metadata_format: MetadataFormat | None = None
    description: str | None = Field(None, max_length=255)
    active: bool | None = Field(None, description="false: no new deliveries (pending ones wait)")
    rotate_secret: bool = Field(False, description="make a new secret; the reply shows it, once")


class DeliveryCounts(BaseModel):
    pending: int = 0
    sending: int = 0
    delivered: int = 0
    dead: int = 0


class SubscriptionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    url: str
    event_types: list[str]
    metadata_format: str
    description: str | None = None
    active: bool
    created_by: str | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    deliveries: DeliveryCounts = Field(default_factory=DeliveryCounts)


class SubscriptionCreated(SubscriptionRead):
    secret: str = Field(description="the signing secret (whsec_…): shown in this reply only; keep it in the "
                                    "receiver's configuration")


class SubscriptionList(BaseModel):
    items: list[SubscriptionRead]


# ---- deliveries ---------------------------------------------------------------------------

DeliveryState = Literal["pending", "sending", "delivered", "dead"]


class DeliveryRead(BaseModel):
    id: int
    event_id: str = Field(description="the webhook-id the receiver sees")
    event_type: str
    subject: str
    subscription_id: int
    status: DeliveryState
    attempts: int
    created_at: UtcDateTime
    last_attempt_at: UtcDateTime | None = None
    last_status_code: int | None = Field(None, description="the receiver's HTTP status at the last attempt")
    last_error: str | None = None
    next_attempt_at: UtcDateTime | None = Field(None, description="when it is tried again (pending only)")
    retry_until: UtcDateTime = Field(description="after a failure past this it is dead-lettered")
    delivered_at: UtcDateTime | None = None


class DeliveryDetail(DeliveryRead):
    body: dict[str, Any] = Field(description="the JSON body sent (an EventEnvelope)")


class DeliveryPage(BaseModel):
    items: list[DeliveryRead]
    next_cursor: int | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class RedeliverResult(BaseModel):
    redelivered: int = Field(description="deliveries put back in the queue, each under its own webhook-id")


class EventTypeRead(BaseModel):
    type: EventType
    description: str


class EventTypeList(BaseModel):
    items: list[EventTypeRead]
