"""Task duration metrics, recorded through Celery's signals (in workers and in embedded mode)."""

from __future__ import annotations

import time
from typing import Any

from celery.signals import task_postrun, task_prerun
from prometheus_client import Histogram

TASK_SECONDS = Histogram(
    "semtag_task_duration_seconds", "Time spent running a task", ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
_started: dict[str, float] = {}


@task_prerun.connect
def _on_prerun(task_id=None, task=None, **_kw: Any) -> None:  # noqa: ANN001
    if task_id:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _on_postrun(task_id=None, task=None, **_kw: Any) -> None:  # noqa: ANN001
    start = _started.pop(task_id, None)
    if start is not None and task is not None:
        TASK_SECONDS.labels(task=task.name).observe(time.perf_counter() - start)
