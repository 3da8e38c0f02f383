"""What every entry point needs: settings, the database URL, the blob store, the task queue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from semtag.settings import Settings
from services.db import session_scope
from services.storage import BlobStore, DiskCache, LocalBlobStore, S3BlobStore

log = logging.getLogger(__name__)


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
TASK_DISPATCH_EVENTS = "semtag.dispatch_events"
# The reconciler has a queue of its own: a long training run on the batch queue must not stall it. The
# events dispatcher shares it: each of its rounds is bounded by the delivery timeout.
TASK_QUEUES = {TASK_READ_SCALE: "ocr", TASK_CLASSIFY: "inference", TASK_RUN_JOB: "batch",
               TASK_RECONCILE: "maintenance", TASK_DISPATCH_EVENTS: "maintenance"}
# A process nudges the events dispatcher at most this often; what a skipped nudge leaves waits for the
# periodic dispatch (SEMTAG_EVENTS_DISPATCH_EVERY_S).
NUDGE_INTERVAL_S = 1.0


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: files under ``data_dir/blobs`` by default; with ``blob_url``
    (``s3://bucket/prefix``) the object store, with its cache, upload spool and long-lived copies under
    ``data_dir`` (``blob-cache``, ``blob-spool``, ``blob-copies``): this host's disk only."""
    if not settings.blob_url:
        return LocalBlobStore(settings.blob_dir)
    d = settings.data_dir
    return S3BlobStore.from_url(settings.blob_url, endpoint_url=settings.s3_endpoint_url,
                                cache=DiskCache(d / "blob-cache", settings.blob_cache_max_bytes),
                                spool_dir=d / "blob-spool", copies_dir=d / "blob-copies",
                                part_size=settings.s3_part_size_bytes)


@dataclass
class Runtime:
    settings: Settings
    queue: TaskQueue = field(default_factory=NullQueue)
    store: BlobStore = field(init=False)
    # Set by a process that runs the events dispatcher itself (the API in embedded mode): wakes it up.
    events_wakeup: Callable[[], None] | None = field(default=None, repr=False)
    _last_nudge: float = field(default=float("-inf"), init=False, repr=False)
    _nudge_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        from services.images import imaging

        self.store = open_blob_store(self.settings)
        imaging.configure(self.settings.max_decoded_bytes)  # the process's decode budget

    @property
    def db_url(self) -> str:
        return self.settings.effective_database_url

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.db_url) as s:
            s.info["runtime"] = self  # an event written in this session nudges the dispatcher after the commit
            yield s

    def nudge_events(self) -> None:
        """Ask for the outbox to be dispatched soon (called after a commit that wrote events). Never raises:
        the periodic dispatcher picks up whatever a lost nudge leaves."""
        if self.events_wakeup is not None:
            self.events_wakeup()
            return
        with self._nudge_lock:
            now = time.monotonic()
            if now - self._last_nudge < NUDGE_INTERVAL_S:
                return
            self._last_nudge = now
        try:
            self.queue.enqueue(TASK_DISPATCH_EVENTS)
        except Exception as exc:  # noqa: BLE001 — the commit stands; the beat's dispatch sends the events
            log.warning("could not nudge the events dispatcher (%s); the periodic dispatch will send them",
                        type(exc).__name__)
