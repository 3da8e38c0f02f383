"""The console's door checks: the session cookie, the role, CSRF, and errors as pages.

- Sign-in turns a pasted API key into an opaque session token held in an HttpOnly, SameSite=Strict
  cookie (Secure when the request came over https); the key itself never reaches a URL or the browser's
  storage.
- Every page and action names the permission it needs (the same as the API's: read, label, admin);
  the check is made here, on the server, whatever the page showed.
- State-changing requests must be POSTs that carry the session's CSRF token (form field ``csrf_token``
  or header ``X-CSRF-Token``) and must not come from another site (``Sec-Fetch-Site``, ``Origin``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute

from api.dependencies import Principal, SessionDep
from services.access import auth, sessions
from services.errors import BadRequest, Forbidden, SemtagError

COOKIE = "semtag_session"
LOGIN_COOKIE = "semtag_login"  # the sign-in form's own CSRF token (double submit), before any session


class LoginRequired(Exception):
    """No live session: pages redirect to the sign-in form, fetches get a 401."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in caller of a console page."""

    principal: Principal
    csrf_token: str

    def can(self, permission: str) -> bool:
        return auth.allows(self.principal.role, permission)


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "") or request.headers.get("x-requested-with") == "fetch"


def cookie_kwargs(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https", "path": "/ui"}


def cross_site(request: Request) -> bool:
    """A request another site made the browser send (a form post, a fetch), by the browser's own word."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin and origin != "null":
        o = urlsplit(origin)
        return (o.scheme, o.netloc) != (request.url.scheme, request.url.netloc)
    return origin == "null"


def safe_next(target: str | None) -> str:
    """A redirect target inside the console only (no open redirect)."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


def viewer(permission: str) -> Callable[..., Viewer]:
    def dependency(request: Request, session: SessionDep) -> Viewer:
        signed = sessions.resolve(session, request.cookies.get(COOKIE))
        session.commit()
        if signed is None:
            raise LoginRequired()
        v = Viewer(Principal(signed.key_id, signed.key_name, signed.role), signed.csrf_token)
        if request.method not in ("GET", "HEAD"):
            if cross_site(request):
                raise Forbidden("a request from another site was refused", "cross_site")
        if not v.can(permission):
            raise Forbidden(f"your role ({signed.role}) may not {permission}; sign in with another key")
        return v

    return dependency


async def check_csrf(request: Request, v: Viewer) -> dict[str, str]:
    """The posted form (or JSON body) once its CSRF token matches the session's."""
    form: dict[str, str] = {}
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the request body is not valid JSON", "malformed_json") from None
        form = {str(k): str(x) for k, x in body.items()} if isinstance(body, dict) else {}
    else:
        data = await request.form()
        form = {k: x for k, x in data.items() if isinstance(x, str)}
    token = request.headers.get("x-csrf-token") or form.get("csrf_token")
    if not sessions.same_token(v.csrf_token, token):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page", "csrf_failed")
    return form


ReadViewer = Annotated[Viewer, Depends(viewer("read"))]
LabelViewer = Annotated[Viewer, Depends(viewer("label"))]
AdminViewer = Annotated[Viewer, Depends(viewer("admin"))]


class UiRoute(APIRoute):
    """Routes whose errors are pages (or JSON to a fetch) and whose missing session is a sign-in redirect."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                if wants_json(request) or request.method != "GET":
                    return JSONResponse({"error": {"code": "unauthorized", "message": "sign in first"}},
                                        status_code=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)
            except SemtagError as exc:
                return error_page(request, exc.status, exc.code, exc.message)
            except RequestValidationError as exc:
                msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:])}: {e.get('msg')}"
                                for e in exc.errors())
                return error_page(request, 422, "invalid_request", msg)

        return route


def error_page(request: Request, status: int, code: str, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
    from api.ui.pages import render

    return render(request, "error.html", {"status": status, "code": code, "message": message}, status=status)
