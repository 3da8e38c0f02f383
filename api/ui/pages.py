"""The console's pages (GET): server-rendered Jinja2 templates over the same core functions as the API."""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from api.admin.router import job_read, report_file
from api.dependencies import IdPath, RuntimeDep, SessionDep
from api.images.router import serve_rendition
from api.ui.auth import (
    COOKIE,
    LOGIN_COOKIE,
    AdminViewer,
    LabelViewer,
    ReadViewer,
    UiRoute,
    Viewer,
    cookie_kwargs,
    safe_next,
)
from services.access import sessions
from services.classify import registry
from services.clustering.tree import list_subcategories, subcategory_detail
from services.curation import console
from services.curation.service import history, predictions_of, review_queue
from services.data.categories import CATEGORIES, NAMES, SLUGS
from services.images.queries import ImageFilter, image_detail, list_images
from services.images.schemas import ImageRead, ImageSummary, PredictionRead
from services.jobs.service import JOB_KINDS, list_jobs

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(CATEGORIES=CATEGORIES, NAMES=NAMES, SLUGS=SLUGS)
templates.env.filters["tojson_attr"] = lambda v: json.dumps(v)

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)

REVIEW_PAGE = 50
UNITS = ("nm", "µm", "mm", "pm")


def render(request: Request, name: str, context: dict[str, Any], v: Viewer | None = None,
           status: int = 200) -> Response:
    ctx = {"viewer": v, "csrf": v.csrf_token if v else "", "path": request.url.path, **context}
    resp = templates.TemplateResponse(request, name, ctx, status_code=status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---- sign-in ---------------------------------------------------------------------------------

@router.get("/login")
def login_form(request: Request, session: SessionDep, next: str | None = None) -> Response:  # noqa: A002
    signed = sessions.resolve(session, request.cookies.get(COOKIE))
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", {"next": safe_next(next), "login_csrf": token, "signed": signed})
    resp.set_cookie(LOGIN_COOKIE, token, max_age=3600, **cookie_kwargs(request))
    return resp


@router.get("/", include_in_schema=False)
def slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


# ---- dashboard -------------------------------------------------------------------------------

@router.get("")
def dashboard_page(request: Request, session: SessionDep, v: ReadViewer) -> Response:
    d = console.dashboard(session)
    return render(request, "dashboard.html", {"d": d, "cat_rows": [(name, n) for _, name, n in d.by_category],
                                              "day_ticks": [day[5:] for day, _ in d.labels_per_day]}, v)


# ---- review queue ----------------------------------------------------------------------------

def _review(session: SessionDep, category: str | None, model_version: str | None, ood: str | None,
            unlabelled: bool, after: str | None, limit: int = REVIEW_PAGE) -> Any:
    key = None
    if after:
        conf, _, iid = after.partition(":")
        try:
            key = (float(conf), int(iid))
        except ValueError:
            from services.errors import BadInput

            raise BadInput("after must be CONFIDENCE:ID", "bad_cursor") from None
    return review_queue(session, limit, 0, True, category or None, model_version or None,
                        {"yes": True, "no": False}.get(ood or ""), unlabelled, key)


@router.get("/review")
def review_page(request: Request, session: SessionDep, v: LabelViewer, category: str | None = None,
                model_version: str | None = None, ood: str | None = None, unlabelled: bool = True,
                after: str | None = None) -> Response:
    page = _review(session, category, model_version, ood, unlabelled, after)
    models = [m.version for m in registry.list_models(session)]
    return render(request, "review.html", {"page": page, "models": models, "f": {
        "category": category or "", "model_version": model_version or "", "ood": ood or "",
        "unlabelled": unlabelled}}, v)


@router.get("/review/cards")
def review_cards(request: Request, session: SessionDep, v: LabelViewer, category: str | None = None,
                 model_version: str | None = None, ood: str | None = None, unlabelled: bool = True,
                 after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
    """More cards after the last one shown (the queue advances without a reload)."""
    page = _review(session, category, model_version, ood, unlabelled, after, limit)
    return render(request, "_cards.html", {"page": page}, v)


# ---- scale triage ----------------------------------------------------------------------------

@router.get("/scale")
def scale_page(request: Request, session: SessionDep, v: LabelViewer, kind: str = "disagree",
               after: int | None = None) -> Response:
    items, total, nxt = console.scale_triage(session, kind, 20, after)
    counts = {k: console.scale_triage(session, k, 1)[1] for k in console.TRIAGE_KINDS}
    return render(request, "scale.html", {"items": items, "total": total, "next": nxt, "kind": kind,
                                          "kinds": console.TRIAGE_KINDS, "counts": counts, "units": UNITS}, v)


# ---- one image -------------------------------------------------------------------------------

@router.get("/images/{image_id}")
def image_page(request: Request, image_id: IdPath, session: SessionDep, v: ReadViewer,
               overlay: bool = False) -> Response:
    img = ImageRead.model_validate(image_detail(session, image_id))
    preds = [PredictionRead.model_validate(p) for p in predictions_of(session, image_id)]
    hist = history(session, image_id)
    return render(request, "image.html", {"img": img, "preds": preds, "hist": hist, "overlay": overlay,
                                          "units": UNITS}, v)


def _rendition(kind: str, default: int) -> Any:
    def route(image_id: IdPath, rt: RuntimeDep, session: SessionDep, _v: ReadViewer, size: int = default,
              overlay: str | None = None, if_none_match: Annotated[str | None, Header()] = None) -> Response:
        return serve_rendition(rt, session, image_id, kind, size, "jpeg", overlay, if_none_match)

    return route


router.add_api_route("/images/{image_id}/thumbnail", _rendition("thumbnail", 256), methods=["GET"])
router.add_api_route("/images/{image_id}/preview", _rendition("preview", 1024), methods=["GET"])


# ---- search ----------------------------------------------------------------------------------

def _filter(q: dict[str, str]) -> ImageFilter:
    def num(name: str) -> float | None:
        raw = q.get(name, "").strip()
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            from services.errors import BadInput

            raise BadInput(f"{name} must be a number", "bad_filter") from None

    sub = q.get("subcategory", "").strip()
    return ImageFilter(category=q.get("category") or None, subcategory=int(sub) if sub.isdigit() else None,
                       pixel_size_min_nm=num("pixel_size_min_nm"), pixel_size_max_nm=num("pixel_size_max_nm"),
                       min_confidence=num("min_confidence"), status=q.get("status") or None,
                       record_id=q.get("record_id") or None, scale_bin=q.get("scale_bin") or None)


SEARCH_KEYS = ("category", "subcategory", "pixel_size_min_nm", "pixel_size_max_nm", "min_confidence", "status",
               "record_id", "scale_bin")


@router.get("/search")
def search_page(request: Request, session: SessionDep, v: ReadViewer, cursor: str | None = None) -> Response:
    q = {k: request.query_params.get(k, "") for k in SEARCH_KEYS}
    page = list_images(session, _filter(q), limit=48, cursor=cursor)
    items = [ImageSummary.model_validate(i) for i in page.items]
    qs = urlencode({k: x for k, x in q.items() if x})
    return render(request, "search.html", {"items": items, "next": page.next_cursor, "q": q, "qs": qs}, v)


CSV_COLUMNS = ("id", "filename", "record_id", "status", "category", "category_source", "confidence",
               "pixel_size_nm", "scale_nm", "scale_bin", "subcategory_id", "created_at")


def csv_cell(value: Any) -> str:
    """A cell as text; one that a spreadsheet would run as a formula (=, +, -, @, tab, CR) is quoted with '."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@router.get("/search.csv")
def search_csv(request: Request, rt: RuntimeDep, v: ReadViewer) -> StreamingResponse:
    """Every image the search matches, as CSV (streamed page by page)."""
    q = {k: request.query_params.get(k, "") for k in SEARCH_KEYS}
    flt = _filter(q)

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        cursor: str | None = None
        while True:
            with rt.session() as s:
                page = list_images(s, flt, limit=500, cursor=cursor)
                for img in page.items:
                    d = ImageSummary.model_validate(img).model_dump(mode="json")
                    w.writerow([csv_cell(d[c]) for c in CSV_COLUMNS])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="semtag-search.csv"',
                                      "Cache-Control": "no-store"})


# ---- subcategories ---------------------------------------------------------------------------

@router.get("/subcategories")
def subcategories_page(request: Request, session: SessionDep, v: ReadViewer) -> Response:
    tree = list_subcategories(session)
    by_id = {sc.id: sc for sc in tree.subcategories}
    groups = [(cat, NAMES.get(cat, cat), [by_id[i] for i in ids]) for cat, ids in tree.tree.items()]
    return render(request, "subcategories.html", {"tree": tree, "groups": groups}, v)


@router.get("/subcategories/{sub_id}")
def subcategory_page(request: Request, sub_id: IdPath, session: SessionDep, v: ReadViewer,
                     cursor: int | None = None) -> Response:
    sc = subcategory_detail(session, sub_id, 60, cursor)
    return render(request, "subcategory.html", {"sc": sc}, v)


# ---- admin -----------------------------------------------------------------------------------

@router.get("/admin/jobs")
def jobs_page(request: Request, rt: RuntimeDep, v: AdminViewer) -> Response:
    rows, _ = list_jobs(rt, limit=50)
    kinds = {name: k.description for name, k in sorted(JOB_KINDS.items())}
    examples = {name: json.dumps(_defaults(k.params), indent=1) for name, k in JOB_KINDS.items()}
    return render(request, "jobs.html", {"jobs": [job_read(j) for j in rows], "kinds": kinds,
                                         "examples": examples}, v)


def _defaults(model: Any) -> dict[str, Any]:
    try:
        return model().model_dump(mode="json")
    except Exception:  # noqa: BLE001 — a kind with required parameters: an empty object to fill in
        return {}


@router.get("/admin/jobs.json")
def jobs_json(rt: RuntimeDep, _v: AdminViewer) -> Response:
    """The latest jobs for the page's live progress (polled)."""
    rows, _ = list_jobs(rt, limit=50)
    body = [job_read(j).model_dump(mode="json", include={"id", "status", "progress", "message", "error",
                                                         "report_url", "finished_at"}) for j in rows]
    return Response(json.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/admin/jobs/{job_id}/report/")
def report_page(job_id: IdPath, rt: RuntimeDep, _v: AdminViewer) -> FileResponse:
    return FileResponse(report_file(rt, job_id, "report.html"), media_type="text/html")


@router.get("/admin/jobs/{job_id}/report/{name}")
def report_asset(job_id: IdPath, name: str, rt: RuntimeDep, _v: AdminViewer) -> FileResponse:
    return FileResponse(report_file(rt, job_id, name))


@router.get("/admin/models")
def models_page(request: Request, session: SessionDep, v: AdminViewer) -> Response:
    from services.classify.schemas import ModelRead

    models = [ModelRead.model_validate(m) for m in registry.list_models(session)]
    return render(request, "models.html", {"models": models}, v)
