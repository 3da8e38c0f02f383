"""/v1/images: upload (streamed, deduplicated), read one, search."""

from __future__ import annotations

from pathlib import PurePath

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.dependencies import Principal, get_runtime, get_session, require
from api.errors import error_body
from api.images.schemas import UPLOAD_OPENAPI, LabelRequest, UploadResponse
from api.uploads import FilePart, read_multipart
from services.curation.service import predictions_of, set_label
from services.errors import BadInput
from services.images.queries import ImageFilter, image_detail, list_images
from services.images.ingest import ingest_file
from services.runtime import Runtime

router = APIRouter(prefix="/v1/images", tags=["images"])


def _pair_sidecars(images: list[FilePart], sidecars: list[FilePart]) -> dict[int, FilePart]:
    """Sidecar for each image index: by file stem, or the only sidecar for the only image."""
    if len(images) == 1 and len(sidecars) == 1:
        return {0: sidecars[0]}
    by_stem = {PurePath(s.filename or "").stem: s for s in sidecars}
    return {i: by_stem[PurePath(p.filename or "").stem] for i, p in enumerate(images)
            if PurePath(p.filename or "").stem in by_stem}


@router.post("", status_code=202, response_model=UploadResponse, openapi_extra=UPLOAD_OPENAPI,
             responses={413: {}, 415: {}, 422: {}})
async def upload_images(request: Request, rt: Runtime = Depends(get_runtime),
                        _who: Principal = Depends(require("ingest"))) -> JSONResponse:
    s = rt.settings
    form = await read_multipart(request, rt.store, s.max_upload_bytes, s.max_request_bytes, s.max_files_per_request)
    try:
        images = [p for p in form.files if p.field != "sidecar"]
        sidecars = [p for p in form.files if p.field == "sidecar"]
        if not images:
            raise BadInput("no file in the request: send it in a form field named 'file'", "no_file")
        pairs = _pair_sidecars(images, sidecars)
        items, errors = [], []
        for i, part in enumerate(images):
            sidecar = pairs.get(i)
            if part.error is None and sidecar is not None and sidecar.error is not None:
                part.error = type(sidecar.error)(f"sidecar {sidecar.filename!r}: {sidecar.error.message}",
                                                 sidecar.error.code)
            if part.error is not None:
                errors.append(part.error)
                items.append({"filename": part.filename, "error": {"code": part.error.code,
                                                                    "message": part.error.message}})
                continue
            try:
                res = await run_in_threadpool(ingest_file, rt, part.writer, part.filename,
                                              form.fields.get("record_id"), sidecar.writer if sidecar else None)
            except BadInput as exc:
                errors.append(exc)
                items.append({"filename": part.filename, "error": {"code": exc.code, "message": exc.message}})
                continue
            items.append({"filename": res.filename, "id": res.image_id, "sha256": res.sha256,
                          "status": res.status, "duplicate": res.duplicate})
    finally:
        form.discard()
    accepted = len(items) - len(errors)
    body = {"items": items, "accepted": accepted, "rejected": len(errors)}
    if accepted == 0:
        codes = {e.code for e in errors}
        status = errors[0].status if len(codes) == 1 else 422
        first = errors[0]
        msg = first.message if len(errors) == 1 else f"none of the {len(errors)} files was accepted"
        return JSONResponse({**error_body(first.code if len(codes) == 1 else "all_files_rejected", msg), **body},
                            status_code=status)
    return JSONResponse(body, status_code=202)


@router.get("/{image_id}")
def get_image(image_id: int, session: Session = Depends(get_session),
              _who: Principal = Depends(require("read"))) -> dict:
    return image_detail(session, image_id)


@router.put("/{image_id}/label")
def put_label(image_id: int, body: LabelRequest, session: Session = Depends(get_session),
              who: Principal = Depends(require("label"))) -> dict:
    return set_label(session, image_id, body.category, who.name or f"key-{who.key_id}")


@router.get("/{image_id}/predictions")
def get_predictions(image_id: int, session: Session = Depends(get_session),
                    _who: Principal = Depends(require("read"))) -> dict:
    return {"image_id": image_id, "predictions": predictions_of(session, image_id)}


@router.get("")
def search_images(
    category: str | None = None,
    subcategory: int | None = None,
    pixel_size_min_nm: float | None = None,
    pixel_size_max_nm: float | None = None,
    min_confidence: float | None = None,
    status: str | None = None,
    record_id: str | None = None,
    scale_bin: str | None = None,
    scale_min_nm: float | None = None,
    scale_max_nm: float | None = None,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
    session: Session = Depends(get_session),
    _who: Principal = Depends(require("read")),
) -> dict:
    flt = ImageFilter(category=category, subcategory=subcategory, pixel_size_min_nm=pixel_size_min_nm,
                      pixel_size_max_nm=pixel_size_max_nm, min_confidence=min_confidence, status=status,
                      record_id=record_id, scale_bin=scale_bin, scale_min_nm=scale_min_nm,
                      scale_max_nm=scale_max_nm)
    return list_images(session, flt, limit=limit, cursor=cursor)
