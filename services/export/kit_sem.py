"""One image as a document of the KIT Data Manager SEM schema (``resources/SEM_schema.json``).

The schema's ``entry`` holds what the instrument recorded, each field only where semtag read it (from
the file's metadata or, marked in ``notes``, from the data bar by OCR). Magnification has no field in
the schema and goes beside it. semtag's own results (scale reading, category, subcategory, label) are
not acquisition metadata: they go in the root-level ``semtag`` object, which the schema allows next to
``entry`` (its root has no ``additionalProperties: false``).

The schema requires fields an image often does not carry (chamber pressure, operator, the time of the
acquisition…). semtag never invents them: the document leaves them out and says so in
``semtag.conformance.missing_required``; ``valid`` is true only when nothing is missing. Three required
fields no instrument file records are filled with the schema's own neutral choices and listed in
``semtag.conformance.supplied``: ``technique``, ``measurementPurpose`` ("other") and ``parents``
("not applicable": semtag knows no sample record).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from services.data.categories import NAMES
from services.images.schemas import ImageDetail
from services.types import iso_utc

SCHEMA_FILE = "SEM_schema.json"
SCHEMA_NAME = ("KIT Data Manager SEM schema (Metadata-Schemas-for-Materials-Science, SEM/SEM_schema.json, "
               "commit 478c5222, CC0 1.0)")
TECHNIQUE = "scanning electron microscopy (SEM)"
PURPOSE_OTHER = "other (please specify in the comment)"

SUPPLIED = {
    "entry.technique": "every image semtag handles is a scanning electron micrograph",
    "entry.measurementPurpose": "no instrument file records the purpose: the schema's 'other'",
    "entry.parents": "semtag knows no sample record: parentType 'not applicable'",
}


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("services.export").joinpath("resources", SCHEMA_FILE).read_text("utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft201909Validator

    return Draft201909Validator(load_schema())


def schema_errors(doc: dict[str, Any]) -> list[Any]:
    """The schema's verdict on ``doc``: jsonschema ``ValidationError`` objects (empty: valid)."""
    return sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))


def _missing(errors: list[Any]) -> tuple[list[str], list[str]]:
    """Dotted paths of the required fields left out, and any other problem (a bug if there is one)."""
    missing, other = [], []
    for e in errors:
        where = ".".join(str(p) for p in e.absolute_path)
        if e.validator == "required":
            for name in e.validator_value:
                if isinstance(e.instance, dict) and name not in e.instance:
                    missing.append(f"{where}.{name}" if where else name)
        else:
            other.append(f"{where or '(root)'}: {e.message}")
    return sorted(set(missing)), other


# ---- acquisition date ---------------------------------------------------------------------

_DATES = ("%Y-%m-%d", "%Y/%m/%d", "%d %b %Y", "%d %B %Y", "%d.%m.%Y")
_TIMES = ("%H:%M:%S", "%I:%M:%S %p", "%H:%M", "%I:%M %p")


def acquisition_time(fields: dict[str, Any]) -> str | None:
    """The recorded date (and time) as ``YYYY-MM-DDTHH:MM:SS``, in the instrument's local time (no zone:
    none is recorded). Slashed day-month orders are read only where they cannot be mistaken: FEI/Thermo
    writes month/day/year; elsewhere a day above 12 decides, otherwise the date stays unread."""
    raw = str(fields.get("date") or "").strip()
    if not raw:
        return None
    day = None
    for fmt in _DATES:
        try:
            day = datetime.strptime(raw, fmt).date()
            break
        except ValueError:
            continue
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", raw)
    if day is None and m:
        a, b, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if fields.get("vendor") == "FEI/Thermo" or b > 12:
            month, dom = a, b
        elif a > 12:
            month, dom = b, a
        else:
            return None
        try:
            day = datetime(year, month, dom).date()
        except ValueError:
            return None
    if day is None:
        return None
    clock = str(fields.get("time") or "").strip()
    for fmt in _TIMES:
        try:
            t = datetime.strptime(clock, fmt).time()
            return f"{day.isoformat()}T{t.strftime('%H:%M:%S')}"
        except ValueError:
            continue
    return f"{day.isoformat()}T00:00:00" if not clock else None


# ---- the document -------------------------------------------------------------------------

