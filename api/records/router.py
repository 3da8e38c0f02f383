"""/v1/records: a repository record with its images, its RO-Crate, its takedown; the deletion audit trail.

Record ids may contain slashes (DOIs, handles): the path takes the rest of the URL, and
``/ro-crate`` at its end names the crate (a record whose id ends so is out of luck).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from api.dependencies import Principal, RuntimeDep, SessionDep, require
from api.errors import AUTH_ERRORS, documented
from services.export.formats import record_document
from services.export.schemas import JsonLdDocument, RoCrateMetadata
from services.images.schemas import ImageRead
from services.records.schemas import DeletionPage, DeletionRead, RecordRead
from services.records.service import delete_record, get_record, list_deletions


class RecordIdConvertor(Convertor[str]):
    """The rest of the path (slashes included), except a trailing ``/ro-crate`` or ``/jsonld``: those are the
    record's documents' routes, and the record's own routes must not match them (nor advertise their methods
    for them)."""

    regex = r"(?:(?!/(?:ro-crate|jsonld)$).)+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("record_id", RecordIdConvertor())

router = APIRouter(tags=["records"])

Reader = Annotated[Principal, Depends(require("read"))]
Admin = Annotated[Principal, Depends(require("admin"))]
VersionQuery = Annotated[str | None, Query(max_length=64, description="one version of the record only")]
LD_JSON = "application/ld+json"


@router.get("/v1/records/{record_id:path}/ro-crate", response_model=RoCrateMetadata,
            response_class=JSONResponse, responses={
                200: {"content": {LD_JSON: {"schema": {"$ref": "#/components/schemas/RoCrateMetadata"}}},
                      "description": "the record's ro-crate-metadata.json (JSON-LD, RO-Crate 1.3)"},
                **documented(*AUTH_ERRORS, 404, 422)})
def get_ro_crate(record_id: str, session: SessionDep, _who: Reader,
                 record_version: VersionQuery = None) -> JSONResponse:
    """The record's `ro-crate-metadata.json`: its images (data entities) and semtag's findings, built with
    ro-crate-py. Served as `application/ld+json`; save it beside the record's files."""
    view = get_record(session, record_id, record_version, limit=None)
    return JSONResponse(record_document(view.record_id, view.versions, view.images, "ro-crate"), media_type=LD_JSON)


@router.get("/v1/records/{record_id:path}/jsonld", response_model=JsonLdDocument,
            response_class=JSONResponse, responses={
                200: {"content": {LD_JSON: {"schema": {"$ref": "#/components/schemas/JsonLdDocument"}}},
                      "description": "the record as a schema.org Dataset whose hasPart are its images"},
                **documented(*AUTH_ERRORS, 404, 422)})
def get_record_jsonld(record_id: str, session: SessionDep, _who: Reader,
                      record_version: VersionQuery = None) -> JSONResponse:
    """The record as JSON-LD: a schema.org `Dataset` (identifier, version) whose `hasPart` are its images,
    each the `ImageObject` of `GET /v1/images/{id}/metadata?format=jsonld`, in the bundled context."""
    view = get_record(session, record_id, record_version, limit=None)
    return JSONResponse(record_document(view.record_id, view.versions, view.images, "jsonld"), media_type=LD_JSON)


@router.get("/v1/records/{record_id:record_id}", response_model=RecordRead,
            responses=documented(*AUTH_ERRORS, 404, 422))
def read_record(record_id: str, session: SessionDep, _who: Reader, record_version: VersionQuery = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
                ) -> RecordRead:
    """The record's versions and its images (a page of them), each with all its metadata."""
    view = get_record(session, record_id, record_version, limit, cursor)
    return RecordRead(record_id=view.record_id, versions=view.versions, image_count=view.image_count,
                      images=[ImageRead.model_validate(d) for d in view.images], next_cursor=view.next_cursor)


@router.delete("/v1/records/{record_id:record_id}", response_model=DeletionRead,
               responses=documented(*AUTH_ERRORS, 404, 422))
async def take_down_record(record_id: str, rt: RuntimeDep, who: Admin,
                           record_version: VersionQuery = None) -> DeletionRead:
    """Take the record (or one version of it) down: its links go, and every image no other record holds is
    erased with its rows and blobs. The audit trail keeps who, when and what (`GET /v1/admin/deletions`)."""
    row = await run_in_threadpool(delete_record, rt, record_id, who.label, record_version)
    return DeletionRead.model_validate(row)


@router.get("/v1/admin/deletions", response_model=DeletionPage, responses=documented(*AUTH_ERRORS, 422))
def deletions(session: SessionDep, _who: Admin, limit: Annotated[int, Query(ge=1, le=500)] = 50,
              cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
              ) -> DeletionPage:
    """The audit trail of takedowns, newest first: who erased what, when."""
    page = list_deletions(session, limit, cursor)
    return DeletionPage(items=[DeletionRead.model_validate(r) for r in page.items], next_cursor=page.next_cursor)
