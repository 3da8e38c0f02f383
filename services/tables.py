"""The relational schema (SQLAlchemy 2 typed models); identical on PostgreSQL and SQLite.

Changes go through an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT primary keys that still autoincrement on SQLite (where only INTEGER PRIMARY KEY does).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ImageStatus(str, enum.Enum):
    pending = "pending"
    processing = "processing"
    done = "done"
    failed = "failed"


class StepState(str, enum.Enum):
    """State of one pipeline step (scale reading, classification) for one image."""

    pending = "pending"
    done = "done"
    no_model = "no_model"  # classification waits for an active model
    failed = "failed"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Role(str, enum.Enum):
    ingest = "ingest"
    read = "read"
    curator = "curator"
    admin = "admin"


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    bit_depth: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int] = mapped_column(Integer, default=1)
    mode: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(255))
    sidecar_key: Mapped[str | None] = mapped_column(String(255))
    # the classifier's input decoded at ingest (services.images.prepared), until the image is classified
    input_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.pending.value, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    scale_state: Mapped[str] = mapped_column(String(16), default=StepState.pending.value)
    inference_state: Mapped[str] = mapped_column(String(16), default=StepState.pending.value)
    # Current, searchable results (history lives in scale_readings / predictions / labels).
    category: Mapped[str | None] = mapped_column(String(64), index=True)
    category_source: Mapped[str | None] = mapped_column(String(16))  # model | human
    confidence: Mapped[float | None] = mapped_column(Float)
    pixel_size_nm: Mapped[float | None] = mapped_column(Float, index=True)
    scale_nm: Mapped[float | None] = mapped_column(Float, index=True)  # scale-bar length, for scale bins
    subcategory_id: Mapped[int | None] = mapped_column(
        ForeignKey("subcategories.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    # The records (with their versions) the image belongs to, oldest first; loaded only where asked for
    # (``selectinload(Image.records)``): the pipeline's many ``get`` calls never need them.
    records: Mapped[list[ImageRecord]] = relationship(
        back_populates="image", order_by="ImageRecord.id", lazy="raise_on_sql", passive_deletes=True)

    # AUTOINCREMENT on SQLite: the id of an erased image is never given to another one (a task still in
    # the broker, an audit row or a repository's link must not reach different bytes).
    __table_args__ = (Index("ix_images_status_updated", "status", "updated_at"), {"sqlite_autoincrement": True})


class ImageRecord(Base):
    """An image (unique bytes) in a repository record: one row per (image, record, version).

    ``record_version`` is the repository's name of the record version, ``""`` for an unversioned record
    (a NOT NULL column, so that the unique constraint holds on PostgreSQL and SQLite alike)."""

    __tablename__ = "image_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    record_id: Mapped[str] = mapped_column(String(255), index=True)
    record_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="records")

    __table_args__ = (UniqueConstraint("image_id", "record_id", "record_version", name="uq_image_records_link"),)


class Deletion(Base):
    """The audit trail of takedowns: who erased what, when (one row per DELETE)."""

    __tablename__ = "deletions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))            # record | image
    target: Mapped[str] = mapped_column(String(255))          # the record id, or the image id
    record_version: Mapped[str | None] = mapped_column(String(64))
    deleted_by: Mapped[str] = mapped_column(String(255))
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # images erased (id, sha256, filename), images kept because another record still holds them, the
    # record links removed and the blob keys erased
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ScaleReading(Base):
    __tablename__ = "scale_readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # metadata | ocr | none
    scale_value: Mapped[float | None] = mapped_column(Float)
    scale_unit: Mapped[str | None] = mapped_column(String(8))
    bar_px: Mapped[float | None] = mapped_column(Float)
    pixel_size_nm: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    databar_box: Mapped[list[int] | None] = mapped_column(JSON)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # both readings, disagreement
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """The model registry: one row per exported model file."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    task: Mapped[str] = mapped_column(String(32), default="classification")
    architecture: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str | None] = mapped_column(String(32))
    parent: Mapped[str | None] = mapped_column(String(255))
    dataset_manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    file_path: Mapped[str] = mapped_column(Text)
    file_sha256: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # Exactly one active model per task, whatever writes the table.
    __table_args__ = (Index("uq_models_one_active", "task", unique=True, postgresql_where=text("active"),
                            sqlite_where=text("active")),)


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    model_version: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    category_index: Mapped[int] = mapped_column(Integer)
    probabilities: Mapped[list[float]] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    ood_score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("image_id", "model_version", name="uq_predictions_image_model"),)


