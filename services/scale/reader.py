"""One image's scale: instrument metadata first, OCR of the data bar as fallback (and check).

:func:`read_scale` returns a :class:`ScaleResult` with the scale-bar label (value, unit), the
bar's length in pixels, the pixel size in nm, ``source`` (metadata | ocr | none), a
confidence, the parsed acquisition fields and the data bar's box. Where metadata and OCR
both give a pixel size, both are kept in ``detail`` and a disagreement above 5% is flagged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.images.imaging import Decoded, decode_gray
from services.scale import calibration
from services.scale.bar_reading import OcrReading, read_ocr
from services.scale.calibration import calibrate
from services.scale.metadata import MetaReading, read_metadata
from services.scale.units import normalise_unit, scale_bin, snap_nice, to_nm

log = logging.getLogger(__name__)
DISAGREEMENT_LIMIT = 0.05
DEFAULT_MAX_PIXELS = 150_000_000
# Images larger than this are read at 1/2, 1/3 … of their size (bar lengths scaled back): their bars and
# labels are large enough, and the reader's masks and labels stay bounded (about 4 bytes per pixel read).
WORK_PIXELS = 40_000_000


@dataclass
class ScaleResult:
    source: str = "none"  # metadata | ocr | none
    scale_value: float | None = None
    scale_unit: str | None = None
    bar_px: float | None = None
    pixel_size_nm: float | None = None
    confidence: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    databar_box: list[int] | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def row(self) -> dict[str, Any]:
        """Plain Python values (no NumPy scalars), ready for JSON columns."""
        return _plain(asdict(self))

    @property
    def scale_nm(self) -> float | None:
        if self.scale_value is None or self.scale_unit is None:
            return None
        return to_nm(self.scale_value, self.scale_unit)

    @property
    def scale_bin(self) -> str | None:
        return scale_bin(self.scale_nm)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _meta_detail(m: MetaReading) -> dict[str, Any]:
    return {"vendor": m.vendor, "pixel_size_nm": m.pixel_size_nm, "from": m.pixel_size_from,
            "field_width_nm": m.field_width_nm, "cross_check": m.cross_check, "reason": m.reason}


def _ocr_detail(o: OcrReading) -> dict[str, Any]:
    return {"scale_value": o.scale_value, "scale_unit": o.scale_unit, "bar_px": o.bar_px,
            "pixel_size_nm": o.pixel_size_nm, "confidence": round(calibrate(o.confidence, o.notes.get("path")), 3),
            "raw_confidence": round(o.confidence, 3), "label_text": o.label_text, "reason": o.reason, **o.notes}


def combine(meta: MetaReading | None, o: OcrReading) -> ScaleResult:
    """The result of the metadata and OCR readings of one image.

    ``confidence`` is the probability that the scale label (value and unit) is right where
    there is one, else that the pixel size is (see :mod:`services.scale.calibration`): an OCR
    reading's calibrated score; for metadata, high when the data bar agrees or says nothing,
    lower when it disagrees, and no more than the measured bar is worth when the label had to
    be derived from that bar.
    """
    res = ScaleResult(databar_box=o.databar_box)
    res.fields = {**o.fields, **(meta.fields if meta else {})}
    res.detail = {"ocr": _ocr_detail(o)}
    # where each field was read: the instrument's metadata, or the data bar's text (OCR)
    res.detail["fields_from"] = {k: "metadata" if meta and k in meta.fields else "ocr" for k in res.fields}
    if meta is not None:
        res.detail["metadata"] = _meta_detail(meta)
    if meta is not None and meta.pixel_size_nm:
        px = meta.pixel_size_nm
        res.source, res.pixel_size_nm = "metadata", round(px, 6)
        res.confidence = calibration.METADATA_AGREES
        res.bar_px = o.bar_px or meta.bar_px
        disagree = False
        if o.scale_value and o.pixel_size_nm:
            dis = abs(o.pixel_size_nm - px) / px
            disagree = dis > DISAGREEMENT_LIMIT
            res.detail["disagreement"] = round(dis, 4)
            res.detail["disagree"] = disagree
        if o.scale_value and o.pixel_size_nm and not disagree:
            res.scale_value, res.scale_unit = o.scale_value, o.scale_unit  # label and bar agree with metadata
        elif meta.scale_value:
            res.scale_value, res.scale_unit = meta.scale_value, meta.scale_unit
            if disagree:
                res.confidence = calibration.METADATA_LABEL_DISAGREES
        elif res.bar_px:
            snapped = snap_nice(res.bar_px * px)
            if snapped:  # the bar's label, derived from its measured length and the exact pixel size
                res.scale_value, res.scale_unit = snapped
                res.detail["label_from"] = "bar length × metadata pixel size"
                res.confidence = min(calibration.LABEL_FROM_BAR, calibration.METADATA_LABEL_DISAGREES)
            elif disagree:
                res.confidence = calibration.METADATA_LABEL_DISAGREES
        elif disagree:
            res.confidence = calibration.METADATA_LABEL_DISAGREES
        if res.scale_value is None:
            res.reason = "pixel size from metadata; no scale bar label read"
        return res
    if o.scale_value is not None:
        res.source = "ocr"
        res.scale_value, res.scale_unit = o.scale_value, o.scale_unit
        res.bar_px, res.pixel_size_nm = o.bar_px, (round(o.pixel_size_nm, 6) if o.pixel_size_nm else None)
        res.confidence = round(calibrate(o.confidence, o.notes.get("path")), 3)
        res.reason = o.reason
        if meta is not None and meta.reason:
            res.detail["metadata_rejected"] = meta.reason
        return res
    res.source = "none"
    reasons = [x for x in (meta.reason if meta else None, o.reason) if x]
    res.reason = "; ".join(reasons) or "no metadata and no readable data bar"
    res.bar_px = None
    return res


def decode_for_scale(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """The image as the scale reader reads it: full resolution up to :data:`WORK_PIXELS`, reduced above."""
    return decode_gray(path, max_pixels, max_work_pixels=WORK_PIXELS)


def _scaled_back(o: OcrReading, factor: int) -> OcrReading:
    """A reading made on an image reduced ``factor`` times, in the stored image's pixels."""
    if factor == 1:
        return o
    if o.bar_px:
        o.bar_px = o.bar_px * factor
    if o.pixel_size_nm:
        o.pixel_size_nm = o.pixel_size_nm / factor
    if o.databar_box:
        o.databar_box = [int(v) * factor for v in o.databar_box]
    o.notes = {**o.notes, "read_at_reduction": factor}
    return o


