"""Admin batch jobs: a row per job, run on the batch queue, with progress, result and error.

A job kind is a function ``handler(ctx) -> dict`` with a pydantic model of its parameters,
registered with :func:`register_job_kind` by the start-up code (``semtag.bootstrap``), so this
module knows no kind but the built-in ``selftest``. Running a job is idempotent: a finished or
cancelled job is not run again; a job whose worker died is run again from the start
(``attempts`` counts the runs). A user error (a :class:`~services.errors.SemtagError`) is recorded
as its message; anything else is recorded as an internal error, its traceback in the worker log.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from services.errors import (
    BadInput,
    BadParams,
    Conflict,
    NotFound,
    QueueUnavailable,
    SemtagError,
    missing_extra,
    parse_params,
)
from services.jobs.schemas import SelftestParams
from services.runtime import TASK_RUN_JOB, Runtime
from services.tables import Job, JobStatus, utcnow

log = logging.getLogger(__name__)

FINAL = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)


class UnknownJobKind(BadInput):
    code = "unknown_job_kind"


class JobCancelled(SemtagError):
    """Raised inside a running job at its next progress report once an admin cancelled it."""

    code = "cancelled"


class LeaseLost(JobCancelled):
    """Raised inside a run whose lease lapsed and was taken by another worker: this run stops quietly."""

    code = "lease_lost"


@dataclass
class JobContext:
    rt: Runtime
    job_id: int
    params: dict[str, Any]
    attempt: int = 0  # which run of the job this is: the fencing token of its lease

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress; raises :class:`JobCancelled` when the job was cancelled meanwhile, or when
        another worker took it over (this run lost its lease)."""
        with self.rt.session() as s:
            job = _row(s, self.job_id)
            if job.status == JobStatus.cancelled.value:
                raise JobCancelled(f"job {self.job_id} was cancelled")
            if self.attempt and job.attempts != self.attempt:
                raise LeaseLost(f"job {self.job_id} was taken over by attempt {job.attempts}")
            job.progress = max(0.0, min(1.0, float(fraction)))
            if message is not None:
                job.message = message


@dataclass(frozen=True)
class JobKind:
    handler: Callable[[JobContext], dict[str, Any]]
    params: type[BaseModel]
    description: str


JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(name: str, handler: Callable[[JobContext], dict[str, Any]], params: type[BaseModel],
                      description: str) -> None:
    JOB_KINDS[name] = JobKind(handler, params, description)


def _selftest(ctx: JobContext) -> dict[str, Any]:
    """Checks that a batch worker can run a job end to end: database, blob store, progress."""
    steps, pause = ctx.params["steps"], ctx.params["step_seconds"]
    for i in range(steps):
        time.sleep(pause)
        ctx.progress((i + 1) / steps, f"step {i + 1}/{steps}")
    with ctx.rt.session() as s:
        s.execute(text("SELECT 1"))
    ctx.rt.store.check()
    return {"steps": steps, "host": socket.gethostname(), "pid": os.getpid(), "database": "ok", "blob_store": "ok"}


register_job_kind("selftest", _selftest, SelftestParams,
                  "checks a batch worker end to end (database, blob store, progress reporting)")


