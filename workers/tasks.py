"""Celery tasks: each takes ids, calls one service function and records failures on the row."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready

from semtag.settings import get_settings
from services.classify.inference import yield_to_model
from services.errors import is_transient
from services.events import service as events
from services.images import pipeline
from services.jobs import service as jobs
from services.runtime import TASK_CLASSIFY, TASK_DISPATCH_EVENTS, TASK_READ_SCALE, TASK_RECONCILE, TASK_RUN_JOB
from workers.app import app
from workers.batching import GatheringBatches
from workers.context import get_runtime

log = logging.getLogger(__name__)


@app.task(name=TASK_READ_SCALE, bind=True, max_retries=5)
def read_scale(self: Task, image_id: int) -> str:
    """Read the image's scale. An outage (database, queue) is retried with backoff (1, 2, 4… s) and then
    left to the reconciler; only a fault of the image itself fails it."""
    rt = get_runtime()
    try:
        return pipeline.read_scale(rt, image_id)
    except Exception as exc:
        if is_transient(exc):
            if self.request.retries < (self.max_retries or 0):
                log.warning("scale reading of image %s hit an outage (%s); retrying", image_id, type(exc).__name__)
                raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc
            log.error("scale reading of image %s: outage outlasted the retries; left for the reconciler", image_id)
            return "deferred"
        log.exception("scale reading failed for image %s", image_id)
        pipeline.fail_image(rt, image_id, f"scale reading failed: {type(exc).__name__}: {exc}")
        return "failed"


_settings = get_settings()


@app.task(name=TASK_CLASSIFY, base=GatheringBatches,
          flush_every=max(1, _settings.inference_batch_size) * _settings.inference_batches_per_task,
          flush_interval=max(0.001, _settings.inference_batch_wait_ms / 1000.0))
def classify(requests: list) -> dict:
    """Dynamic batching: the inference queue's messages (one image id each) are run in batches of
    ``inference_batch_size``, up to ``inference_batches_per_task`` of them per task (decoding overlaps the runs).

    Messages are acknowledged after the batch (acks_late), so a worker killed mid-batch has the
    whole batch delivered again; predictions are unique per (image, model version).
    """
    ids = [int(r.args[0]) for r in requests if r.args]
    rt = get_runtime()
    if app.conf.get("semtag_inference_worker"):  # this thread (and the decoding threads it starts) decodes and
        yield_to_model(rt.settings.inference_side_nice)  # stores; the engine's model thread runs the model
    try:
        out = pipeline.classify_batch(rt, ids)
        log.info("classified a batch of %d images (%d messages)", len(ids), len(requests))
        return {str(k): v for k, v in out.items()}
    except Exception:
        # e.g. the model file is unreadable: the images stay pending and the reconciler retries them
        log.exception("classification batch of %d images failed; left pending for the reconciler", len(ids))
        return {}


@worker_ready.connect
def _warm_inference(sender=None, **_kw: Any) -> None:  # noqa: ANN001
    """An inference worker loads the active model and runs its batch sizes once before taking work; then its
    consumer thread yields to the model threads (services.classify.inference.yield_to_model)."""
    if app.conf.get("semtag_warm_inference"):
        try:
            version = pipeline.warm_engine(get_runtime())
            log.info("inference engine warmed up for model %s", version or "(none active)")
        except Exception:
            log.exception("could not warm up the inference engine; the first batch will load it")
    if app.conf.get("semtag_inference_worker"):
        # the consumer (this thread, fetching and acknowledging messages) and the pool threads it starts from here
        # on run below the model threads
        yield_to_model(get_settings().inference_side_nice)


@app.task(name=TASK_RUN_JOB, bind=True, max_retries=None)
def run_job(self: Task, job_id: int) -> str:
    """Run the job. If another worker holds its lease, look again once the lease could have lapsed:
    then the job is either finished (nothing to do) or its worker died (this delivery takes it over)."""
    rt = get_runtime()
    status = jobs.run_job(rt, job_id)
    if status == "running" and not self.request.is_eager:
        raise self.retry(countdown=rt.settings.job_lease_s + 1)
    return status


@app.task(name=TASK_RECONCILE)
def reconcile() -> int:
    rt = get_runtime()
    return pipeline.reconcile(rt) + jobs.reconcile_jobs(rt)


@app.task(name=TASK_DISPATCH_EVENTS)
def dispatch_events() -> int:
    """Send the outbound events that are due (the beat runs it periodically; commits that wrote events nudge
    it). Safe to run anywhere at once: deliveries are claimed in the database."""
    report = events.dispatch(get_runtime())
    return report.sent
