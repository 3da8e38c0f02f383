"""The per-image steps that workers run: read the scale, classify. Idempotent by image id.

Each step checks the image's step state first, so running a step twice (a redelivered
task, the reconciler) writes its rows once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import object_session

from services.classify import registry
from services.events import outbox as events
from services.images.imaging import ImageRejected, memory_held, release_memory
from services.images.ingest import enqueue_processing
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, Runtime
from services.tables import HumanScale, Image, ImageStatus, ModelVersion, Prediction, ScaleReading, StepState, utcnow
from services.types import iso_utc

log = logging.getLogger(__name__)


def refresh_status(img: Image) -> None:
    """Overall status from the step states. Callers that change a step hold the image's row lock
    (:func:`_locked`), so two steps finishing at once cannot both see the other still pending."""
    if img.status == ImageStatus.failed.value:
        return
    if img.scale_state != StepState.pending.value and img.inference_state != StepState.pending.value:
        became_done = img.status != ImageStatus.done.value
        img.status = ImageStatus.done.value
        session = object_session(img)
        if became_done and session is not None:  # in the transaction that records it (a detached row changes nothing)
            events.image_processed(session, img)
    else:
        img.status = ImageStatus.processing.value


def _locked(s, image_id: int) -> Image | None:  # noqa: ANN001
    """The image row, locked for this transaction (SELECT … FOR UPDATE on PostgreSQL; SQLite serialises
    writers anyway): the scale and inference workers update the same row."""
    return s.get(Image, image_id, with_for_update=True)


def _locked_many(s, image_ids: list[int]) -> dict[int, Image]:  # noqa: ANN001
    """The image rows of a batch, locked in id order by one statement (as :func:`_locked` does one by one:
    two batches sharing images wait for each other instead of deadlocking); missing ids are left out."""
    ids = sorted(set(image_ids))
    rows = s.scalars(select(Image).where(Image.id.in_(ids)).order_by(Image.id).with_for_update()).all()
    return {img.id: img for img in rows}


def fail_image(rt: Runtime, image_id: int, reason: str) -> None:
    spent: set[str] = set()
    with rt.session() as s:
        img = _locked(s, image_id)
        if img is None:
            return
        img.status = ImageStatus.failed.value
        img.error = reason
        for attr in ("scale_state", "inference_state"):
            if getattr(img, attr) == StepState.pending.value:
                setattr(img, attr, StepState.failed.value)
        if img.input_key:  # no classification will read it now
            key, img.input_key = img.input_key, None
            spent = _unused_inputs(s, {key})
    _erase_inputs(rt, spent)


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
    img = _begin(rt, image_id, "scale_state")
    if img is None:
        return "skipped"
    # on local disk (the blob store's own, or its cache) while the step runs; a missing one fails to decode
    try:
        with rt.store.local_files([img.storage_key, img.sidecar_key], missing_ok=True) as (path, sidecar):
            assert path is not None
            return _read_scale_of(rt, image_id, path, sidecar)
    finally:
        release_memory()  # the decoded image and the reader's masks are freed: return the pages too


def _read_scale_of(rt: Runtime, image_id: int, path: Path, sidecar: Path | None) -> str:
    from services.scale import read_scale as read_scale_of_file
    from services.scale.reader import decode_for_scale

    try:
        decoded = decode_for_scale(path, rt.settings.max_pixels)
    except (ImageRejected, OSError) as exc:
        reason = exc.message if isinstance(exc, ImageRejected) else str(exc)
        fail_image(rt, image_id, f"decode failed: {reason}")
        return "failed"
    result = read_scale_of_file(path, decoded=decoded, sidecar=sidecar, max_pixels=rt.settings.max_pixels)
    del decoded
    try:
        with rt.session() as s:
            img = _locked(s, image_id)
            if img is None or img.scale_state != StepState.pending.value:
                return "skipped"
            _store_reading(s, image_id, result.row())  # a re-read (reprocess) replaces the reading in place
            if s.scalar(select(HumanScale.id).where(HumanScale.image_id == image_id).limit(1)) is None:
                img.pixel_size_nm = result.pixel_size_nm  # a curator's reading, made meanwhile, stays the scale
                img.scale_nm = result.scale_nm
            img.scale_state = StepState.done.value
            refresh_status(img)
    except IntegrityError:  # a concurrent run of the same step stored it first
        return "skipped"
    return result.source


# What a re-read keeps of the reading it replaces (in the new reading's ``detail.previous``).
_PREVIOUS = ("source", "scale_value", "scale_unit", "bar_px", "pixel_size_nm", "confidence")


def _store_reading(s, image_id: int, row: dict) -> None:  # noqa: ANN001
    """The image's machine reading: one row per image, so a re-read (a reprocess job) replaces it in place,
    its ``created_at`` the time of the re-read and what it replaced summarised in ``detail.previous``.
    A curator's reading is not a machine reading and is never touched here."""
    old = s.scalar(select(ScaleReading).where(ScaleReading.image_id == image_id))
    if old is None:
        s.add(ScaleReading(image_id=image_id, **row))
        return
    previous = {k: getattr(old, k) for k in _PREVIOUS}
    previous["read_at"] = iso_utc(old.created_at)
    for k, v in row.items():
        setattr(old, k, v)
    old.detail = {**(row.get("detail") or {}), "previous": previous}
    old.created_at = utcnow()


