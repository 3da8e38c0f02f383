"""The FastAPI application (``semtag serve`` runs it with uvicorn)."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.admin.router import router as admin_router
from api.health.router import router as health_router
from api.images.router import router as images_router
from api.metrics import STATE, MetricsMiddleware
from api.review.router import router as review_router
from api.subcategories.router import router as subcategories_router
from api.webhooks.router import router as webhooks_router
from semtag import __version__
from semtag.settings import Settings, get_settings
from services import migrate
from services.images import pipeline
from services.runtime import Runtime
from workers.context import set_runtime
from workers.dispatch import InlineQueue, queue_for

log = logging.getLogger(__name__)


def _embedded_reconciler(rt: Runtime, stop: threading.Event) -> None:
    """In embedded mode there is no Celery beat: re-enqueue stalled images periodically."""
    while not stop.wait(rt.settings.reconcile_every_s):
        try:
            pipeline.reconcile(rt)
        except Exception:  # noqa: BLE001
            log.exception("reconciler failed")


def create_app(settings: Settings | None = None, auto_migrate: bool = True) -> FastAPI:
    settings = settings or get_settings()
    runtime = Runtime(settings, queue=queue_for(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if auto_migrate:
            migrate.upgrade(runtime.db_url)
        set_runtime(runtime)
        STATE.runtime = runtime
        stop = threading.Event()
        if isinstance(runtime.queue, InlineQueue):
            # Work queued in memory is lost with the process: pick it up again at start.
            pipeline.reconcile(runtime, older_than_s=0)
            threading.Thread(target=_embedded_reconciler, args=(runtime, stop), daemon=True).start()
        yield
        stop.set()
        if isinstance(runtime.queue, InlineQueue):
            runtime.queue.shutdown()

    app = FastAPI(title="semtag", version=__version__, lifespan=lifespan,
                  description="Scale, category and subcategory metadata for SEM images.")
    app.state.runtime = runtime
    app.add_middleware(MetricsMiddleware)
    errors.install(app)
    for router in (health_router, images_router, review_router, subcategories_router, webhooks_router,
                   admin_router):
        app.include_router(router)
    return app


def app_factory() -> FastAPI:
    return create_app()
