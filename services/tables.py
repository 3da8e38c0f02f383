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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
    record_id: Mapped[str | None] = mapped_column(String(255), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    bit_depth: Mapped[int] = mapped_column(Integer)
    pages: Mapped[int] = mapped_column(Integer, default=1)
    mode: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(255))
    sidecar_key: Mapped[str | None] = mapped_column(String(255))
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

    __table_args__ = (Index("ix_images_status_updated", "status", "updated_at"),)


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


class WebhookDelivery(Base):
    """A signed ingest-webhook request already answered: a replay inside the signature window gets the
    first reply instead of being processed again (keyed by the SHA-256 of its signature)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    signature_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    status_code: Mapped[int | None] = mapped_column(Integer)   # null while the first request is processed
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