class HumanLabel(Base):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    category: Mapped[str] = mapped_column(String(64))
    labelled_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HumanScale(Base):
    """A curator's scale reading (confirmed or corrected): the image's scale while it is the latest."""

    __tablename__ = "scale_labels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    scale_value: Mapped[float] = mapped_column(Float)
    scale_unit: Mapped[str] = mapped_column(String(8))
    bar_px: Mapped[float | None] = mapped_column(Float)
    pixel_size_nm: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))  # confirmed (the machine's reading) | corrected
    labelled_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Subcategory(Base):
    __tablename__ = "subcategories"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    parent_category: Mapped[str | None] = mapped_column(String(64), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    method: Mapped[str] = mapped_column(String(32))
    k: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(Integer)
    representatives: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A curator's name (None: the generated one); a re-run whose subcategory mostly matches this one's
    # members (Jaccard >= 0.5) takes the name over and points back here with name_inherited_from.
    named_by: Mapped[str | None] = mapped_column(String(255))
    named_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    name_inherited_from: Mapped[int | None] = mapped_column(BigInteger)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A running job's lease, renewed by its worker's heartbeat: a redelivered copy of the task finds it
    # held and leaves the job alone; once it lapses (the worker died) the job may be run again.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the last message sent for it


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UiSession(Base):
    """A browser session of the curator console: an API key pasted once, held as an opaque cookie."""

    __tablename__ = "ui_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class WebhookDelivery(Base):
    """A signed ingest-webhook request already answered: a replay inside the signature window gets the
    first reply instead of being processed again (keyed by the SHA-256 of its signature)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    signature_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    status_code: Mapped[int | None] = mapped_column(Integer)   # null while the first request is processed
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class DeliveryStatus(str, enum.Enum):
    pending = "pending"      # waiting for its next attempt
    sending = "sending"      # claimed by a dispatcher (until lease_until)
    delivered = "delivered"  # the receiver answered 2xx
    dead = "dead"            # retried for the whole window: the dead-letter list


class EventOutbox(Base):
    """An outbound event, written in the transaction of the change it reports (the transactional outbox):
    committed together or not at all. The dispatcher turns it into one delivery per matching subscription
    (``dispatched_at``)."""

    __tablename__ = "event_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id, the same on every retry
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))  # what it is about: image/12, record/rec-1, model/v3…
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_event_outbox_undispatched", "dispatched_at", "id"),)


class EventSubscription(Base):
    """A receiver of events: where to POST, which types, signed with its own secret (kept: signing needs it)."""

    __tablename__ = "event_subscriptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))  # whsec_<base64>; never shown again after it is made
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_format: Mapped[str] = mapped_column(String(16), default="kit-sem")  # image.processed's metadata
    description: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class EventDelivery(Base):
    """One event to one subscription: its body (fixed when it is made, so every retry sends the same bytes
    under the same webhook-id), its attempts and what the receiver last answered."""

    __tablename__ = "event_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("event_outbox.id", ondelete="CASCADE"), index=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("event_subscriptions.id", ondelete="CASCADE"),
                                                 index=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # while sending
    retry_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)  # the window's start
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("event_id", "subscription_id", name="uq_event_deliveries_event_subscription"),
                      Index("ix_event_deliveries_due", "status", "next_attempt_at"))
