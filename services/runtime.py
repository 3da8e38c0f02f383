"""What every entry point needs: settings, the database URL, the blob store, the task queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from semtag.settings import Settings
from services.db import session_scope
from services.storage import LocalBlobStore, blob_store_for


class TaskQueue(Protocol):
    """Sends a named task with id arguments to a worker queue (Celery, or in-process)."""

    def enqueue(self, task: str, *args: int) -> None: ...


class NullQueue:
    """Records what would be enqueued; for CLI use where nothing should run."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[int, ...]]] = []

    def enqueue(self, task: str, *args: int) -> None:
        self.sent.append((task, args))


# Task names shared by the services (which enqueue) and workers/ (which register them).
TASK_READ_SCALE = "semtag.read_scale"
TASK_CLASSIFY = "semtag.classify"
TASK_RUN_JOB = "semtag.run_job"
TASK_RECONCILE = "semtag.reconcile"
# The reconciler has a queue of its own: a long training run on the batch queue must not stall it.
TASK_QUEUES = {TASK_READ_SCALE: "ocr", TASK_CLASSIFY: "inference", TASK_RUN_JOB: "batch",
               TASK_RECONCILE: "maintenance"}


@dataclass
class Runtime:
    settings: Settings
    queue: TaskQueue = field(default_factory=NullQueue)
    store: LocalBlobStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = blob_store_for(self.settings.data_dir)

    @property
    def db_url(self) -> str:
        return self.settings.effective_database_url

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.db_url) as s:
            yield s
