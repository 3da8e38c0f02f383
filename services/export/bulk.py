"""Bulk export over the image search's filters: NDJSON (one document a line) or CSV (one image a row).

Rows are read a page at a time by keyset (ascending id), each page in a short transaction of its own,
so memory stays bounded by the page size whatever the number of images, and no connection is held
while the caller writes. Images added during the export appear if their id is beyond the page read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from services.export.formats import MetadataFormat, parse_format, render
from services.images.queries import ImageFilter, detail_of
from services.images.schemas import ImageDetail
from services.runtime import Runtime
from services.tables import Image
from services.types import iso_utc

PAGE = 200

CSV_COLUMNS = ["id", "sha256", "filename", "records", "status", "format", "width", "height", "bytes",
               "pixel_size_nm", "scale_value", "scale_unit", "scale_source", "scale_confidence", "category",
               "category_source", "confidence", "model_version", "subcategory_id", "subcategory",
               "human_label", "vendor", "instrument", "hv_kv", "wd_mm", "mag", "detector", "tilt_deg", "date",
               "created_at"]


def iter_details(rt: Runtime, flt: ImageFilter, page: int = PAGE) -> Iterator[ImageDetail]:
    """Every image the filter matches, with its metadata, in ascending id; one short transaction per page."""
    after = 0
    while True:
        with rt.session() as s:
            rows = list(s.scalars(flt.apply(select(Image).options(selectinload(Image.records)))
                                  .where(Image.id > after).order_by(Image.id).limit(page)))
            details = [detail_of(s, img) for img in rows]
        yield from details
        if len(rows) < page:
            return
        after = rows[-1].id


def csv_row(d: ImageDetail) -> list[Any]:
    img, scale, pred, label, sub = d.image, d.scale, d.prediction, d.label, d.subcategory
    f = dict(scale.fields or {}) if scale is not None else {}
    records = ";".join(r.record_id + (f"@{r.record_version}" if r.record_version else "") for r in img.records)
    values = {
        "id": img.id, "sha256": img.sha256, "filename": img.filename, "records": records, "status": img.status,
        "format": img.format, "width": img.width, "height": img.height, "bytes": img.bytes,
        "pixel_size_nm": img.pixel_size_nm, "scale_value": scale.scale_value if scale else None,
        "scale_unit": scale.scale_unit if scale else None, "scale_source": scale.source if scale else None,
        "scale_confidence": scale.confidence if scale else None, "category": img.category,
        "category_source": img.category_source, "confidence": img.confidence,
        "model_version": pred.model_version if pred else None, "subcategory_id": img.subcategory_id,
        "subcategory": sub.name if sub else None, "human_label": label.category if label else None,
        **{k: f.get(k) for k in ("vendor", "instrument", "hv_kv", "wd_mm", "mag", "detector", "tilt_deg", "date")},
        "created_at": iso_utc(img.created_at),
    }
    return ["" if values[c] is None else values[c] for c in CSV_COLUMNS]


def _csv_line(row: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


EXPORT_FORMATS = ("kit-sem", "jsonld", "semtag", "csv")


def export_lines(rt: Runtime, flt: ImageFilter, fmt: str) -> Iterator[str]:
    """The export as lines of text: a CSV header and rows, or one JSON document a line."""
    if fmt == "csv":
        yield _csv_line(CSV_COLUMNS)
        for d in iter_details(rt, flt):
            yield _csv_line(csv_row(d))
        return
    doc_format: MetadataFormat = parse_format(fmt)
    for d in iter_details(rt, flt):
        yield json.dumps(render(d, doc_format), ensure_ascii=False, separators=(",", ":")) + "\n"


def write_export(rt: Runtime, flt: ImageFilter, fmt: str, out: IO[str]) -> int:
    """Write the export to ``out``; the number of images written."""
    n = -1 if fmt == "csv" else 0
    for line in export_lines(rt, flt, fmt):
        out.write(line)
        n += 1
    return n
