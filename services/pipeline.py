"""The per-image steps that workers run: read the scale, classify. Idempotent by image id.

Each step checks the image's step state first, so running a step twice (a redelivered
task, the reconciler) writes its rows once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.imaging import ImageRejected, load_gray
from services.ingest import enqueue_processing
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, Runtime
from services.tables import Image, ImageStatus, ModelVersion, ScaleReading, StepState, utcnow

log = logging.getLogger(__name__)


def refresh_status(img: Image) -> None:
    """Overall status from the step states."""
    if img.status == ImageStatus.failed.value:
        return
    if img.scale_state != StepState.pending.value and img.inference_state != StepState.pending.value:
        img.status = ImageStatus.done.value
    else:
        img.status = ImageStatus.processing.value


def fail_image(rt: Runtime, image_id: int, reason: str) -> None:
    with rt.session() as s:
        img = s.get(Image, image_id)
        if img is None:
            return
        img.status = ImageStatus.failed.value
        img.error = reason
        for attr in ("scale_state", "inference_state"):
            if getattr(img, attr) == StepState.pending.value:
                setattr(img, attr, StepState.failed.value)


def _begin(rt: Runtime, image_id: int, state_attr: str) -> Image | None:
    """The image if its step is still to do, marking it processing; None otherwise."""
    with rt.session() as s:
        img = s.get(Image, image_id)
        if img is None or img.status == ImageStatus.failed.value:
            return None
        if getattr(img, state_attr) != StepState.pending.value:
            return None
        if img.status == ImageStatus.pending.value:
            img.status = ImageStatus.processing.value
        return img


def read_scale(rt: Runtime, image_id: int) -> str:
    """Decode the image, read its scale (metadata, then OCR) and store the reading."""
    from services.scale import read_scale as read_scale_of_file

    img = _begin(rt, image_id, "scale_state")
    if img is None:
        return "skipped"
    path = rt.store.local_path(img.storage_key)
    sidecar = rt.store.local_path(img.sidecar_key) if img.sidecar_key else None
    try:
        gray = load_gray(path, rt.settings.max_pixels)
    except (ImageRejected, OSError) as exc:
        reason = exc.message if isinstance(exc, ImageRejected) else str(exc)
        fail_image(rt, image_id, f"decode failed: {reason}")
        return "failed"
    result = read_scale_of_file(path, gray=gray, sidecar=sidecar, max_pixels=rt.settings.max_pixels)
    try:
        with rt.session() as s:
            img = s.get(Image, image_id)
            if img is None or img.scale_state != StepState.pending.value:
                return "skipped"
            s.add(ScaleReading(image_id=image_id, **result.row()))
            img.pixel_size_nm = result.pixel_size_nm
            img.scale_nm = result.scale_nm
            img.scale_state = StepState.done.value
            refresh_status(img)
    except IntegrityError:  # a concurrent run of the same step stored it first
        return "skipped"
    return result.source


def active_model(rt: Runtime, task: str = "classification") -> ModelVersion | None:
    with rt.session() as s:
        return s.scalar(select(ModelVersion).where(ModelVersion.task == task, ModelVersion.active.is_(True)))


def classify(rt: Runtime, image_id: int) -> str:
    """Classify with the active model; without one the image waits in state ``no_model``."""
    img = _begin(rt, image_id, "inference_state")
    if img is None:
        return "skipped"
    model = active_model(rt)
    with rt.session() as s:
        img = s.get(Image, image_id)
        if img is None or img.inference_state != StepState.pending.value:
            return "skipped"
        if model is None:
            img.inference_state = StepState.no_model.value
            refresh_status(img)
            return "no_model"
    # An active model exists: the inference engine (services.inference) does the work.
    from services.inference import classify_stored_image

    return classify_stored_image(rt, image_id, model)


def reconcile(rt: Runtime, older_than_s: float | None = None) -> int:
    """Re-enqueue the steps of images left pending/processing longer than ``older_than_s``."""
    older = rt.settings.reconcile_after_s if older_than_s is None else older_than_s
    cutoff = utcnow() - timedelta(seconds=older)
    todo: list[tuple[int, tuple[str, ...]]] = []
    with rt.session() as s:
        rows = s.scalars(
            select(Image).where(
                Image.status.in_([ImageStatus.pending.value, ImageStatus.processing.value]),
                Image.updated_at <= cutoff,
            ).limit(10_000)
        ).all()
        for img in rows:
            steps = tuple(
                task for task, attr in ((TASK_READ_SCALE, "scale_state"), (TASK_CLASSIFY, "inference_state"))
                if getattr(img, attr) == StepState.pending.value
            )
            if not steps:
                refresh_status(img)
                continue
            img.updated_at = utcnow()
            todo.append((img.id, steps))
    for image_id, steps in todo:
        enqueue_processing(rt, image_id, steps)
    if todo:
        log.info("reconciler re-enqueued %d images", len(todo))
    return len(todo)
