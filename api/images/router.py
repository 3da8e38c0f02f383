"""/v1/images: upload (streamed, deduplicated), read one, search, label."""

from __future__ import annotations

import copy
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor

from api.dependencies import IdPath, IdQuery, Principal, RuntimeDep, SessionDep, require
from api.errors import AUTH_ERRORS, documented, error_body
from api.images.schemas import UPLOAD_OPENAPI
from api.uploads import FilePart, read_multipart
from services.curation.schemas import (
    CurationHistory,
    HumanScaleRead,
    LabelRead,
    LabelRemoved,
    LabelRequest,
    ScaleRemoved,
    ScaleRequest,
)
from services.curation.service import history, predictions_of, remove_label, remove_scale, set_label, set_scale
from services.errors import BadInput, SemtagError
from services.export.formats import MEDIA_TYPES, MetadataFormat, image_document
from services.export.schemas import JsonLdDocument, KitSemDocument
from services.images import renditions
from services.images.ingest import ingest_file
from services.images.queries import ImageFilter, image_detail, known_images, list_images
from services.images.schemas import (
    ImagePage,
    ImageRead,
    LookupRequest,
    LookupResponse,
    PredictionHistory,
    PredictionRead,
    UploadItem,
    UploadResponse,
)
from services.records.schemas import DeletionRead
from services.records.service import delete_image


class ImageIdConvertor(Convertor[str]):
    """One path segment, except ``lookup``: that is ``POST /v1/images/lookup``, and the image's own routes must
    not match it (nor advertise their methods for it). The value is checked as an id by the route."""

    regex = r"(?!lookup$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("image_id", ImageIdConvertor())

router = APIRouter(prefix="/v1/images", tags=["images"])

Reader = Annotated[Principal, Depends(require("read"))]
Labeller = Annotated[Principal, Depends(require("label"))]
Admin = Annotated[Principal, Depends(require("admin"))]


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
                                              form.fields.get("record_id"), sidecar.writer if sidecar else None,
                                              form.fields.get("record_version"))
            except BadInput as exc:
                errors.append(exc)
                items.append(UploadItem(filename=part.filename, error={"code": exc.code, "message": exc.message}))
                continue
            items.append(UploadItem(filename=res.filename, id=res.image_id, sha256=res.sha256, status=res.status,
                                    duplicate=res.duplicate, record_id=res.record_id,
                                    record_version=res.record_version,
                                    record_added=res.record_added if res.record_id else None))
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


@router.post("/lookup", response_model=LookupResponse, responses=documented(*AUTH_ERRORS, 422))
def lookup_images(body: LookupRequest, session: SessionDep, _who: Reader) -> LookupResponse:
    """Which of these SHA-256 digests semtag stores already (1–1000 per request), with each image's records:
    a backfill (`semtag ingest`) asks before it sends, so known files are not uploaded again."""
    return known_images(session, body.sha256)


@router.get("/{image_id:image_id}", response_model=ImageRead, responses=documented(*AUTH_ERRORS, 404))
def get_image(image_id: IdPath, session: SessionDep, _who: Reader) -> ImageRead:
    """One image with its status, any error and every piece of metadata found so far."""
    return ImageRead.model_validate(image_detail(session, image_id))


@router.delete("/{image_id:image_id}", response_model=DeletionRead, responses=documented(*AUTH_ERRORS, 404))
async def take_down_image(image_id: IdPath, rt: RuntimeDep, who: Admin) -> DeletionRead:
    """Erase the image (a takedown of these bytes): its rows, its blobs and its links to every record.
    The audit trail keeps who, when and what (`GET /v1/admin/deletions`)."""
    return DeletionRead.model_validate(await run_in_threadpool(delete_image, rt, image_id, who.label))


_LD = {"$ref": "#/components/schemas/JsonLdDocument"}


@router.get("/{image_id}/metadata", response_model=KitSemDocument | ImageRead,
            responses={200: {"content": {"application/ld+json": {"schema": _LD}},
                             "description": "`kit-sem` and `semtag` as application/json, `jsonld` as "
                                            "application/ld+json"},
                       **documented(*AUTH_ERRORS, 404, 422)})
def get_metadata(image_id: IdPath, session: SessionDep, _who: Reader,
                 format: Annotated[MetadataFormat, Query(description="kit-sem (KIT SEM schema), jsonld "  # noqa: A002
                                                                    "(schema.org), semtag (ImageRead)")]
                 = MetadataFormat.kit_sem) -> BaseModel | JSONResponse:
    """The image's metadata in a standard schema: the KIT Data Manager SEM schema (`kit-sem`, semtag's
    results beside its `entry`) or a schema.org `ImageObject` in JSON-LD (`jsonld`)."""
    doc = image_document(session, image_id, format)
    if format is MetadataFormat.jsonld:
        return JSONResponse(JsonLdDocument.model_validate(doc).model_dump(mode="json", by_alias=True,
                                                                          exclude_none=True),
                            media_type=MEDIA_TYPES[format])
    return KitSemDocument.model_validate(doc) if format is MetadataFormat.kit_sem else ImageRead.model_validate(doc)


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


