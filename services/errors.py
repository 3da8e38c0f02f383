"""The errors the core raises. Each class carries its HTTP status and a machine-readable code.

The doors turn them into responses without a lookup table: the API answers
``exc.status`` with ``{"error": {"code": exc.code, "message": exc.message}}``, the CLI prints
the message, a job records it. Domains subclass these (``images.ImageRejected``,
``storage.BlobTooLarge``, ``jobs.BadParams``…) where a code needs its own class or status; a
one-off code may still be given per instance (``BadInput("…", "bad_filter")``).

Algorithms (the clustering estimators, the scale parsers) raise ``ValueError`` as
scikit-learn's do; the service that calls them translates.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError


class SemtagError(Exception):
    """Base of every error semtag reports to a caller: ``status`` (HTTP) and ``code``."""

    status: int = 500
    code: str = "error"

    def __init__(self, message: str, code: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers


class BadInput(SemtagError):
    """The request is well formed but its content cannot be used (422)."""

    status = 422
    code = "bad_input"


class BadParams(BadInput):
    """Parameters of a job, a command or a query that cannot be used."""

    code = "bad_params"


class BadRequest(SemtagError):
    """The request itself cannot be parsed (400)."""

    status = 400
    code = "bad_request"


class Unauthorized(SemtagError):
    status = 401
    code = "unauthorized"


class Forbidden(SemtagError):
    status = 403
    code = "forbidden"


class NotFound(SemtagError):
    status = 404
    code = "not_found"


class Conflict(SemtagError):
    status = 409
    code = "conflict"


class PayloadTooLarge(SemtagError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(SemtagError):
    status = 415
    code = "unsupported_media_type"


class Unavailable(SemtagError):
    """A part of the service is switched off or down (503)."""

    status = 503
    code = "unavailable"


def validation_message(exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = "param") -> str:
    """One readable line per problem: ``param 'epochs': Input should be greater than or equal to 1``;
    a missing field is explained by its description in ``model``."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown {prefix} {loc!r}")
        elif e.get("type") == "missing":
            field = model.model_fields.get(loc) if model is not None else None
            parts.append(f"{prefix} {loc!r} is required" + (f": {field.description}" if field and field.description
                                                              else ""))
        else:
            parts.append(f"{prefix} {loc!r}: {msg}" if loc else msg)
    return "; ".join(parts)


# What the `train` extra brings (pyproject.toml): the serving install runs without any of these.
TRAIN_MODULES = frozenset({"tensorflow", "keras", "tf2onnx", "tensorboard"})


class QueueUnavailable(Unavailable):
    """The broker cannot take a task now; what was committed stays, and a retry is safe."""

    code = "queue_unavailable"


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


class BlobStoreUnavailable(Unavailable):
    """The object store cannot be reached or refuses the request (credentials, bucket): what was committed
    stays, and a retry is safe."""

    code = "blob_store_unavailable"


class MissingExtra(Unavailable):
    """A feature needs packages this installation leaves out (the slim serving install)."""

    code = "missing_extra"


def missing_extra(exc: ModuleNotFoundError) -> MissingExtra | None:
    """The user-facing error for an import that failed because the ``train`` extra is not installed."""
    root = (exc.name or "").split(".")[0]
    if root not in TRAIN_MODULES:
        return None
    return MissingExtra(f"this needs TensorFlow ({root}), which the serving install leaves out: "
                        "install semtag[train] (pip install 'semtag[train]')")


# Codes a parameter model may raise itself (PydanticCustomError); any other problem is bad_params.
PARAM_CODES = frozenset({"missing_checkpoint"})

M = TypeVar("M", bound=BaseModel)


def parse_params(model: type[M], data: Any, what: str) -> M:
    """``data`` validated by ``model``, or a :class:`BadParams` naming ``what`` and every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        codes = sorted({e["type"] for e in exc.errors()} & PARAM_CODES)
        raise BadParams(f"{what}: {validation_message(exc, model)}", codes[0] if codes else None) from None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage (the database, the queue, the object store) rather than a fault of the
    work itself: worth retrying later, never a reason to fail an image."""
    import sqlalchemy.exc as sa

    if isinstance(exc, (QueueUnavailable, BlobStoreUnavailable, sa.OperationalError, sa.InterfaceError,
                        sa.TimeoutError)):
        return True
    return isinstance(exc, sa.DBAPIError) and bool(exc.connection_invalidated)