def validate_params(kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The kind's parameters, validated and with every default filled in (JSON-ready)."""
    if kind not in JOB_KINDS:
        raise UnknownJobKind(f"unknown job kind {kind!r}; available: {', '.join(sorted(JOB_KINDS))}")
    if params is not None and not isinstance(params, dict):
        raise BadParams("params must be a JSON object")
    clean = parse_params(JOB_KINDS[kind].params, params or {}, kind)
    return clean.model_dump(mode="json")


def create_job(rt: Runtime, kind: str, params: dict[str, Any] | None, created_by: str | None = None) -> Job:
    clean = validate_params(kind, params)
    with rt.session() as s:
        job = Job(kind=kind, params=clean, status=JobStatus.queued.value, created_by=created_by,
                  enqueued_at=utcnow())
        s.add(job)
        s.flush()
    try:
        rt.queue.enqueue(TASK_RUN_JOB, job.id)
    except QueueUnavailable as exc:
        _finish(rt, job.id, JobStatus.failed, error="could not be queued: the task queue was unavailable")
        raise QueueUnavailable(f"job {job.id} could not be queued (the task queue is unavailable) and was marked "
                               "failed; submit it again", headers=exc.headers) from None
    return get_job(rt, job.id)  # as stored (the database's own timestamps), as every later read shows it


def _row(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def get_job(rt: Runtime, job_id: int) -> Job:
    with rt.session() as s:
        return _row(s, job_id)


def list_jobs(rt: Runtime, status: str | None = None, kind: str | None = None, limit: int = 50,
              cursor: int | None = None) -> tuple[list[Job], int | None]:
    """Jobs newest first, optionally of one status or kind; keyset-paginated by id."""
    if status is not None and status not in {s.value for s in JobStatus}:
        raise BadInput(f"status must be one of {', '.join(s.value for s in JobStatus)}", "bad_filter")
    q = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if status is not None:
        q = q.where(Job.status == status)
    if kind is not None:
        q = q.where(Job.kind == kind)
    if cursor is not None:
        q = q.where(Job.id < cursor)
    with rt.session() as s:
        rows = list(s.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def cancel_job(rt: Runtime, job_id: int) -> Job:
    """Cancel a queued or running job. A queued one never starts; a running one stops at its next
    progress report (what it wrote so far stays). A finished job cannot be cancelled (409)."""
    with rt.session() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.status in FINAL:
            raise Conflict(f"job {job_id} has already {job.status}; only queued or running jobs can be cancelled",
                           "job_finished")
        job.status = JobStatus.cancelled.value
        job.finished_at = utcnow()
        job.message = "cancelled"
        return job


def _claim(rt: Runtime, job_id: int) -> tuple[str, dict[str, Any], int] | str:
    """Take the job to run it: a queued one, or a running one whose lease lapsed (its worker died).
    Returns (kind, params, attempt), or the job's status when someone else holds it or it is finished.
    The attempt number fences the run: heartbeats, progress and the outcome only count while it is
    still the job's latest attempt. (Leases use each worker's clock: keep the hosts' clocks in sync.)"""
    now = utcnow()
    lease = timedelta(seconds=rt.settings.job_lease_s)
    with rt.session() as s:
        claimable = or_(Job.status == JobStatus.queued.value,
                        and_(Job.status == JobStatus.running.value,
                             or_(Job.lease_until.is_(None), Job.lease_until < now)))
        taken = s.execute(update(Job).where(Job.id == job_id, claimable).values(
            status=JobStatus.running.value, attempts=Job.attempts + 1, started_at=now, error=None,
            lease_until=now + lease))
        job = s.get(Job, job_id)
        if job is None:
            return "missing"
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return job.status
        return job.kind, dict(job.params), job.attempts


def _heartbeat(rt: Runtime, job_id: int, attempt: int, stop: threading.Event) -> None:
    """Renew this run's lease every third of it while the job runs (long epochs report no progress);
    stop renewing once another attempt holds the job."""
    every = max(1.0, rt.settings.job_lease_s / 3)
    while not stop.wait(every):
        try:
            with rt.session() as s:
                renewed = s.execute(update(Job).where(
                    Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt,
                ).values(lease_until=utcnow() + timedelta(seconds=rt.settings.job_lease_s)))
            if renewed.rowcount != 1:  # type: ignore[attr-defined]
                return  # cancelled, finished or taken over: progress() stops the run
        except Exception:  # an outage: the next beat tries again, the lease has slack
            log.warning("job %s: heartbeat failed", job_id, exc_info=True)


def run_job(rt: Runtime, job_id: int) -> str:
    """Run the job once: a second delivery of the task while it runs (the broker's visibility timeout,
    the reconciler) finds it leased and returns, leaving the running copy and its files alone."""
    claim = _claim(rt, job_id)
    if isinstance(claim, str):
        if claim == JobStatus.running.value:
            log.info("job %s is running elsewhere (its lease is held); this delivery leaves it", job_id)
        return claim
    kind, params, attempt = claim
    ctx = JobContext(rt, job_id, params, attempt)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(rt, job_id, attempt, stop), daemon=True,
                            name=f"job-{job_id}-lease")
    beat.start()
    try:
        if kind not in JOB_KINDS:
            raise UnknownJobKind(f"job kind {kind!r} is not available in this worker")
        result = JOB_KINDS[kind].handler(ctx)
    except LeaseLost:
        log.warning("job %s: attempt %s lost its lease to a later attempt and stops", job_id, attempt)
        return "superseded"
    except JobCancelled:
        return JobStatus.cancelled.value
    except Exception as exc:  # recorded on the row: the job failed, the worker goes on
        if isinstance(exc, ModuleNotFoundError):
            exc = missing_extra(exc) or exc
        if isinstance(exc, SemtagError):
            error = exc.message
        else:
            log.exception("job %s (%s) failed", job_id, kind)
            error = f"internal error: {type(exc).__name__}: {exc} (the traceback is in the worker's log)"
        return _finish(rt, job_id, JobStatus.failed, attempt, error=error, result=None)
    finally:
        stop.set()
    return _finish(rt, job_id, JobStatus.succeeded, attempt, result=result, progress=1.0)


def reconcile_jobs(rt: Runtime, older_than_s: float | None = None) -> int:
    """Queue again the jobs nobody runs: queued longer than ``older_than_s`` (their message was lost,
    e.g. with an in-process queue at a restart) or running with a lapsed lease (their worker died)."""
    older = rt.settings.reconcile_after_s if older_than_s is None else older_than_s
    now = utcnow()
    cutoff = now - timedelta(seconds=older)
    with rt.session() as s:
        # Each job at most once per reconcile_after_s: the time of the last message sent is kept.
        last_sent = func.coalesce(Job.enqueued_at, Job.created_at)
        ids = list(s.scalars(select(Job.id).where(last_sent <= cutoff, or_(
            Job.status == JobStatus.queued.value,
            and_(Job.status == JobStatus.running.value, or_(Job.lease_until.is_(None), Job.lease_until < now))))))
        if ids:
            s.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=now))
    for job_id in ids:
        try:
            rt.queue.enqueue(TASK_RUN_JOB, job_id)
        except QueueUnavailable:
            log.warning("job %s stays for the next round: the queue is unavailable", job_id)
    if ids:
        log.info("reconciler re-enqueued %d jobs", len(ids))
    return len(ids)


def _finish(rt: Runtime, job_id: int, status: JobStatus, attempt: int | None = None, **fields: Any) -> str:
    """Record the outcome, unless an admin cancelled the job meanwhile (then it stays cancelled) or a
    later attempt took it over (then that attempt records its own)."""
    with rt.session() as s:
        job = _row(s, job_id)
        if job.status == JobStatus.cancelled.value:
            return job.status
        if attempt is not None and job.attempts != attempt:
            return "superseded"
        job.status, job.finished_at, job.lease_until = status.value, utcnow(), None
        for name, value in fields.items():
            setattr(job, name, value)
    return status.value