def read_scale(path: Path | str, gray: np.ndarray | None = None, sidecar: Path | str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, decoded: Decoded | None = None) -> ScaleResult:
    """Read the scale of one image file (raises ImageRejected only if it cannot be decoded).

    ``gray``: the image already decoded at full resolution; ``decoded``: as :func:`decode_for_scale`
    gives it (possibly reduced). Without either the file is decoded here.
    """
    if gray is not None:
        h, w = gray.shape
        factor = 1
    else:
        if decoded is None:
            decoded = decode_for_scale(path, max_pixels)
        gray, factor, w, h = decoded.gray, decoded.factor, decoded.width, decoded.height
    try:
        meta = read_metadata(path, w, h, sidecar)
    except Exception as exc:  # noqa: BLE001  (a broken tag must never stop the OCR path)
        meta = MetaReading("unknown", reason=f"metadata unreadable: {type(exc).__name__}: {exc}")
    try:
        o = _scaled_back(read_ocr(gray), factor)
    except Exception as exc:
        log.exception("OCR failed on %s", path)
        o = OcrReading(reason=f"OCR failed: {type(exc).__name__}: {exc}")
    res = combine(meta, o)
    if res.scale_unit:
        res.scale_unit = normalise_unit(res.scale_unit)
    res.detail["scale_bin"] = res.scale_bin
    for name, value in _plain(asdict(res)).items():
        setattr(res, name, value)
    return res


def sidecar_for(path: Path) -> Path | None:
    """The instrument's text sidecar beside an image: same stem, .txt (any case)."""
    for suffix in (".txt", ".TXT", ".Txt"):
        cand = path.with_suffix(suffix)
        if cand.exists() and cand != path:
            return cand
    return None
