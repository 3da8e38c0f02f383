"""/v1/images: upload (streamed, deduplicated), read one, search, label."""

from __future__ import annotations

import copy
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.dependencies import IdPath, IdQuery, Principal, RuntimeDep, SessionDep, require
from api.errors import AUTH_ERRORS, documented, error_body
from api.images.schemas import UPLOAD_OPENAPI
from api.uploads import FilePart, read_multipart
from services.curation.schemas import LabelRead, LabelRemoved, LabelRequest
from services.curation.service import predictions_of, remove_label, set_label
from services.errors import BadInput, SemtagError
from services.images.ingest import ingest_file
from services.images.queries import ImageFilter, image_detail, list_images
from services.images.schemas import ImagePage, ImageRead, PredictionHistory, PredictionRead, UploadItem, UploadResponse

router = APIRouter(prefix="/v1/images", tags=["images"])

Reader = Annotated[Principal, Depends(require("read"))]
Labeller = Annotated[Principal, Depends(require("label"))]


def _pair_sidecars(images: list[FilePart], sidecars: list[FilePart]) -> dict[int, FilePart]:
    """Sidecar for each image index: by file stem, or the only sidecar for the only image."""
    if len(images) == 1 and len(sidecars) == 1:
        return {0: sidecars[0]}
    by_stem = {PurePath(s.filename or "").stem: s for s in sidecars}
    return {i: by_stem[PurePath(p.filename or "").stem] for i, p in enumerate(images)
            if PurePath(p.filename or "").stem in by_stem}


@router.post("", status_code=202, response_model=UploadResponse, response_model_exclude_none=True,
             openapi_extra=UPLOAD_OPENAPI,
             responses=documented(400, *AUTH_ERRORS, 413, 415, 422))
async def upload_images(request: Request, rt: RuntimeDep,
                        _who: Annotated[Principal, Depends(require("ingest"))]) -> UploadResponse | JSONResponse:
    """Upload one or many images (multipart, field `file`), each with an optional `sidecar`; 202 with one
    item per file. When no file is accepted the status is the error's."""
    s = rt.settings
    form = await read_multipart(request, rt.store, s.max_upload_bytes, s.max_request_bytes, s.max_files_per_request)
    try:
        images = [p for p in form.files if p.field != "sidecar"]
        sidecars = [p for p in form.files if p.field == "sidecar"]
        if not images:
            raise BadInput("no file in the request: send it in a form field named 'file'", "no_file")
        pairs = _pair_sidecars(images, sidecars)
        items: list[UploadItem] = []
        errors: list[SemtagError] = []
        for i, part in enumerate(images):
            sidecar = pairs.get(i)
            if part.error is None and sidecar is not None and sidecar.error is not None:
                part.error = copy.copy(sidecar.error)  # same class, status and code; the message says which file
                part.error.message = f"sidecar {sidecar.filename!r}: {sidecar.error.message}"
            if part.error is not None or part.writer is None:
                part.error = part.error or BadInput(f"{part.filename!r} was not stored", "upload_failed")
                errors.append(part.error)
                items.append(UploadItem(filename=part.filename,
                                        error={"code": part.error.code, "message": part.error.message}))
                continue
            try:
                res = await run_in_threadpool(ingest_file, rt, part.writer, part.filename,
                                              form.fields.get("record_id"), sidecar.writer if sidecar else None)
            except BadInput as exc:
                errors.append(exc)
                items.append(UploadItem(filename=part.filename, error={"code": exc.code, "message": exc.message}))
                continue
            items.append(UploadItem(filename=res.filename, id=res.image_id, sha256=res.sha256, status=res.status,
                                    duplicate=res.duplicate))
    finally:
        form.discard()
    body = UploadResponse(items=items, accepted=len(items) - len(errors), rejected=len(errors))
    if body.accepted == 0:
        codes = {e.code for e in errors}
        first = errors[0]
        msg = first.message if len(errors) == 1 else f"none of the {len(errors)} files was accepted"
        envelope = error_body(first.code if len(codes) == 1 else "all_files_rejected", msg)
        return JSONResponse({**envelope, **body.model_dump(mode="json", exclude_none=True)},
                            status_code=first.status if len(codes) == 1 else 422)
    return body


@router.get("/{image_id}", response_model=ImageRead, responses=documented(*AUTH_ERRORS, 404))
def get_image(image_id: IdPath, session: SessionDep, _who: Reader) -> ImageRead:
    """One image with its status, any error and every piece of metadata found so far."""
    return ImageRead.model_validate(image_detail(session, image_id))


@router.put("/{image_id}/label", response_model=LabelRead, responses=documented(*AUTH_ERRORS, 404, 422))
def put_label(image_id: IdPath, body: LabelRequest, session: SessionDep, who: Labeller) -> LabelRead:
    """Store a human label; it becomes the image's searchable category."""
    return LabelRead.model_validate(set_label(session, image_id, body.category, who.label))


@router.delete("/{image_id}/label", response_model=LabelRemoved, responses=documented(*AUTH_ERRORS, 404))
def delete_label(image_id: IdPath, session: SessionDep, _who: Labeller) -> LabelRemoved:
    """Undo the image's current human label: an earlier label, else the active model's prediction, takes over."""
    return remove_label(session, image_id)


@router.get("/{image_id}/predictions", response_model=PredictionHistory, responses=documented(*AUTH_ERRORS, 404))
def get_predictions(image_id: IdPath, session: SessionDep, _who: Reader) -> PredictionHistory:
    """Every model's prediction for the image, newest first."""
    rows = predictions_of(session, image_id)
    return PredictionHistory(image_id=image_id, predictions=[PredictionRead.model_validate(p) for p in rows])


@router.get("", response_model=ImagePage, responses=documented(*AUTH_ERRORS, 422))
def search_images(
    session: SessionDep,
    _who: Reader,
    category: str | None = None,
    subcategory: IdQuery = None,
    pixel_size_min_nm: float | None = None,
    pixel_size_max_nm: float | None = None,
    min_confidence: float | None = None,
    status: str | None = None,
    record_id: str | None = None,
    scale_bin: Annotated[str | None, Query(description="a 1-2-5 bin such as '1um-2um'")] = None,
    scale_min_nm: float | None = None,
    scale_max_nm: float | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> ImagePage:
    """Search by category, subcategory, pixel size, confidence, status, record and scale; keyset pagination."""
    flt = ImageFilter(category=category, subcategory=subcategory, pixel_size_min_nm=pixel_size_min_nm,
                      pixel_size_max_nm=pixel_size_max_nm, min_confidence=min_confidence, status=status,
                      record_id=record_id, scale_bin=scale_bin, scale_min_nm=scale_min_nm,
                      scale_max_nm=scale_max_nm)
    return ImagePage.model_validate(list_images(session, flt, limit=limit, cursor=cursor), from_attributes=True)
