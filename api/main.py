"""The FastAPI application (``semtag serve`` runs it with uvicorn)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from api import errors
from api.admin.router import job_request_schema
from api.admin.router import router as admin_router
from api.events.router import router as events_router
from api.export.router import router as export_router
from api.health.router import router as health_router
from api.images.router import router as images_router
from api.metrics import STATE, MetricsMiddleware
from api.records.router import router as records_router
from api.review.router import router as review_router
from api.subcategories.router import router as subcategories_router
from api.ui import install as install_console
from api.webhooks.router import router as webhooks_router
from semtag import __version__
from semtag.bootstrap import build_runtime
from semtag.settings import Settings, get_settings
from services import migrate
from services.events import service as events
from services.images import pipeline
from services.jobs import service as jobs
from services.runtime import Runtime
from workers.context import set_runtime
from workers.queues import InlineQueue

log = logging.getLogger(__name__)

# Swagger UI and ReDoc assets shipped in a package: /docs works offline (no CDN).
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"

DESCRIPTION = """Scale, category and subcategory metadata for SEM images.

Authorise with an API key (`semtag apikey create --role ingest|read|curator|admin`; the key is the last
line it prints) as `Authorization: Bearer <key>`: the **Authorize** button below takes it. Every error is
JSON, `{"error": {"code": "…", "message": "…"}}`, with the status its code implies.
"""


def _embedded_reconciler(rt: Runtime, stop: threading.Event) -> None:
    """In embedded mode there is no Celery beat: re-enqueue stalled images periodically."""
    while not stop.wait(rt.settings.reconcile_every_s):
        try:
            pipeline.reconcile(rt)
            jobs.reconcile_jobs(rt)
        except Exception:  # logged; the next round tries again
            log.exception("reconciler failed")


def _embedded_dispatcher(rt: Runtime, stop: threading.Event, wake: threading.Event) -> None:
    """In embedded mode the API sends the outbound events itself: at start (what a previous run left), when a
    commit that wrote events wakes it, and every SEMTAG_EVENTS_DISPATCH_EVERY_S for retries that fall due."""
    while not stop.is_set():
        wake.wait(rt.settings.events_dispatch_every_s)
        wake.clear()
        if stop.is_set():
            break
        try:
            events.dispatch(rt)
        except Exception:  # logged; the next round tries again
            log.exception("events dispatcher failed")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, with the job request documented as the union of the registered kinds."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    union = job_request_schema()
    schema.setdefault("components", {}).setdefault("schemas", {}).update(union.pop("$defs", {}))
    union["description"] = "a job kind and its params; `GET /v1/admin/job-kinds` lists the kinds"
    body = schema["paths"]["/v1/admin/jobs"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = union
    schema["paths"]["/v1/admin/jobs"]["post"].pop("x-semtag-job-request", None)
    # Request validation errors leave in the error envelope too (api/errors.py), not FastAPI's default shape.
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorRead"}}}
    for ops in schema["paths"].values():
        for op in ops.values():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                op["responses"].setdefault("400", {"description": "the body cannot be parsed", "content": envelope})
            if "422" in op.get("responses", {}):
                op["responses"]["422"] = {"description": "invalid parameters or content", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorRead"}}}}
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    app.openapi_schema = schema
    return schema


def _offline_docs(app: FastAPI) -> None:
    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="semtag — API",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png",
                                   swagger_ui_parameters={"persistAuthorization": True})

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="semtag — API",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)


def create_app(settings: Settings | None = None, auto_migrate: bool = True) -> FastAPI:
    settings = settings or get_settings()
    runtime = build_runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if auto_migrate:
            migrate.upgrade(runtime.db_url)
        set_runtime(runtime)
        STATE.runtime = runtime
        stop = threading.Event()
        if isinstance(runtime.queue, InlineQueue):
            # Work queued in memory is lost with the process: pick it up again at start (or, with the
            # database down, at the reconciler's first round after it is back; the API answers 503 meanwhile).
            try:
                pipeline.reconcile(runtime, older_than_s=0)
                jobs.reconcile_jobs(runtime, older_than_s=0)
            except SQLAlchemyError:
                log.exception("start-up reconciliation failed; the periodic reconciler will retry")
            threading.Thread(target=_embedded_reconciler, args=(runtime, stop), daemon=True).start()
            wake = threading.Event()
            wake.set()  # a first round at start
            runtime.events_wakeup = wake.set
            threading.Thread(target=_embedded_dispatcher, args=(runtime, stop, wake), daemon=True,
                             name="semtag-events").start()
        yield
        stop.set()
        if runtime.events_wakeup is not None:
            runtime.events_wakeup()
            runtime.events_wakeup = None
        if isinstance(runtime.queue, InlineQueue):
            runtime.queue.shutdown()

    app = FastAPI(title="semtag", version=__version__, lifespan=lifespan, description=DESCRIPTION,
                  docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.add_middleware(MetricsMiddleware)
    errors.install(app)
    for router in (health_router, images_router, records_router, export_router, review_router,
                   subcategories_router, webhooks_router, admin_router, events_router):
        app.include_router(router)
    _offline_docs(app)
    install_console(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def app_factory() -> FastAPI:
    return create_app()
