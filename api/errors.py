"""Every error leaves as JSON: ``{"error": {"code": ..., "message": ...}}`` with a fitting status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import BadInput, Conflict, NotFound, SemtagError, Unauthorized
from services.storage import BlobTooLarge

STATUS_BY_CODE = {
    "file_too_large": 413,
    "request_too_large": 413,
    "too_many_pixels": 413,
    "unsupported_format": 415,
    "not_an_image": 415,
    "wrong_content_type": 415,
    "forbidden": 403,
    "webhook_disabled": 503,
}


def status_for(exc: SemtagError) -> int:
    if exc.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[exc.code]
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, BadInput):
        return 422
    return 500


def error_body(code: str, message: str, **extra) -> dict:  # noqa: ANN003
    return {"error": {"code": code, "message": message, **extra}}


class ApiError(SemtagError):
    """An error raised in the HTTP layer itself (auth, request shape)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message, code)
        self.status = status
        self.headers = headers


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SemtagError)
    async def _semtag_error(_req: Request, exc: SemtagError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=status_for(exc))

    @app.exception_handler(BlobTooLarge)
    async def _too_large(_req: Request, exc: BlobTooLarge) -> JSONResponse:
        return JSONResponse(error_body("file_too_large", str(exc)), status_code=413)

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
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)
