"""The curator console under /ui: server-rendered pages (Jinja2) with a little JavaScript, every asset
shipped in the package (no CDN, no Node build). A door like the API: it authorises and calls the core."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def install(app: FastAPI) -> None:
    from api.ui.actions import router as actions
    from api.ui.pages import router as pages

    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.include_router(actions)
    app.include_router(pages)
