"""Open endpoints: liveness, readiness (database and broker), Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from api.dependencies import RuntimeDep
from api.errors import documented
from services.errors import Unauthorized

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
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
                       **documented(401)})
def metrics(rt: RuntimeDep, request: Request) -> PlainTextResponse:
    """Prometheus metrics: requests, queue depth, task durations, images by status. Open, unless
    SEMTAG_METRICS_KEY is set: then it needs that key as a bearer token."""
    key = rt.settings.metrics_key
    if key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("GET /metrics needs the metrics key: 'Authorization: Bearer <SEMTAG_METRICS_KEY>'",
                               headers={"WWW-Authenticate": "Bearer"})
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
