"""Admin batch jobs: a row per job, run on the batch queue, with progress, result and error.

A job kind is a function ``handler(ctx) -> dict`` registered in :data:`JOB_KINDS` with a
parameter validator. Running a job is idempotent: a finished job is not run again; a job
whose worker died is run again from the start (``attempts`` counts the runs).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from services.errors import BadInput, NotFound
from services.jobs.params import float_param, int_param
from services.runtime import TASK_RUN_JOB, Runtime
from services.tables import Job, JobStatus, utcnow


@dataclass
class JobContext:
    rt: Runtime
    job_id: int
    params: dict[str, Any]

    def progress(self, fraction: float, message: str | None = None) -> None:
        with self.rt.session() as s:
            job = s.get(Job, self.job_id)
            job.progress = max(0.0, min(1.0, float(fraction)))
            if message is not None:
                job.message = message


@dataclass(frozen=True)
class JobKind:
    handler: Callable[[JobContext], dict[str, Any]]
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    description: str


JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(name: str, handler, validate, description: str) -> None:  # noqa: ANN001
    JOB_KINDS[name] = JobKind(handler, validate, description)


def _validate_selftest(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"steps", "step_seconds"}
    if unknown:
        raise BadInput(f"unknown params for selftest: {', '.join(sorted(unknown))}", "bad_params")
    return {"steps": int_param(params, "steps", 5, 1, 1000),
            "step_seconds": float_param(params, "step_seconds", 0.1, 0.0, 10.0)}


def _selftest(ctx: JobContext) -> dict[str, Any]:
    """Checks that a batch worker can run a job end to end: database, blob store, progress."""
    steps, pause = ctx.params["steps"], ctx.params["step_seconds"]
    for i in range(steps):
        time.sleep(pause)
        ctx.progress((i + 1) / steps, f"step {i + 1}/{steps}")
    with ctx.rt.session() as s:
        s.execute(text("SELECT 1"))
    probe = ctx.rt.store.tmp / f"selftest-{ctx.job_id}"
    probe.write_bytes(b"ok")
    probe.unlink()
    return {"steps": steps, "host": socket.gethostname(), "pid": os.getpid(), "database": "ok", "blob_store": "ok"}


register_job_kind("selftest", _selftest, _validate_selftest,
                  "checks a batch worker end to end (database, blob store, progress reporting)")


def _register_model_jobs() -> None:
    # The handlers import TensorFlow only when a job runs; validation is light enough for the API.
    from models.training_job import run_training, validate_training

    register_job_kind("training", run_training, validate_training,
                      "trains a classifier (params: data, arch, mode, init, epochs, batch_size, image_size, int8), "
                      "exports it to ONNX with a parity check and registers it (activation is separate)")


_register_model_jobs()


def _clustering(ctx: JobContext) -> dict[str, Any]:
    from services.clustering.subcategories import run_clustering

    out = ctx.rt.settings.data_dir / "clustering" / f"job-{ctx.job_id}"
    return run_clustering(ctx.rt, ctx.params, out, run_id=ctx.job_id, progress=ctx.progress)


def _validate_clustering(params: dict[str, Any]) -> dict[str, Any]:
    from services.clustering.subcategories import validate_params

    return validate_params(params)


register_job_kind("clustering", _clustering, _validate_clustering,
                  "discovers subcategories: features of the active model for images in a scale range (default "
                  "1–2 µm), 2-NN ID, autoencoder, five hierarchical clusterings scored by NMI, a category → "
                  "subcategory tree written to the database, and an HTML report")


def create_job(rt: Runtime, kind: str, params: dict[str, Any] | None, created_by: str | None = None) -> int:
    if kind not in JOB_KINDS:
        raise BadInput(
            f"unknown job kind {kind!r}; available: {', '.join(sorted(JOB_KINDS))}", "unknown_job_kind"
        )
    if params is not None and not isinstance(params, dict):
        raise BadInput("params must be a JSON object", "bad_params")
    clean = JOB_KINDS[kind].validate(params or {})
    with rt.session() as s:
        job = Job(kind=kind, params=clean, status=JobStatus.queued.value, created_by=created_by)
        s.add(job)
        s.flush()
        job_id = job.id
    rt.queue.enqueue(TASK_RUN_JOB, job_id)
    return job_id


def get_job(rt: Runtime, job_id: int) -> dict[str, Any]:
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job_to_dict(job)


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress,
        "message": job.message, "params": job.params, "result": job.result, "error": job.error,
        "attempts": job.attempts, "created_by": job.created_by, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
    }


def run_job(rt: Runtime, job_id: int) -> str:
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return "missing"
        if job.status in (JobStatus.succeeded.value, JobStatus.failed.value):
            return job.status
        job.status = JobStatus.running.value
        job.attempts += 1
        job.started_at = utcnow()
        job.error = None
        kind, params = job.kind, dict(job.params)
    ctx = JobContext(rt, job_id, params)
    try:
        if kind not in JOB_KINDS:
            raise BadInput(f"job kind {kind!r} is not available in this worker", "unknown_job_kind")
        result = JOB_KINDS[kind].handler(ctx)
    except Exception as exc:  # recorded on the row: the job failed, the worker goes on
        with rt.session() as s:
            job = s.get(Job, job_id)
            job.status = JobStatus.failed.value
            job.error = f"{type(exc).__name__}: {exc}"
            job.result = {"traceback": traceback.format_exc(limit=5)}
            job.finished_at = utcnow()
        return JobStatus.failed.value
    with rt.session() as s:
        job = s.get(Job, job_id)
        job.status = JobStatus.succeeded.value
        job.result = result
        job.progress = 1.0
        job.finished_at = utcnow()
    return JobStatus.succeeded.value
