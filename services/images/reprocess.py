"""Re-processing: read scales again and/or classify again the images a filter selects (the ``reprocess`` job).

Nothing here reads a scale or runs a model itself: the selected images' steps are set back to pending
and go through the pipeline's own steps (:mod:`services.images.pipeline`), queued with
:func:`~services.images.ingest.enqueue_processing` to the ocr and inference workers when there is a
broker, and run one after the other inside the job when there is none (embedded mode, where the job
already holds the only task thread). The job waits for its images, so its progress is the share of
them finished, and at most ``WINDOW`` of them are queued at once.

- A re-read replaces the image's machine reading (``scale_readings`` keeps one row per image; what it
  replaced stays in ``detail.previous``). A curator's reading is never overwritten: it stays the
  image's scale, and the scale step stores the machine's new reading beside it.
- A failed image that is selected runs its failed steps again too (whatever ``steps`` says).
- Reclassifying adds the active model's prediction (unique per image and model version) to images
  that have none from it; images it classified already are skipped. A human label stays the image's
  category (the inference step never overrides one).
- Resumable: a run taken over after its worker died skips the images whose reading was made after the
  job was created, and those the active model classified meanwhile; images uploaded after the job was
  created are not selected (they are fresh).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, or_, select

from services.errors import BadParams, is_transient
from services.images import pipeline
from services.images.ingest import enqueue_processing
from services.images.schemas import ReprocessParams
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, Runtime
from services.tables import Image, ImageRecord, ImageStatus, Prediction, ScaleReading, StepState, utcnow

log = logging.getLogger(__name__)

CHUNK = 200           # images marked per transaction
WINDOW = 1000         # images queued and not finished yet, at most (a broker's memory, the job's polling)
POLL_S = 1.0
STALL_S = 120.0       # no image finished for this long: the progress message asks whether workers run
MAX_FAILED_IDS = 100

ProgressFn = Callable[[float, str], None]


def selection(p: ReprocessParams, created_before: datetime | None = None) -> Select:
    """The ids of the images matching every filter of ``p``, uploaded before ``created_before``."""
    q = select(Image.id)
    if created_before is not None:
        q = q.where(Image.created_at <= created_before)
    if p.record_id is not None:
        link = (ImageRecord.image_id == Image.id) & (ImageRecord.record_id == p.record_id)
        if p.record_version is not None:
            link = link & (ImageRecord.record_version == p.record_version)
        q = q.where(exists().where(link))
    if p.uploaded_from is not None:
        q = q.where(Image.created_at >= p.uploaded_from)
    if p.uploaded_before is not None:
        q = q.where(Image.created_at < p.uploaded_before)
    if p.status:
        q = q.where(Image.status.in_(p.status))
    if p.scale_source:
        sources = [s for s in p.scale_source if s != "unread"]
        conds: list[ColumnElement[bool]] = []
        if sources:
            conds.append(exists().where(ScaleReading.image_id == Image.id, ScaleReading.source.in_(sources)))
        if "unread" in p.scale_source:
            conds.append(~exists().where(ScaleReading.image_id == Image.id))
        q = q.where(or_(*conds))
    if p.model_version is not None:
        q = q.where(exists().where(Prediction.image_id == Image.id, Prediction.model_version == p.model_version))
    return q


@dataclass
class Tally:
    selected: int = 0
    scale_queued: int = 0
    classify_queued: int = 0
    scale_already_reread: int = 0      # read after the job was created (a resumed run, or a concurrent upload)
    already_classified: int = 0        # the active model has a prediction for it already
    human_labels_kept: int = 0         # reclassified, and a human label stays its category
    finished: int = 0
    failed_ids: list[int] = field(default_factory=list)

    def result(self, p: ReprocessParams, model_version: str | None) -> dict[str, Any]:
        return {"selected": self.selected, "steps": list(p.steps), "model_version": model_version,
                "dry_run": p.dry_run, "scale_queued": self.scale_queued, "classify_queued": self.classify_queued,
                "skipped": {"scale_read_since_job_created": self.scale_already_reread,
                            "classified_by_active_model": self.already_classified},
                "human_labels_kept": self.human_labels_kept, "finished": self.finished,
                "failed": len(self.failed_ids), "failed_image_ids": self.failed_ids[:MAX_FAILED_IDS]}

    def message(self) -> str:
        parts = [f"{self.finished}/{self.selected} images done"]
        if self.failed_ids:
            parts.append(f"{len(self.failed_ids)} failed")
        return ", ".join(parts)


def _chunks(rt: Runtime, p: ReprocessParams, created_before: datetime | None) -> Iterator[list[int]]:
    """The selection's ids in ascending order, CHUNK at a time (keyset: images marked meanwhile may leave
    the filter — a status filter — without shifting the pages)."""
    last = 0
    while True:
        with rt.session() as s:
            ids = list(s.scalars(selection(p, created_before).where(Image.id > last).order_by(Image.id).limit(CHUNK)))
        if not ids:
            return
        yield ids
        last = ids[-1]


def _mark(rt: Runtime, ids: list[int], p: ReprocessParams, model_version: str | None,
          created_before: datetime | None, tally: Tally) -> list[tuple[int, tuple[str, ...]]]:
    """Set the chosen steps of these images back to pending (a failed image's failed steps too) in one
    transaction, rows locked in id order; the steps to run per image."""
    todo: list[tuple[int, tuple[str, ...]]] = []
    with rt.session() as s:
        read_at = dict(s.execute(select(ScaleReading.image_id, ScaleReading.created_at)
                                 .where(ScaleReading.image_id.in_(ids))).all())
        classified = set(s.scalars(select(Prediction.image_id).where(
            Prediction.image_id.in_(ids), Prediction.model_version == model_version))) if model_version else set()
        rows = select(Image).where(Image.id.in_(ids)).order_by(Image.id)
        images = list(s.scalars(rows if p.dry_run else rows.with_for_update()))
        tally.finished += len(ids) - len(images)  # taken down since the selection was read
        for img in images:
            steps: list[str] = []
            if "scale" in p.steps:
                when = read_at.get(img.id)
                if created_before is not None and when is not None and _utc(when) > _utc(created_before):
                    tally.scale_already_reread += 1
                else:
                    steps.append(TASK_READ_SCALE)
            if "classify" in p.steps:
                if img.id in classified:
                    tally.already_classified += 1
                else:
                    steps.append(TASK_CLASSIFY)
                    if img.category_source == "human":
                        tally.human_labels_kept += 1
            if img.status == ImageStatus.failed.value:  # a failed image selected runs its failed steps again
                if img.scale_state == StepState.failed.value and TASK_READ_SCALE not in steps:
                    steps.append(TASK_READ_SCALE)
                if img.inference_state == StepState.failed.value and TASK_CLASSIFY not in steps:
                    steps.append(TASK_CLASSIFY)
            if not steps:
                tally.finished += 1
                continue
            tally.scale_queued += TASK_READ_SCALE in steps
            tally.classify_queued += TASK_CLASSIFY in steps
            if p.dry_run:
                tally.finished += 1
                continue
            if TASK_READ_SCALE in steps:
                img.scale_state = StepState.pending.value
            if TASK_CLASSIFY in steps:
                img.inference_state = StepState.pending.value
            if img.status == ImageStatus.failed.value:
                img.status, img.error = ImageStatus.processing.value, None
            pipeline.refresh_status(img)
            img.updated_at = utcnow()
            todo.append((img.id, tuple(steps)))
        if p.dry_run:
            s.rollback()
    return todo


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; semtag writes them in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _unfinished(rt: Runtime, steps_of: dict[int, tuple[str, ...]], tally: Tally) -> dict[int, tuple[str, ...]]:
    """Those images whose queued steps are not all finished; the finished ones are counted (failures by id).
    Only the steps this run queued count: an image whose other step still waits (e.g. for a model) is done
    as far as this run is concerned."""
    if not steps_of:
        return {}
    with rt.session() as s:
        rows = s.execute(select(Image.id, Image.status, Image.scale_state, Image.inference_state)
                         .where(Image.id.in_(list(steps_of)))).all()
    left: dict[int, tuple[str, ...]] = {}
    present = set()
    for iid, status, scale, inference in rows:
        present.add(iid)
        steps = steps_of[iid]
        waiting = ((TASK_READ_SCALE in steps and scale == StepState.pending.value)
                   or (TASK_CLASSIFY in steps and inference == StepState.pending.value))
        if status != ImageStatus.failed.value and waiting:
            left[iid] = steps
            continue
        tally.finished += 1
        if status == ImageStatus.failed.value:
            tally.failed_ids.append(iid)
    tally.finished += len(set(steps_of) - present)  # taken down meanwhile
    return left


def _run_inline(rt: Runtime, todo: list[tuple[int, tuple[str, ...]]]) -> None:
    """The steps in this thread, as a worker runs them: scale one by one, classification in batches."""
    for iid, steps in todo:
        if TASK_READ_SCALE in steps:
            try:
                pipeline.read_scale(rt, iid)
            except Exception as exc:
                if is_transient(exc):
                    raise  # the image stays pending; the reconciler queues it once the outage is over
                log.exception("scale reading failed for image %s", iid)
                pipeline.fail_image(rt, iid, f"scale reading failed: {type(exc).__name__}: {exc}")
    ids = [iid for iid, steps in todo if TASK_CLASSIFY in steps]
    size = max(1, rt.settings.inference_batch_size)
    for k in range(0, len(ids), size):
        pipeline.classify_batch(rt, ids[k:k + size])


def reprocess(rt: Runtime, p: ReprocessParams, progress: ProgressFn,
              created_before: datetime | None = None) -> dict[str, Any]:
    """Run a reprocess; ``progress(fraction, message)`` is called as images finish (a job's
    ``ctx.progress``, which stops the run when the job is cancelled)."""
    model_version = None
    if "classify" in p.steps:
        model = pipeline.active_model(rt)
        if model is None:
            raise BadParams("reclassifying needs an active model: activate one first (semtag models activate "
                            "VERSION or POST /v1/admin/models/{version}/activate)", "no_active_model")
        model_version = model.version
    tally = Tally()
    with rt.session() as s:
        tally.selected = s.scalar(select(func.count()).select_from(selection(p, created_before).subquery())) or 0
    progress(0.0, f"{tally.selected} images selected")
    inline = rt.settings.embedded_tasks
    in_flight: dict[int, tuple[str, ...]] = {}
    last_change, last_done = time.monotonic(), -1

    def report() -> None:
        nonlocal last_change, last_done
        if tally.finished != last_done:
            last_done, last_change = tally.finished, time.monotonic()
        msg = tally.message()
        if time.monotonic() - last_change > STALL_S:
            msg += (f"; no image finished for {time.monotonic() - last_change:.0f} s: are the ocr and inference "
                    "workers running?")
        progress(tally.finished / tally.selected if tally.selected else 1.0, msg)

    for ids in _chunks(rt, p, created_before):
        todo = _mark(rt, ids, p, model_version, created_before, tally)
        if inline:
            _run_inline(rt, todo)
            _unfinished(rt, dict(todo), tally)
            report()
            continue
        for iid, steps in todo:
            enqueue_processing(rt, iid, steps)  # a broker outage leaves them pending: the reconciler queues them
        in_flight.update(todo)
        report()
        while len(in_flight) > WINDOW:
            in_flight = _wait(rt, in_flight, tally, report)
    while in_flight:
        in_flight = _wait(rt, in_flight, tally, report)
    report()
    return tally.result(p, model_version)


def _wait(rt: Runtime, in_flight: dict[int, tuple[str, ...]], tally: Tally,
          report: Callable[[], None]) -> dict[int, tuple[str, ...]]:
    left = _unfinished(rt, in_flight, tally)
    report()
    if len(left) == len(in_flight):
        time.sleep(POLL_S)
    return left


def reprocess_job(ctx) -> dict[str, Any]:  # noqa: ANN001 — a services.jobs.service.JobContext
    """The ``reprocess`` job: parameters as stored (validated at submission), progress per image finished."""
    from services.jobs.service import get_job

    params = ReprocessParams.model_validate(ctx.params)
    created = get_job(ctx.rt, ctx.job_id).created_at
    return reprocess(ctx.rt, params, ctx.progress, created_before=created)
