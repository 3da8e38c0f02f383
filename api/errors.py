"""Every error leaves as JSON: ``{"error": {"code": ..., "message": ...}}`` with the error's own status."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.errors import DatabaseUnavailable, SemtagError

log = logging.getLogger(__name__)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(exc: SemtagError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(SemtagError)
    async def _semtag_error(_req: Request, exc: SemtagError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    @app.exception_handler(sqlalchemy.exc.InterfaceError)
    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    async def _database_down(_req: Request, exc: Exception) -> JSONResponse:
        # The database is down or out of connections: what was committed stays, a retry is safe.
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(DatabaseUnavailable("the database is unavailable; retry later",
                                                  headers={"Retry-After": "30"}))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("malformed_json", "request body is not valid JSON"), status_code=422)
        parts = []
        for e in errors:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return JSONResponse(error_body("invalid_request", "; ".join(parts),
                                       details=[{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400: FastAPI could not parse the body at all (e.g. JSON nested too deep for the parser)
        code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_methods_of(req))
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)


def _methods_of(req: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    return [method for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
            if any(route.matches({**req.scope, "method": method})[0] == Match.FULL for route in req.app.router.routes)]


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, bad_filter, file_too_large")
    message: str = Field(description="what went wrong and what to do, for a person")
    details: list[dict[str, Any]] | None = None


class ErrorRead(BaseModel):
    """The envelope of every error response."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": {"code": "not_found", "message": "image 42 not found"}}]})

    error: ErrorDetail


_MEANING = {400: "the request cannot be parsed", 401: "missing or invalid API key",
            403: "the key's role may not do this", 404: "not found", 409: "conflicts with the current state",
            413: "too large",
            415: "unsupported media type", 422: "invalid parameters or content", 503: "switched off or unavailable"}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the error envelope's schema."""
    return {s: {"model": ErrorRead, "description": _MEANING.get(s, "error")} for s in statuses}


AUTH_ERRORS = (401, 403)
