"""Display renditions of stored images: thumbnails and previews (JPEG or WebP), optionally with the
scale overlay, cached content-addressed under ``<data_dir>/renditions``.

A rendition's key is the SHA-256 of what determines its bytes: the image's content hash, the kind,
the size, the format, the renderer's version and, for an overlay, the scale reading drawn. The key is
the HTTP ETag, so a client revalidates for free and two replicas of the API agree on it.

Sizes come from a fixed ladder (:data:`SIZES`): an arbitrary ``size`` would let any reader fill the disk
with one cached file per integer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import desc, select
from sqlalchemy.orm import Session

from services.errors import BadInput, NotFound
from services.images import imaging
from services.runtime import Runtime
from services.scale.render import font
from services.tables import HumanScale, Image, ScaleReading

RENDER_VERSION = "1"  # bump when the pixels a given key stands for change
SIZES: dict[str, tuple[int, ...]] = {"thumbnail": (64, 128, 256, 512), "preview": (512, 1024, 2048)}
FORMATS = {"jpeg": ("image/jpeg", ".jpg"), "webp": ("image/webp", ".webp")}
QUALITY = {"jpeg": 85, "webp": 80}


@dataclass(frozen=True)
class Rendition:
    path: Path
    etag: str
    media_type: str
    cache_control: str


def check_request(kind: str, size: int, fmt: str, overlay: str | None) -> None:
    """A clear 422 for a size off the ladder, an unknown format or overlay."""
    if kind not in SIZES:
        raise NotFound(f"no rendition {kind!r}")
    if size not in SIZES[kind]:
        raise BadInput(f"size {size} is not offered for a {kind}; choose one of "
                       f"{', '.join(map(str, SIZES[kind]))}", "bad_size")
    if fmt not in FORMATS:
        raise BadInput(f"format {fmt!r} is not offered; choose jpeg or webp", "bad_format")
    if overlay not in (None, "scale"):
        raise BadInput(f"overlay {overlay!r} is not offered; the only overlay is 'scale'", "bad_overlay")


def decode_for_display(path: Path, max_pixels: int, size: int) -> np.ndarray:
    """The image's first page as display-ready uint8 grey, decoded at reduced size where the format allows.

    The one place renditions decode: :func:`imaging.load_gray` stretches >8-bit and float data between
    robust percentiles and may decode a JPEG at 1/2–1/8 scale while both sides stay ≥ ``size``."""
    return imaging.load_gray(path, max_pixels, min_side=size)


def overlay_of(session: Session, image_id: int) -> dict[str, Any] | None:
    """What the scale overlay draws: the data bar's box, the measured bar, and the image's scale
    (a curator's reading when there is one, else the machine's), in the image's pixel coordinates."""
    reading = session.scalar(select(ScaleReading).where(ScaleReading.image_id == image_id))
    human = session.scalar(select(HumanScale).where(HumanScale.image_id == image_id)
                           .order_by(desc(HumanScale.id)).limit(1))
    if reading is None and human is None:
        return None
    ocr = (reading.detail or {}).get("ocr", {}) if reading is not None else {}
    bar = ocr.get("bar_line") if isinstance(ocr, dict) else None
    box = reading.databar_box if reading is not None else None
    if human is not None:
        return {"box": box, "bar": bar, "value": human.scale_value, "unit": human.scale_unit,
                "pixel_size_nm": human.pixel_size_nm, "source": "human", "confidence": None}
    assert reading is not None
    return {"box": box, "bar": bar, "value": reading.scale_value, "unit": reading.scale_unit,
            "pixel_size_nm": reading.pixel_size_nm, "source": reading.source, "confidence": reading.confidence}


