"""One entry point for every metadata format: a document for an image (or a record) in the chosen format.

The API, the CLI and outbound events call these; they take the rows (``ImageDetail``) or an id.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sqlalchemy.orm import Session

from services.errors import BadInput
from services.export.crate import record_crate
from services.export.jsonld import image_jsonld, record_jsonld
from services.export.kit_sem import kit_sem_document
from services.images.queries import image_detail
from services.images.schemas import ImageDetail, ImageRead


class MetadataFormat(str, Enum):
    """``kit-sem``: the KIT Data Manager SEM schema; ``jsonld``: schema.org in JSON-LD; ``semtag``: the
    API's own image record (``ImageRead``)."""

    kit_sem = "kit-sem"
    jsonld = "jsonld"
    semtag = "semtag"


MEDIA_TYPES = {MetadataFormat.kit_sem: "application/json", MetadataFormat.jsonld: "application/ld+json",
               MetadataFormat.semtag: "application/json"}


def parse_format(value: str | MetadataFormat) -> MetadataFormat:
    try:
        return MetadataFormat(value)
    except ValueError:
        raise BadInput(f"format must be one of {', '.join(f.value for f in MetadataFormat)}", "bad_format") from None


def render(detail: ImageDetail, fmt: MetadataFormat | str) -> dict[str, Any]:
    """The image's metadata document in ``fmt`` (JSON-ready)."""
    fmt = parse_format(fmt)
    if fmt is MetadataFormat.kit_sem:
        return kit_sem_document(detail)
    if fmt is MetadataFormat.jsonld:
        return image_jsonld(detail)
    return ImageRead.model_validate(detail).model_dump(mode="json")


def image_document(session: Session, image_id: int, fmt: MetadataFormat | str) -> dict[str, Any]:
    """:func:`render` for an image id (404 when there is none)."""
    return render(image_detail(session, image_id), fmt)


def record_document(record_id: str, versions: list[str | None], details: list[ImageDetail],
                    fmt: str = "ro-crate") -> dict[str, Any]:
    """A record as ``ro-crate`` (the crate's metadata file) or ``jsonld`` (a schema.org Dataset)."""
    if fmt == "ro-crate":
        return record_crate(record_id, versions, details)
    if fmt == "jsonld":
        return record_jsonld(record_id, versions, details)
    raise BadInput("a record's format is ro-crate or jsonld", "bad_format")