def _quantity(value: Any, unit: str, origin: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    q: dict[str, Any] = {"value": float(value), "unit": unit}
    if origin == "ocr":
        q["notes"] = "read from the data bar by OCR"
    return q


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values, recursively (an absent field, never an empty object standing for one)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _prune(v)
        if v not in (None, {}, [], ""):
            out[k] = v
    return out


def _entry(d: ImageDetail) -> dict[str, Any]:
    img, scale = d.image, d.scale
    f: dict[str, Any] = dict(scale.fields or {}) if scale is not None else {}
    origin: dict[str, str] = (scale.detail or {}).get("fields_from", {}) if scale is not None else {}

    def q(name: str, unit: str) -> dict[str, Any] | None:
        return _quantity(f.get(name), unit, origin.get(name))

    pixel = None
    if img.pixel_size_nm is not None and scale is not None:
        if scale.source == "metadata":
            note = "from the instrument's metadata"
        elif scale.bar_px and scale.scale_value is not None:
            note = (f"from the scale bar ({scale.scale_value:g} {scale.scale_unit} over {scale.bar_px:g} px) "
                    f"read by OCR, confidence {scale.confidence or 0:.2f}")
        else:
            note = f"read by semtag ({scale.source})"
        pixel = {"value": float(img.pixel_size_nm), "unit": "nm", "notes": note}
    coords = None
    if f.get("stage_x_mm") is not None:
        coords = {"xValue": float(f["stage_x_mm"]), "coordinatesUnit": "mm",
                  "yValue": f.get("stage_y_mm"), "zValue": f.get("stage_z_mm")}
    detector = f.get("detector")
    return _prune({
        "title": img.filename,
        "technique": TECHNIQUE,
        "measurementPurpose": PURPOSE_OTHER,
        "measurementDescription": "SEM image described by semtag from its file's metadata and data bar",
        "parents": [{"parentType": "not applicable"}],
        "endTime": acquisition_time(f),
        "user": {"userName": f.get("operator")},
        "instrument": {
            "instrumentName": f.get("instrument") or f.get("model"),
            "instrumentManufacturer": {"manufacturerName": f.get("vendor"), "modelName": f.get("model")},
            "chamberPressure": q("chamber_pressure_pa", "Pa"),
            "eBeamSource": {"accelerationVoltage": q("hv_kv", "kV"), "beamCurrent": q("beam_current_na", "nA")},
            "stage": {"stageTiltAngle": q("tilt_deg", "degree"), "eBeamWorkingDistance": q("wd_mm", "mm"),
                      "coordinates": coords},
            "imaging": {"numberOfPixels": {"xPixels": img.width, "yPixels": img.height},
                        "pixelSize": {"xPixelSize": pixel}, "dwellTime": q("dwell_time_ns", "ns")},
            "detectors": {"detector1": {"detectorName": str(detector)} if detector else None},
        },
    }) | {"program": {"programVersion": str(f["software"])} if f.get("software") else {}}  # required, may be {}


def semtag_results(d: ImageDetail) -> dict[str, Any]:
    """semtag's findings for the image, shared by the formats (and the events that carry them)."""
    img, scale, pred, label, sub = d.image, d.scale, d.prediction, d.label, d.subcategory
    return {
        "image": {"id": img.id, "sha256": img.sha256, "filename": img.filename, "format": img.format,
                  "bytes": img.bytes, "width": img.width, "height": img.height, "bit_depth": img.bit_depth,
                  "pages": img.pages, "status": img.status,
                  "records": [{"record_id": r.record_id, "record_version": r.record_version or None}
                              for r in img.records]},
        "scale": None if scale is None else {
            "source": scale.source, "scale_value": scale.scale_value, "scale_unit": scale.scale_unit,
            "bar_px": scale.bar_px, "pixel_size_nm": scale.pixel_size_nm, "confidence": scale.confidence,
            "scale_nm": img.scale_nm, "disagree": (scale.detail or {}).get("disagree")},
        "classification": None if img.category is None else {
            "category": img.category, "category_name": NAMES.get(img.category), "source": img.category_source,
            "confidence": img.confidence, "model_version": pred.model_version if pred else None,
            "model_confidence": pred.confidence if pred else None,
            "needs_review": pred.needs_review if pred else None, "ood_score": pred.ood_score if pred else None},
        "human_label": None if label is None else {
            "category": label.category, "labelled_by": label.labelled_by,
            "labelled_at": iso_utc(label.created_at)},
        "subcategory": None if sub is None else {
            "id": sub.id, "name": sub.name, "parent_category": sub.parent_category, "method": sub.method, "k": sub.k},
    }


def kit_sem_document(d: ImageDetail) -> dict[str, Any]:
    """The image as a KIT SEM document: ``{"entry": …, "semtag": …}`` (see the module's docstring)."""
    doc: dict[str, Any] = {"entry": _entry(d)}
    missing, other = _missing(schema_errors(doc))
    if other:  # a mapping bug, never the image's fault: say so rather than hand out a wrong document
        raise ValueError("KIT SEM mapping produced invalid values: " + "; ".join(other))
    f = dict(d.scale.fields or {}) if d.scale is not None else {}
    outside = {k: v for k, v in {"magnification": f.get("mag"), "date_as_recorded": f.get("date"),
                                 "time_as_recorded": f.get("time")}.items() if v not in (None, "")}
    doc["semtag"] = {**semtag_results(d), "acquisition_outside_schema": outside,
                     "conformance": {"schema": SCHEMA_NAME, "valid": not missing, "missing_required": missing,
                                     "supplied": SUPPLIED}}
    return doc