def _fmt_number(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 else f"{v:.3g}"


def overlay_text(ov: dict[str, Any]) -> str:
    parts = []
    if ov.get("value") is not None and ov.get("unit"):
        parts.append(f"{_fmt_number(float(ov['value']))} {ov['unit']}")
    if ov.get("pixel_size_nm"):
        parts.append(f"{float(ov['pixel_size_nm']):.4g} nm/px")
    source = ov.get("source") or "none"
    parts.append(source if ov.get("confidence") is None else f"{source} {float(ov['confidence']):.2f}")
    return " · ".join(parts) if len(parts) > 1 else "no scale read"


def draw_overlay(rgb: PILImage.Image, ov: dict[str, Any], factor: float) -> None:
    """Draw the data-bar box (cyan), the measured bar (magenta, with end ticks) and the reading."""
    draw = ImageDraw.Draw(rgb)
    w, h = rgb.size
    line = max(2, round(min(w, h) / 300))
    box = ov.get("box")
    if isinstance(box, list) and len(box) == 4:
        x0, y0, x1, y1 = (float(v) * factor for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(0, 229, 255), width=line)
    bar = ov.get("bar")
    if isinstance(bar, list) and len(bar) == 3:
        bx0, by, bx1 = (float(v) * factor for v in bar)
        tick = max(4, line * 3)
        draw.line([bx0, by, bx1, by], fill=(255, 0, 200), width=line)
        draw.line([bx0, by - tick, bx0, by + tick], fill=(255, 0, 200), width=line)
        draw.line([bx1, by - tick, bx1, by + tick], fill=(255, 0, 200), width=line)
    text = overlay_text(ov)
    f = font(max(12, round(min(w, h) / 28)), bold=True)
    tb = draw.textbbox((0, 0), text, font=f)
    pad = max(3, line * 2)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    draw.rectangle([0, 0, tw + 2 * pad, th + 2 * pad], fill=(0, 0, 0))
    draw.text((pad - tb[0], pad - tb[1]), text, fill=(255, 255, 0), font=f)


def render(gray: np.ndarray, size: int, fmt: str, ov: dict[str, Any] | None, width: int) -> bytes:
    """uint8 grey (any size) → encoded rendition fitting in size × size (never enlarged)."""
    h, w = gray.shape
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    img = PILImage.fromarray(np.ascontiguousarray(gray), "L")
    if ov is not None:
        img = img.convert("RGB")
        draw_overlay(img, ov, img.size[0] / max(1, width))  # the reading is in the original's coordinates
    buf = io.BytesIO()
    img.save(buf, "JPEG" if fmt == "jpeg" else "WEBP", quality=QUALITY[fmt])
    return buf.getvalue()


def rendition_key(sha256: str, kind: str, size: int, fmt: str, ov: dict[str, Any] | None) -> str:
    what = json.dumps([RENDER_VERSION, sha256, kind, size, fmt, ov], sort_keys=True, default=str)
    return hashlib.sha256(what.encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rendition(rt: Runtime, session: Session, image_id: int, kind: str, size: int, fmt: str = "jpeg",
              overlay: str | None = None) -> Rendition:
    """The cached rendition (made on first request). Raises NotFound, BadInput, or the image's
    ``ImageRejected`` when it cannot be decoded."""
    check_request(kind, size, fmt, overlay)
    row = session.execute(select(Image.sha256, Image.storage_key, Image.width).where(Image.id == image_id)).first()
    if row is None:
        raise NotFound(f"image {image_id} not found")
    sha, storage_key, width = row
    ov = overlay_of(session, image_id) if overlay == "scale" else None
    if overlay == "scale" and ov is None:
        ov = {"source": "none"}
    key = rendition_key(sha, kind, size, fmt, ov)
    media_type, ext = FORMATS[fmt]
    path = rt.settings.data_dir / "renditions" / key[:2] / f"{key}{ext}"
    if not path.is_file():
        try:
            with rt.store.local_file(storage_key) as local:  # the store's own file, or its disk cache (S3)
                gray = decode_for_display(local, rt.settings.max_pixels, size)
        except FileNotFoundError:  # BlobMissing included
            raise NotFound(f"image {image_id}: its stored file is missing", "blob_missing") from None
        _write_atomic(path, render(gray, size, fmt, ov, width))
    # The pixels of an image id never change, its overlay does (a curator's reading): that one revalidates.
    cache = "private, no-cache" if ov is not None else "private, max-age=86400"
    return Rendition(path, f'"{key}"', media_type, cache)


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (or is ``*``)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
