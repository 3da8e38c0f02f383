"""/v1/admin: batch jobs and the model registry (admin role)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from api.dependencies import IdPath, IdQuery, Principal, RuntimeDep, SessionDep, require
from api.errors import AUTH_ERRORS, documented
from services.classify import registry
from services.classify.schemas import ActivationRead, ModelList, ModelRead
from services.errors import NotFound
from services.images.pipeline import activate_model
from services.jobs.schemas import JobPage, JobRead
from services.jobs.service import JOB_KINDS, cancel_job, create_job, get_job, list_jobs
from services.tables import Job

router = APIRouter(prefix="/v1/admin", tags=["admin"])

Admin = Annotated[Principal, Depends(require("admin"))]
REPORT_KINDS = ("clustering",)


class JobSubmission(BaseModel):
    """A job: its ``kind`` and that kind's ``params`` (see ``GET /v1/admin/job-kinds``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="job kind, e.g. training, clustering, selftest")
    params: dict[str, Any] = Field(default_factory=dict, description="the kind's parameters; defaults when absent")


def job_request_schema() -> dict[str, Any]:
    """JSON Schema of ``JobRequest``: a union of the registered kinds, keyed on ``kind`` (for OpenAPI)."""
    variants = []
    for name, kind in sorted(JOB_KINDS.items()):
        try:
            kind.params()
            params: Any = (kind.params, Field(default_factory=kind.params))
        except Exception:  # noqa: BLE001 — whatever the model raises, the kind has required parameters
            params = (kind.params, ...)
        model_name = "".join(part.title() for part in name.split("_")) + "JobRequest"
        tag: Any = (Literal[name], ...)  # a type made at run time, from the registry
        variants.append(create_model(model_name, __doc__=kind.description, __config__=ConfigDict(extra="forbid"),
                                     kind=tag, params=params))
    union: Any = Annotated[Union[tuple(variants)], Field(discriminator="kind")]  # noqa: UP007
    return TypeAdapter(union).json_schema(ref_template="#/components/schemas/{model}")


def job_read(job: Job) -> JobRead:
    read = JobRead.model_validate(job)
    if job.kind in REPORT_KINDS and job.status == "succeeded" and (job.result or {}).get("report"):
        read.report_url = f"/v1/admin/jobs/{job.id}/report/"
    return read


@router.post("/jobs", status_code=202, response_model=JobRead, responses=documented(*AUTH_ERRORS, 422),
             openapi_extra={"x-semtag-job-request": True})
async def submit_job(req: JobSubmission, rt: RuntimeDep, who: Admin) -> JobRead:
    """Queue a batch job on the batch queue; poll `GET /v1/admin/jobs/{id}` for progress."""
    job = await run_in_threadpool(create_job, rt, req.kind, req.params, who.name)
    return job_read(job)


@router.get("/jobs", response_model=JobPage, responses=documented(*AUTH_ERRORS, 422))
def read_jobs(rt: RuntimeDep, _who: Admin, status: str | None = None, kind: str | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: IdQuery = None) -> JobPage:
    """Jobs, newest first, optionally of one status or kind."""
    rows, next_cursor = list_jobs(rt, status, kind, limit, cursor)
    return JobPage(items=[job_read(j) for j in rows], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobRead, responses=documented(*AUTH_ERRORS, 404))
def read_job(job_id: IdPath, rt: RuntimeDep, _who: Admin) -> JobRead:
    return job_read(get_job(rt, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, responses=documented(*AUTH_ERRORS, 404, 409))
def cancel(job_id: IdPath, rt: RuntimeDep, _who: Admin) -> JobRead:
    """Cancel a queued or running job (a running one stops at its next progress report); 409 when finished."""
    return job_read(cancel_job(rt, job_id))


def report_file(rt: RuntimeDep, job_id: int, name: str) -> Path:
    job = get_job(rt, job_id)
    report = (job.result or {}).get("report") if job.kind in REPORT_KINDS else None
    if not report:
        raise NotFound(f"job {job_id} has no report (only finished clustering jobs have one)")
    folder = Path(report).parent
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise NotFound(f"job {job_id}'s report has no file {name!r}")
    return path


@router.get("/jobs/{job_id}/report/", response_class=FileResponse,
            responses={200: {"content": {"text/html": {}}, "description": "the report page"},
                       **documented(*AUTH_ERRORS, 404)})
def read_report(job_id: IdPath, rt: RuntimeDep, _who: Admin) -> FileResponse:
    """The HTML report of a finished clustering job (its figures are served beside it)."""
    return FileResponse(report_file(rt, job_id, "report.html"), media_type="text/html")


@router.get("/jobs/{job_id}/report/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "application/json": {}}, "description": "a report file"},
                       **documented(*AUTH_ERRORS, 404)})
def read_report_file(job_id: IdPath, name: str, rt: RuntimeDep, _who: Admin) -> FileResponse:
    """A figure (or analysis.json) of the job's report."""
    return FileResponse(report_file(rt, job_id, name))


@router.get("/job-kinds", response_model=dict[str, str], responses=documented(*AUTH_ERRORS))
def job_kinds(_who: Admin) -> dict[str, str]:
    """The job kinds this service runs, with what each does."""
    return {name: kind.description for name, kind in sorted(JOB_KINDS.items())}


@router.get("/models", response_model=ModelList, responses=documented(*AUTH_ERRORS))
def list_models(session: SessionDep, _who: Admin) -> ModelList:
    """The model registry, oldest first; `active` marks the one that classifies."""
    return ModelList(models=[ModelRead.model_validate(m) for m in registry.list_models(session)])


@router.post("/models/{version}/activate", response_model=ActivationRead, responses=documented(*AUTH_ERRORS, 404, 422))
def activate(version: str, rt: RuntimeDep, _who: Admin, reclassify: bool = False) -> ActivationRead:
    """Make ``version`` the active model; waiting images are queued, and with ``reclassify=true``
    every image is classified again by it (earlier predictions stay in the history)."""
    done = activate_model(rt, version, reclassify)
    return ActivationRead(**ModelRead.model_validate(done.model).model_dump(), queued_images=done.queued_images)
