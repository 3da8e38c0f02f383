"""Shared FastAPI dependencies: the runtime, the request's database session, the authenticated caller.

Routes declare what they need with the aliases ``RuntimeDep`` and ``SessionDep`` and guard
themselves with ``Depends(require("read"))``. ``require`` authenticates in the request's own
session (FastAPI resolves ``get_session`` once per request), and ends that read-only transaction
at once so that a long upload does not hold a database connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.access import auth
from services.errors import BadInput, Forbidden, Unauthorized
from services.runtime import Runtime

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}

# Row ids are 64-bit: a larger number is a bad request, not a database overflow.
MAX_ID = 2**63 - 1
IdPath = Annotated[int, Path(ge=0, le=MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=0, le=MAX_ID)]

# Declares the bearer scheme in OpenAPI (the Authorize button in /docs); the check is ours.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="apiKey",
                           description="an API key from `semtag apikey create --role ROLE`")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    with rt.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: str

    @property
    def label(self) -> str:
        """How the caller is recorded on what it changes (labels, jobs)."""
        return self.name or f"key-{self.key_id}"


def require(permission: str) -> Callable[..., Principal]:
    """A dependency that lets through only keys whose role grants ``permission``."""

    def dependency(request: Request, session: SessionDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> Principal:
        if credentials is None or not credentials.credentials.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", headers=BEARER_CHALLENGE)
        key = auth.authenticate(session, credentials.credentials.strip())
        if key is None:
            raise Unauthorized("API key is not valid or has been revoked (keys live in the service's database: "
                               "create them with the service's SEMTAG_DATA_DIR / SEMTAG_DATABASE_URL)",
                               headers=BEARER_CHALLENGE)
        principal = Principal(key.id, key.name, key.role)
        session.commit()  # end the read-only transaction; the route's own work starts a new one
        if not auth.allows(principal.role, permission):
            raise Forbidden(f"role {principal.role!r} may not {permission}")
        known_query_only(request)  # after authentication: a stranger learns no parameter names
        return principal

    return dependency


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_query_only(request: Request) -> None:
    """Refuse query parameters the route does not take: a misspelt filter (``?catgory=``) would
    otherwise be ignored and return everything. Checked by :func:`require`, so only on authenticated
    routes and after the key: health probes, docs and the webhook keep ignoring cache-busters."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise BadInput(f"unknown query parameter(s) {', '.join(map(repr, unknown))}; this endpoint takes "
                       f"{', '.join(sorted(known)) or 'none'}", "unknown_parameter")
