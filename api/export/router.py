"""/v1/export: every image the search's filters match, streamed as NDJSON or CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.dependencies import Principal, RuntimeDep, require
from api.errors import AUTH_ERRORS, documented
from api.images.router import Filters
from services.export.bulk import export_lines

router = APIRouter(tags=["export"])

NDJSON = "application/x-ndjson"
CSV = "text/csv"
_TEXT = {"type": "string"}


@router.get("/v1/export", response_class=StreamingResponse, responses={
    200: {"description": "one document a line (NDJSON) for kit-sem, jsonld and semtag; a table for csv",
          "content": {NDJSON: {"schema": _TEXT}, CSV: {"schema": _TEXT}}},
    **documented(*AUTH_ERRORS, 422)})
def export(rt: RuntimeDep, _who: Annotated[Principal, Depends(require("read"))], flt: Filters,
           format: Annotated[Literal["kit-sem", "jsonld", "semtag", "csv"],  # noqa: A002
                             Query(description="kit-sem, jsonld or semtag: NDJSON; csv: CSV")] = "kit-sem",
           ) -> StreamingResponse:
    """Every image the filters match (the same filters as `GET /v1/images`), streamed: the documents of
    `GET /v1/images/{id}/metadata` one a line, or a CSV table. Read page by page: memory stays bounded."""
    media = CSV if format == "csv" else NDJSON
    name = f"semtag-export.{'csv' if format == 'csv' else 'ndjson'}"
    return StreamingResponse(export_lines(rt, flt, format), media_type=f"{media}; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