def active_model(rt: Runtime, task: str = "classification") -> ModelVersion | None:
    with rt.session() as s:
        return registry.active(s, task)


def classify(rt: Runtime, image_id: int) -> str:
    """Classify one image (a batch of one); see :func:`classify_batch`."""
    return classify_batch(rt, [image_id])[image_id]


def _engine(rt: Runtime, model: ModelVersion):  # noqa: ANN202
    from services.classify import inference

    st = rt.settings
    # embedded mode runs each image as a batch of one: warming up the configured batch there would only cost
    # its activations' memory once
    batch = 1 if st.embedded_tasks else st.inference_batch_size
    sizes = sorted({1, batch}) if st.inference_warmup else []
    return inference.engine_for(model.file_path, model.file_sha256, loader=lambda: inference.Engine(
        model.file_path, threads=st.inference_threads, warmup=sizes,
        review_threshold=st.review_confidence_threshold, max_pixels=st.max_pixels,
        memory_arena=st.inference_memory_arena, spin=st.inference_spin))


def warm_engine(rt: Runtime) -> str | None:
    """Load and warm up the active model's engine (an inference worker's start); its version or None."""
    model = active_model(rt)
    if model is None:
        return None
    _engine(rt, model)
    return model.version


def _store_predictions(rt: Runtime, model: ModelVersion, done: list) -> dict[int, str]:
    """One transaction and a handful of statements per batch, whatever its size: the rows locked by one
    SELECT … FOR UPDATE, the existing predictions found by one query, the new ones inserted together.
    The prepared inputs of the classified images are erased after the commit."""
    out: dict[int, str] = {}
    spent: set[str] = set()
    with rt.session() as s:
        images = _locked_many(s, [iid for iid, _ in done])
        stored = set(s.scalars(select(Prediction.image_id).where(
            Prediction.image_id.in_(list(images)), Prediction.model_version == model.version)))
        for iid, res in sorted(done, key=lambda d: d[0]):
            img = images.get(iid)
            if img is None or img.inference_state != StepState.pending.value:
                out[iid] = "skipped"
                continue
            if iid not in stored:
                s.add(Prediction(image_id=iid, model_id=model.id, model_version=model.version, **res.to_dict()))
            if img.category_source != "human":
                img.category, img.category_source, img.confidence = res.category, "model", res.confidence
            img.inference_state = StepState.done.value
            if img.input_key:
                spent.add(img.input_key)
                img.input_key = None
            refresh_status(img)
            out[iid] = res.category
        spent = _unused_inputs(s, spent)
    _erase_inputs(rt, spent)
    return out


def _unused_inputs(s, keys: set[str]) -> set[str]:  # noqa: ANN001
    """The prepared-input keys no other image row still names (content-addressed: two could share one)."""
    if not keys:
        return keys
    s.flush()  # the rows giving them up are written first
    return keys - set(s.scalars(select(Image.input_key).where(Image.input_key.in_(keys))))


def _erase_inputs(rt: Runtime, keys: set[str]) -> None:
    for key in keys:
        try:
            rt.store.delete(key)
        except Exception:  # a leftover transient blob is harmless; the prediction is stored
            log.warning("could not erase the prepared input %s", key, exc_info=True)


