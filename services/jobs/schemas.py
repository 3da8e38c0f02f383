"""The jobs domain's contracts: a job as the admin API shows it, pages of jobs, the selftest's parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.types import UtcDateTime


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": 7, "kind": "clustering", "status": "running", "progress": 0.42, "message": "ward linkage",
        "params": {"scale_min_nm": 1000.0, "scale_max_nm": 2000.0, "method": "ward", "k": 5}, "result": None,
        "error": None, "attempts": 1, "created_by": "admin key", "created_at": "2026-11-26T10:00:00Z",
        "started_at": "2026-11-26T10:00:01Z", "finished_at": None, "report_url": None}]})

    id: int
    kind: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: float
    message: str | None = None
    params: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int
    created_by: str | None = None
    created_at: UtcDateTime | None = None
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    report_url: str | None = Field(None, description="the HTML report of a finished clustering job")


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: int | None = Field(None, description="pass as ?cursor= for the next (older) page")


class SelftestParams(BaseModel):
    """Checks that a batch worker can run a job end to end."""

    model_config = ConfigDict(extra="forbid", strict=True)

    steps: int = Field(5, ge=1, le=1000)
    step_seconds: float = Field(0.1, ge=0.0, le=10.0, allow_inf_nan=False)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
