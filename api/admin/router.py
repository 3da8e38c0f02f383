"""/v1/admin: batch jobs (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.admin.schemas import JobRequest
from api.dependencies import Principal, get_runtime, require
from services.classify import registry
from services.jobs.service import JOB_KINDS, create_job, get_job
from services.runtime import Runtime

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/jobs", status_code=202)
async def submit_job(req: JobRequest, rt: Runtime = Depends(get_runtime),
                     who: Principal = Depends(require("admin"))) -> dict:
    job_id = await run_in_threadpool(create_job, rt, req.kind, req.params, who.name)
    return await run_in_threadpool(get_job, rt, job_id)


@router.get("/jobs/{job_id}")
def read_job(job_id: int, rt: Runtime = Depends(get_runtime), _who: Principal = Depends(require("admin"))) -> dict:
    return get_job(rt, job_id)


@router.get("/models")
def list_models(rt: Runtime = Depends(get_runtime), _who: Principal = Depends(require("admin"))) -> dict:
    with rt.session() as s:
        return {"models": registry.list_models(s)}


@router.post("/models/{version}/activate")
def activate_model(version: str, reclassify: bool = False, rt: Runtime = Depends(get_runtime),
                   _who: Principal = Depends(require("admin"))) -> dict:
    """Make ``version`` the active model; waiting images are queued, and with ``reclassify=true``
    every image is classified again by it (earlier predictions stay in the history)."""
    return registry.activate_and_requeue(rt, version, reclassify)


@router.get("/job-kinds")
def job_kinds(_who: Principal = Depends(require("admin"))) -> dict:
    return {name: kind.description for name, kind in sorted(JOB_KINDS.items())}
