"""Open endpoints: liveness, readiness (database and broker), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from api.dependencies import RuntimeDep

router = APIRouter(tags=["health"])


class HealthRead(BaseModel):
    status: str


class ReadinessRead(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=HealthRead)
def healthz() -> HealthRead:
    """Liveness: the process answers."""
    return HealthRead(status="ok")


@router.get("/readyz", response_model=ReadinessRead, responses={503: {"model": ReadinessRead}})
def readyz(rt: RuntimeDep) -> JSONResponse:
    """Readiness: the database answers and the broker (or the in-process queue) is there; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        with rt.session() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 — any failure means not ready; the type says which
        checks["database"] = f"error: {type(exc).__name__}"
    if rt.settings.embedded_tasks:
        checks["broker"] = "in-process"
    else:
        import redis

        try:
            client = redis.Redis.from_url(rt.settings.broker_url or "", socket_timeout=2, socket_connect_timeout=2)
            client.ping()
            client.close()
            checks["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001 — as above
            checks["broker"] = f"error: {type(exc).__name__}"
    ready = all(v in ("ok", "in-process") for v in checks.values())
    body = ReadinessRead(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, response_model=None,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics() -> PlainTextResponse:
    """Prometheus metrics: requests, queue depth, task durations, images by status."""
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
