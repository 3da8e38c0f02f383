"""One image as a schema.org ``ImageObject``, a record as a ``Dataset``, in JSON-LD.

The documents use the RO-Crate 1.3 context (``https://w3id.org/ro/crate/1.3/context``: schema.org's
terms, and RO-Crate's), which semtag ships (``resources/ro-crate-1.3-context.jsonld``, CC0) and serves to
a JSON-LD processor through :func:`document_loader`: expanding a document never fetches anything.
semtag's values are ``PropertyValue`` items of ``additionalProperty``, each named by ``propertyID``;
units carry UN/CEFACT codes (``unitCode``) beside their symbol (``unitText``). The image is identified
by its bytes: ``@id`` is the RFC 6920 name ``ni:///sha-256;…``.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from services.data.categories import NAMES
from services.export.kit_sem import acquisition_time
from services.images.schemas import ImageDetail
from services.types import iso_utc

CONTEXT_URL = "https://w3id.org/ro/crate/1.3/context"
CONTEXT_FILE = "ro-crate-1.3-context.jsonld"
MIME = {"TIFF": "image/tiff", "PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp"}
# UN/CEFACT common codes of the units semtag writes
UNIT_CODES = {"nm": "C45", "µm": "4H", "mm": "MMT", "m": "MTR", "kV": "KVT", "degree": "DD", "pixel": "E37",
              "Pa": "PAL", "nA": "C39", "ns": "C47"}


@lru_cache(maxsize=1)
def bundled_context() -> dict[str, Any]:
    text = resources.files("services.export").joinpath("resources", CONTEXT_FILE).read_text("utf-8")
    return json.loads(text)


class ContextNotBundled(LookupError):
    """A JSON-LD context that semtag does not ship was asked for; it is not fetched."""


def document_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pyld document loader (``pyld.jsonld.set_document_loader(document_loader)`` or
    ``options={"documentLoader": document_loader}``) that serves the bundled context and nothing else."""
    if url.rstrip("/") in (CONTEXT_URL, CONTEXT_URL + ".jsonld"):
        return {"contextUrl": None, "documentUrl": url, "document": bundled_context()}
    raise ContextNotBundled(f"{url} is not bundled with semtag and is not fetched")


def image_iri(sha256: str) -> str:
    """RFC 6920 Named Information for the image's bytes."""
    digest = base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode().rstrip("=")
    return f"ni:///sha-256;{digest}"


def _pv(property_id: str, name: str, value: Any, unit: str | None = None, **extra: Any) -> dict[str, Any]:
    pv: dict[str, Any] = {"@type": "PropertyValue", "propertyID": property_id, "name": name, "value": value}
    if unit is not None:
        pv["unitText"] = unit
        if unit in UNIT_CODES:
            pv["unitCode"] = UNIT_CODES[unit]
    pv.update({k: v for k, v in extra.items() if v is not None})
    return pv


def properties(d: ImageDetail) -> list[dict[str, Any]]:
    """semtag's findings (and the acquisition fields it read) as ``PropertyValue`` items."""
    img, scale, pred, label, sub = d.image, d.scale, d.prediction, d.label, d.subcategory
    out: list[dict[str, Any]] = []
    if img.pixel_size_nm is not None and scale is not None:
        how = "the instrument's metadata" if scale.source == "metadata" else "the scale bar, read by OCR"
        out.append(_pv("pixel_size", "pixel size", img.pixel_size_nm, "nm", measurementTechnique=how,
                       description=f"read by semtag from {how}, confidence {scale.confidence or 0:.2f}"))
    if scale is not None and scale.scale_value is not None and scale.scale_unit:
        out.append(_pv("scale_bar", "scale bar length", scale.scale_value, scale.scale_unit,
                       description=f"bar of {scale.bar_px:g} px" if scale.bar_px else None))
    if img.category is not None:
        refs = []
        if img.confidence is not None:
            refs.append(_pv("confidence", "confidence of the category", img.confidence, minValue=0, maxValue=1))
        if pred is not None:
            refs.append(_pv("model_version", "classification model", pred.model_version))
        technique = "human label" if img.category_source == "human" else (
            f"classification by model {pred.model_version}" if pred else "classification")
        out.append(_pv("category", "SEM category", img.category, description=NAMES.get(img.category),
                       measurementTechnique=technique, valueReference=refs or None))
    if sub is not None:
        out.append(_pv("subcategory", "subcategory", sub.name, identifier=str(sub.id),
                       description=f"subcategory of {sub.parent_category or 'all images'} ({sub.method}, k={sub.k})"))
    if label is not None:
        out.append(_pv("human_label", "human label", label.category,
                       description=f"labelled by {label.labelled_by}"
                                   + (f" at {iso_utc(label.created_at)}" if label.created_at else "")))
    f = dict(scale.fields or {}) if scale is not None else {}
    for key, name, unit in (("hv_kv", "accelerating voltage", "kV"), ("wd_mm", "working distance", "mm"),
                            ("tilt_deg", "stage tilt", "degree"), ("chamber_pressure_pa", "chamber pressure", "Pa"),
                            ("mag", "magnification", None), ("detector", "detector", None),
                            ("vendor", "instrument vendor", None), ("instrument", "instrument", None),
                            ("model", "instrument model", None)):
        if f.get(key) not in (None, ""):
            out.append(_pv(key, name, f[key], unit))
    return out


def image_object(d: ImageDetail) -> dict[str, Any]:
    """The image as an ``ImageObject`` node (no ``@context``: see :func:`image_jsonld`)."""
    img = d.image
    f = dict(d.scale.fields or {}) if d.scale is not None else {}
    node: dict[str, Any] = {
        "@id": image_iri(img.sha256), "@type": "ImageObject", "name": img.filename, "identifier": str(img.id),
        "sha256": img.sha256, "contentSize": str(img.bytes), "encodingFormat": MIME.get(img.format, img.format),
        "width": {"@type": "QuantitativeValue", "value": img.width, "unitText": "pixel", "unitCode": "E37"},
        "height": {"@type": "QuantitativeValue", "value": img.height, "unitText": "pixel", "unitCode": "E37"},
        "uploadDate": iso_utc(img.created_at),
        "dateCreated": acquisition_time(f),
        "isPartOf": [{"@type": "Dataset", "identifier": r.record_id, "version": r.record_version or None}
                     for r in img.records] or None,
        "additionalProperty": properties(d),
    }
    for part in node.get("isPartOf") or []:
        if part["version"] is None:
            del part["version"]
    return {k: v for k, v in node.items() if v not in (None, [])}


def image_jsonld(d: ImageDetail) -> dict[str, Any]:
    return {"@context": CONTEXT_URL, **image_object(d)}


def record_jsonld(record_id: str, versions: list[str | None], details: list[ImageDetail]) -> dict[str, Any]:
    """A record as a ``Dataset`` whose ``hasPart`` are its images."""
    doc: dict[str, Any] = {"@context": CONTEXT_URL, "@type": "Dataset", "identifier": record_id,
                           "name": f"record {record_id}",
                           "description": f"SEM images of record {record_id}, described by semtag",
                           "hasPart": [image_object(d) for d in details]}
    named = [v for v in versions if v]
    if named:
        doc["version"] = named if len(named) > 1 else named[0]
    return doc
