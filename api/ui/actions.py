"""The console's actions (POST): each checks the session, its role and the CSRF token, then calls the core.

A form posted by the browser gets a 303 back to the page it came from (``next``); a fetch from the
page's script (``Accept: application/json``) gets JSON, so the review queue advances without a reload.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response

from api.admin.router import job_read
from api.dependencies import IdPath, RuntimeDep
from api.ui.auth import (
    COOKIE,
    LOGIN_COOKIE,
    AdminViewer,
    LabelViewer,
    ReadViewer,
    UiRoute,
    check_csrf,
    cookie_kwargs,
    cross_site,
    safe_next,
    wants_json,
)
from services.access import sessions
from services.clustering.schemas import SubcategoryRead
from services.clustering.tree import rename_subcategory
from services.curation.schemas import HumanScaleRead, LabelRead, ScaleRequest
from services.curation.service import remove_label, remove_scale, set_label, set_scale
from services.errors import BadInput, Forbidden, Unauthorized
from services.images.pipeline import activate_model
from services.jobs.service import cancel_job, create_job
from services.runtime import Runtime

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)


def _done(request: Request, form: dict[str, str], body: dict[str, Any]) -> Response:
    if wants_json(request):
        return JSONResponse(body)
    return RedirectResponse(safe_next(form.get("next")), status_code=303)


async def _in_session(rt: Runtime, work: Callable[[Any], Any]) -> Any:
    def run() -> Any:
        with rt.session() as s:
            return work(s)

    return await run_in_threadpool(run)


# ---- sign-in ---------------------------------------------------------------------------------

@router.post("/login")
async def login(request: Request, rt: RuntimeDep) -> Response:
    from api.ui.pages import render

    if cross_site(request):
        raise Forbidden("a sign-in from another site was refused", "cross_site")
    form = {k: x for k, x in (await request.form()).items() if isinstance(x, str)}
    if not sessions.same_token(request.cookies.get(LOGIN_COOKIE, ""), form.get("login_csrf")):
        raise Forbidden("the sign-in form is stale; reload the page and paste the key again", "csrf_failed")
    try:
        signed = await _in_session(rt, lambda s: sessions.sign_in(s, form.get("key", ""), rt.settings.ui_session_s))
    except Unauthorized as exc:
        return render(request, "login.html", {"next": safe_next(form.get("next")), "error": exc.message,
                                              "login_csrf": form.get("login_csrf")}, status=401)
    resp = RedirectResponse(safe_next(form.get("next")), status_code=303)
    resp.set_cookie(COOKIE, signed.token or "", max_age=rt.settings.ui_session_s, **cookie_kwargs(request))
    resp.delete_cookie(LOGIN_COOKIE, path="/ui")
    return resp


@router.post("/logout")
async def logout(request: Request, rt: RuntimeDep, v: ReadViewer) -> Response:
    await check_csrf(request, v)
    token = request.cookies.get(COOKIE)
    await _in_session(rt, lambda s: sessions.sign_out(s, token))
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/ui")
    return resp


# ---- labels and scales -----------------------------------------------------------------------

@router.post("/images/{image_id}/label")
async def label(request: Request, image_id: IdPath, rt: RuntimeDep, v: LabelViewer) -> Response:
    form = await check_csrf(request, v)
    cat = form.get("category", "")
    row = await _in_session(rt, lambda s: LabelRead.model_validate(set_label(s, image_id, cat, v.principal.label)))
    return _done(request, form, row.model_dump(mode="json"))


@router.post("/images/{image_id}/label/undo")
async def undo_label(request: Request, image_id: IdPath, rt: RuntimeDep, v: LabelViewer) -> Response:
    form = await check_csrf(request, v)
    done = await _in_session(rt, lambda s: remove_label(s, image_id))
    return _done(request, form, done.model_dump(mode="json"))


def _scale_request(form: dict[str, str]) -> ScaleRequest:
    from pydantic import ValidationError

    from services.errors import validation_message

    def num(name: str) -> float | None:
        raw = form.get(name, "").strip().replace(",", ".")
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            raise BadInput(f"{name.replace('_', ' ')} must be a number", "bad_scale") from None

    try:
        return ScaleRequest(scale_value=num("scale_value") or 0.0, scale_unit=form.get("scale_unit", ""),
                            bar_px=num("bar_px"), pixel_size_nm=num("pixel_size_nm"))
    except ValidationError as exc:
        raise BadInput(validation_message(exc, ScaleRequest, "field"), "bad_scale") from None


@router.post("/images/{image_id}/scale")
async def scale(request: Request, image_id: IdPath, rt: RuntimeDep, v: LabelViewer) -> Response:
    form = await check_csrf(request, v)
    req = _scale_request(form)
    row = await _in_session(rt, lambda s: HumanScaleRead.model_validate(set_scale(s, image_id, req,
                                                                                  v.principal.label)))
    return _done(request, form, row.model_dump(mode="json"))


@router.post("/images/{image_id}/scale/undo")
async def undo_scale(request: Request, image_id: IdPath, rt: RuntimeDep, v: LabelViewer) -> Response:
    form = await check_csrf(request, v)
    done = await _in_session(rt, lambda s: remove_scale(s, image_id, v.principal.label))
    return _done(request, form, done.model_dump(mode="json"))


# ---- subcategories ---------------------------------------------------------------------------

@router.post("/subcategories/{sub_id}/name")
async def rename(request: Request, sub_id: IdPath, rt: RuntimeDep, v: LabelViewer) -> Response:
    form = await check_csrf(request, v)
    name = form.get("name", "")
    row = await _in_session(rt, lambda s: SubcategoryRead.model_validate(
        rename_subcategory(s, sub_id, name, v.principal.label)))
    return _done(request, form, row.model_dump(mode="json"))


# ---- admin -----------------------------------------------------------------------------------

@router.post("/admin/jobs")
async def start_job(request: Request, rt: RuntimeDep, v: AdminViewer) -> Response:
    form = await check_csrf(request, v)
    raw = form.get("params", "").strip() or "{}"
    try:
        params = json.loads(raw)
    except ValueError as exc:
        raise BadInput(f"the parameters are not valid JSON: {exc}", "malformed_json") from None
    job = await run_in_threadpool(create_job, rt, form.get("kind", ""), params, v.principal.name)
    return _done(request, {"next": "/ui/admin/jobs", **form}, job_read(job).model_dump(mode="json"))


@router.post("/admin/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: IdPath, rt: RuntimeDep, v: AdminViewer) -> Response:
    form = await check_csrf(request, v)
    job = await run_in_threadpool(cancel_job, rt, job_id)
    return _done(request, {"next": "/ui/admin/jobs", **form}, job_read(job).model_dump(mode="json"))


@router.post("/admin/models/{version}/activate")
async def activate(request: Request, version: str, rt: RuntimeDep, v: AdminViewer) -> Response:
    form = await check_csrf(request, v)
    done = await run_in_threadpool(activate_model, rt, version, form.get("reclassify") == "on")
    return _done(request, {"next": "/ui/admin/models", **form},
                 {"version": done.model.version, "queued_images": done.queued_images})