def classify_batch(rt: Runtime, image_ids: list[int]) -> dict[int, str]:
    """Classify images with the active model, as one batch; returns an outcome per id.

    The active model is read once, so one batch never mixes model versions; activating another
    model takes effect at the next batch. Without an active model images wait in ``no_model``.
    A prediction is unique per (image, model version): a redelivered batch writes nothing twice.
    An image that cannot be decoded fails alone, with its reason.
    """
    out: dict[int, str] = {}
    model = active_model(rt)
    todo: list[tuple[int, str, str | None]] = []  # (id, original, prepared input)
    with rt.session() as s:
        # locked in id order, as _store_predictions does: no deadlock; 'no_model' and 'processing' are written
        # beside the scale step's result
        images = _locked_many(s, image_ids)
        for iid in sorted(set(image_ids)):
            img = images.get(iid)
            if img is None or img.status == ImageStatus.failed.value or img.inference_state != StepState.pending.value:
                out[iid] = "skipped"
                continue
            if model is None:
                img.inference_state = StepState.no_model.value
                refresh_status(img)
                out[iid] = "no_model"
                continue
            if img.status == ImageStatus.pending.value:
                img.status = ImageStatus.processing.value
            todo.append((iid, img.storage_key, img.input_key))
    if not todo or model is None:
        return out
    engine = _engine(rt, model)
    # the input decoded at ingest where there is one for this model's scale (services.images.prepared)
    usable = 0 < engine.pp.input_size <= rt.settings.inference_input_side
    keys = [(inp if usable and inp else key) for _, key, inp in todo]
    results = _classify_keys(rt, engine, keys)
    retry = [n for n, ((_, _, err), k, (_, key, _)) in enumerate(zip(results, keys, todo)) if err and k != key]
    if retry:  # a prepared input missing or unreadable: the original instead
        log.warning("%d prepared input(s) could not be read; decoding the originals", len(retry))
        for n, again in zip(retry, _classify_keys(rt, engine, [todo[n][1] for n in retry])):
            results[n] = again
    failed = [(iid, err or "cannot be decoded") for (iid, _, _), (_, res, err) in zip(todo, results) if res is None]
    done = [(iid, res) for (iid, _, _), (_, res, _) in zip(todo, results) if res is not None]
    try:
        out.update(_store_predictions(rt, model, done))
    except IntegrityError:  # another worker stored some of them meanwhile: store one by one
        for item in done:
            try:
                out.update(_store_predictions(rt, model, [item]))
            except IntegrityError:
                out[item[0]] = "skipped"
    for iid, reason in failed:
        fail_image(rt, iid, f"decode failed: {reason}")
        out[iid] = "failed"
    return out


def _classify_keys(rt: Runtime, engine, keys: list[str]) -> list:  # noqa: ANN001
    # the batch's pages are kept for the next one, and given back once no batch has followed for a while
    with memory_held(), rt.store.local_files(keys, missing_ok=True) as paths:  # a missing blob fails alone
        return list(engine.classify_paths(paths, batch_size=max(1, rt.settings.inference_batch_size)))


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


def requeue_waiting(rt: Runtime, reclassify: bool = False) -> int:
    """After a model is activated: images waiting in ``no_model`` go back to pending and are queued.

    With ``reclassify`` also every classified image that has no prediction of the active model
    (its earlier predictions stay as history). With no queue at hand (a CLI process in embedded
    mode) they are still marked pending, and the service's reconciler picks them up.
    """
    model = active_model(rt)
    states = [StepState.no_model.value] + ([StepState.done.value] if reclassify else [])
    with rt.session() as s:
        q = select(Image).where(Image.inference_state.in_(states), Image.status != ImageStatus.failed.value)
        if model is not None and reclassify:
            q = q.where(Image.id.not_in(select(Prediction.image_id).where(Prediction.model_version == model.version)))
        ids = []
        for img in s.scalars(q):
            img.inference_state = StepState.pending.value
            img.updated_at = utcnow()
            refresh_status(img)
            ids.append(img.id)
    for image_id in ids:
        enqueue_processing(rt, image_id, (TASK_CLASSIFY,))
    return len(ids)


@dataclass
class Activation:
    model: ModelVersion
    queued_images: int


def activate_model(rt: Runtime, version: str, reclassify: bool = False) -> Activation:
    """Activate ``version`` and queue the images that waited for a model (and, with ``reclassify``,
    every image the model has not classified yet)."""
    with rt.session() as s:
        model = registry.activate(s, version)
    return Activation(model, requeue_waiting(rt, reclassify))
