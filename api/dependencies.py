"""Shared FastAPI dependencies: the runtime, a database session, the authenticated caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.errors import ApiError
from services import auth
from services.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_session(rt: Runtime = Depends(get_runtime)) -> Iterator[Session]:
    with rt.session() as s:
        yield s


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require(permission: str) -> Callable[..., Principal]:
    """A dependency that lets through only keys whose role grants ``permission``."""

    def dependency(request: Request, rt: Runtime = Depends(get_runtime)) -> Principal:
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})
        with rt.session() as s:
            key = auth.authenticate(s, token)
            if key is None:
                raise ApiError(401, "unauthorized", "API key is not valid or has been revoked",
                               {"WWW-Authenticate": "Bearer"})
            principal = Principal(key.id, key.name, key.role)
        if not auth.allows(principal.role, permission):
            raise ApiError(403, "forbidden", f"role {principal.role!r} may not {permission}")
        return principal

    return dependency