def image_filter(
    category: str | None = None,
    subcategory: IdQuery = None,
    pixel_size_min_nm: float | None = None,
    pixel_size_max_nm: float | None = None,
    min_confidence: float | None = None,
    status: str | None = None,
    record_id: Annotated[str | None, Query(description="images in this record (through any of their records)")]
    = None,
    record_version: Annotated[str | None, Query(description="with record_id: that version only")] = None,
    scale_bin: Annotated[str | None, Query(description="a 1-2-5 bin such as '1um-2um'")] = None,
    scale_min_nm: float | None = None,
    scale_max_nm: float | None = None,
) -> ImageFilter:
    """The search filters, shared by the search and the bulk export."""
    return ImageFilter(category=category, subcategory=subcategory, pixel_size_min_nm=pixel_size_min_nm,
                       pixel_size_max_nm=pixel_size_max_nm, min_confidence=min_confidence, status=status,
                       record_id=record_id, record_version=record_version, scale_bin=scale_bin,
                       scale_min_nm=scale_min_nm, scale_max_nm=scale_max_nm)


Filters = Annotated[ImageFilter, Depends(image_filter)]


@router.get("", response_model=ImagePage, responses=documented(*AUTH_ERRORS, 422))
def search_images(
    session: SessionDep,
    _who: Reader,
    flt: Filters,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> ImagePage:
    """Search by category, subcategory, pixel size, confidence, status, record and scale; keyset pagination."""
    return ImagePage.model_validate(list_images(session, flt, limit=limit, cursor=cursor), from_attributes=True)


@router.put("/{image_id}/scale", response_model=HumanScaleRead, responses=documented(*AUTH_ERRORS, 404, 422))
def put_scale(image_id: IdPath, body: ScaleRequest, session: SessionDep, who: Labeller) -> HumanScaleRead:
    """Store a curator's scale reading (confirming the machine's or correcting it), with who and when;
    it becomes the image's pixel size and scale bin."""
    return HumanScaleRead.model_validate(set_scale(session, image_id, body, who.label))


@router.delete("/{image_id}/scale", response_model=ScaleRemoved, responses=documented(*AUTH_ERRORS, 404))
def delete_scale(image_id: IdPath, session: SessionDep, who: Labeller) -> ScaleRemoved:
    """Undo the latest curator's scale reading: an earlier one, else the machine's reading, takes over."""
    return remove_scale(session, image_id, who.label)


@router.get("/{image_id}/curation", response_model=CurationHistory, responses=documented(*AUTH_ERRORS, 404))
def get_curation(image_id: IdPath, session: SessionDep, _who: Reader) -> CurationHistory:
    """The image's human labels and scale readings, newest first, with who and when."""
    return history(session, image_id)


RENDITION_RESPONSES: dict[int | str, dict] = {
    200: {"content": {"image/jpeg": {}, "image/webp": {}},
          "description": "the rendition; `ETag` is its content address, `Cache-Control` private"},
    304: {"description": "the client's copy (If-None-Match) is current"},
    **documented(*AUTH_ERRORS, 404, 413, 415, 422)}


def serve_rendition(rt: RuntimeDep, session: SessionDep, image_id: int, kind: str, size: int, fmt: str,
                    overlay: str | None, if_none_match: str | None) -> Response:
    """The cached rendition as a response, or a 304 when the client's ETag matches (shared with /ui)."""
    r = renditions.rendition(rt, session, image_id, kind, size, fmt, overlay)
    headers = {"ETag": r.etag, "Cache-Control": r.cache_control}
    if renditions.matches(if_none_match, r.etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(r.path, media_type=r.media_type, headers=headers)


Fmt = Annotated[str, Query(alias="format", description="jpeg or webp")]
Overlay = Annotated[str | None, Query(description="'scale': the data-bar box, the measured bar and the reading")]
IfNoneMatch = Annotated[str | None, Header(include_in_schema=False)]


@router.get("/{image_id}/thumbnail", response_class=Response, responses=RENDITION_RESPONSES)
def get_thumbnail(image_id: IdPath, rt: RuntimeDep, session: SessionDep, _who: Reader,
                  size: Annotated[int, Query(description="longest side: 64, 128, 256 or 512")] = 256,
                  fmt: Fmt = "jpeg", overlay: Overlay = None, if_none_match: IfNoneMatch = None) -> Response:
    """A display-ready thumbnail (grey stretched for display), cached; revalidate with If-None-Match."""
    return serve_rendition(rt, session, image_id, "thumbnail", size, fmt, overlay, if_none_match)


@router.get("/{image_id}/preview", response_class=Response, responses=RENDITION_RESPONSES)
def get_preview(image_id: IdPath, rt: RuntimeDep, session: SessionDep, _who: Reader,
                size: Annotated[int, Query(description="longest side: 512, 1024 or 2048")] = 1024,
                fmt: Fmt = "jpeg", overlay: Overlay = None, if_none_match: IfNoneMatch = None) -> Response:
    """A display-ready preview; with `overlay=scale` the scale reading is drawn on it."""
    return serve_rendition(rt, session, image_id, "preview", size, fmt, overlay, if_none_match)
