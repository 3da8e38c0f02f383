"""A job runs once: a second delivery while it runs leaves it (and its files) alone; a job whose worker
died, or whose in-process message was lost at a restart, is queued again by the reconciler."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from services.jobs import service as jobs
from services.jobs.schemas import NoParams
from services.runtime import NullQueue
from services.tables import Job, JobStatus, utcnow
from tests.conftest import Client


def test_a_second_delivery_leaves_a_running_job_alone(sqlite_client: Client) -> None:
    rt = sqlite_client.rt
    started, release, runs = threading.Event(), threading.Event(), []

    def slow(ctx: jobs.JobContext) -> dict:
        runs.append(ctx.job_id)
        started.set()
        release.wait(30)
        return {"ok": True}

    jobs.register_job_kind("slow", slow, NoParams, "waits")
    try:
        rt.queue = NullQueue()
        job = jobs.create_job(rt, "slow", {})
        first = threading.Thread(target=jobs.run_job, args=(rt, job.id))
        first.start()
        assert started.wait(30)
        assert jobs.run_job(rt, job.id) == "running"  # the redelivered copy: nothing run, nothing touched
        release.set()
        first.join(30)
        assert runs == [job.id] and jobs.get_job(rt, job.id).status == "succeeded"
        assert jobs.get_job(rt, job.id).lease_until is None
    finally:
        release.set()
        jobs.JOB_KINDS.pop("slow")


def test_lapsed_leases_and_lost_messages_are_queued_again(sqlite_client: Client) -> None:
    rt = sqlite_client.rt
    rt.queue = NullQueue()
    old = utcnow() - timedelta(hours=1)
    with rt.session() as s:
        dead = Job(kind="selftest", params={"steps": 1, "step_seconds": 0.0}, status=JobStatus.running.value,
                   attempts=1, lease_until=utcnow() - timedelta(seconds=5), created_at=old, enqueued_at=old)
        alive = Job(kind="selftest", params={}, status=JobStatus.running.value, attempts=1,
                    lease_until=utcnow() + timedelta(minutes=5))
        lost = Job(kind="selftest", params={"steps": 1, "step_seconds": 0.0}, status=JobStatus.queued.value,
                   created_at=old)
        s.add_all([dead, alive, lost])
        s.flush()
        ids = dead.id, alive.id, lost.id
    assert jobs.reconcile_jobs(rt, older_than_s=60) == 2
    assert sorted(args[0] for _, args in rt.queue.sent) == sorted([ids[0], ids[2]])
    assert jobs.reconcile_jobs(rt, older_than_s=60) == 0  # one message per job per round-trip, not a flood
    assert jobs.run_job(rt, ids[1]) == "running"  # a live lease is respected
    assert jobs.run_job(rt, ids[0]) == "succeeded"  # the dead worker's job runs again
    with rt.session() as s:
        assert s.get(Job, ids[0]).attempts == 2


def test_heartbeat_keeps_a_long_job_leased(sqlite_client: Client) -> None:
    rt = sqlite_client.rt
    rt.settings.job_lease_s = 3
    leases = []

    def long(ctx: jobs.JobContext) -> dict:
        for _ in range(3):
            time.sleep(1.5)
            with rt.session() as s:
                leases.append(s.get(Job, ctx.job_id).lease_until)
        return {}

    jobs.register_job_kind("long", long, NoParams, "long")
    try:
        rt.queue = NullQueue()
        job = jobs.create_job(rt, "long", {})
        assert jobs.run_job(rt, job.id) == "succeeded"
        assert leases[-1] > leases[0]  # renewed while it ran, though it reported no progress
    finally:
        jobs.JOB_KINDS.pop("long")



def test_a_run_that_lost_its_lease_stops_and_records_nothing(sqlite_client: Client) -> None:
    """Fencing: attempt 1 stalls past its lease, attempt 2 takes the job; attempt 1's progress and outcome
    no longer count, and it stops at its next progress report."""
    rt = sqlite_client.rt
    rt.queue = NullQueue()
    stalled, resume, outcome = threading.Event(), threading.Event(), {}

    def stalls(ctx: jobs.JobContext) -> dict:
        if ctx.attempt == 1:
            stalled.set()
            resume.wait(30)
            ctx.progress(0.5, "attempt 1 is back")  # raises: attempt 2 holds the job
            return {"by": 1}
        return {"by": ctx.attempt}

    jobs.register_job_kind("stalls", stalls, NoParams, "stalls")
    try:
        job = jobs.create_job(rt, "stalls", {})
        first = threading.Thread(target=lambda: outcome.setdefault(1, jobs.run_job(rt, job.id)))
        first.start()
        assert stalled.wait(30)
        with rt.session() as s:  # its lease lapses (a stall, or an outage longer than the lease)
            s.get(Job, job.id).lease_until = utcnow() - timedelta(seconds=1)
        assert jobs.run_job(rt, job.id) == "succeeded"  # attempt 2 takes over and finishes
        resume.set()
        first.join(30)
        assert outcome[1] == "superseded"
        done = jobs.get_job(rt, job.id)
        assert done.status == "succeeded" and done.result == {"by": 2} and done.attempts == 2
    finally:
        resume.set()
        jobs.JOB_KINDS.pop("stalls")
