"""Celery tasks: each takes ids, calls one service function and records failures on the row."""

from __future__ import annotations

import logging

from services import jobs, pipeline
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, TASK_RECONCILE, TASK_RUN_JOB
from workers.app import app
from workers.context import get_runtime

log = logging.getLogger(__name__)


def _image_step(step, image_id: int, label: str) -> str:  # noqa: ANN001
    rt = get_runtime()
    try:
        return step(rt, image_id)
    except Exception as exc:
        log.exception("%s failed for image %s", label, image_id)
        pipeline.fail_image(rt, image_id, f"{label} failed: {type(exc).__name__}: {exc}")
        return "failed"


@app.task(name=TASK_READ_SCALE)
def read_scale(image_id: int) -> str:
    return _image_step(pipeline.read_scale, image_id, "scale reading")


@app.task(name=TASK_CLASSIFY)
def classify(image_id: int) -> str:
    return _image_step(pipeline.classify, image_id, "classification")


@app.task(name=TASK_RUN_JOB)
def run_job(job_id: int) -> str:
    return jobs.run_job(get_runtime(), job_id)


@app.task(name=TASK_RECONCILE)
def reconcile() -> int:
    return pipeline.reconcile(get_runtime())
