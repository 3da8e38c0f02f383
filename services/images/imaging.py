"""Image probing (cheap, at upload) and decoding (in workers).

SEM images arrive as JPEG, PNG, BMP or TIFF — often 16-bit grayscale TIFF, sometimes
multi-page. :func:`probe` identifies a file and rejects what cannot be processed, with a
code and a message; :func:`load_gray` decodes the first page to 8-bit grayscale.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import tifffile
from PIL import Image as PILImage

from services.errors import BadInput

PILImage.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit before decoding

ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")

_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
]
_KNOWN_UNSUPPORTED = [
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
]


class ImageRejected(BadInput):
    """A file that cannot be accepted as an image (422 unless a subclass says otherwise)."""

    code = "invalid_image"


class InvalidImage(ImageRejected):
    code = "invalid_image"


class EmptyFile(ImageRejected):
    code = "empty_file"


class TruncatedImage(ImageRejected):
    code = "truncated_image"


class UnsupportedFormat(ImageRejected):
    status = 415
    code = "unsupported_format"


class NotAnImage(ImageRejected):
    status = 415
    code = "not_an_image"


class TooManyPixels(ImageRejected):
    status = 413
    code = "too_many_pixels"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    bit_depth: int
    pages: int
    mode: str


def sniff_format(head: bytes) -> str:
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise UnsupportedFormat("WebP images are not supported; send TIFF, PNG, JPEG or BMP")
    for magic, fmt in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            raise UnsupportedFormat(f"{fmt} files are not supported; send TIFF, PNG, JPEG or BMP")
    raise NotAnImage("the file is not a recognised image (no TIFF, PNG, JPEG or BMP signature)")


_PIL_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8,
             "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _check_pixels(width: int, height: int, pages: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height * pages > max_pixels:
        raise TooManyPixels(f"{width}x{height}x{pages} pages = {width * height * pages} pixels exceeds the limit of "
            f"{max_pixels} (decompression-bomb guard; raise SEMTAG_MAX_PIXELS to accept it)",
        )


def _probe_tiff(path: Path, max_pixels: int) -> ImageInfo:
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = cast(list[tifffile.TiffPage], list(tif.pages))  # frames share their page's attributes
            if not pages:
                raise InvalidImage("TIFF file has no pages")
            first = pages[0]
            width, height = int(first.imagewidth), int(first.imagelength)
            total = sum(int(p.imagewidth) * int(p.imagelength) for p in pages)
            if total > max_pixels:
                _check_pixels(width, height, max(1, total // max(1, width * height)), max_pixels)
            _check_pixels(width, height, 1, max_pixels)
            for i, page in enumerate(pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                if not offsets:
                    raise TruncatedImage(f"TIFF page {i} has no image data")
                end = max(int(o) + int(c) for o, c in zip(offsets, counts))
                if end > size:
                    raise TruncatedImage(f"TIFF is truncated: page {i} needs {end} bytes, the file has {size}",
                    )
            bits = int(first.bitspersample)
            samples = int(first.samplesperpixel)
            mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(samples, f"{samples}ch")
            if first.photometric == tifffile.PHOTOMETRIC.PALETTE:
                mode = "P"
            return ImageInfo("TIFF", width, height, bits, len(pages), mode)
    except ImageRejected:
        raise
    except Exception as exc:  # tifffile raises many types on damaged headers
        raise InvalidImage(f"TIFF cannot be read: {exc}") from exc


def _sniff_file(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise EmptyFile("the file is empty")
    return sniff_format(head)


def _decode_error(fmt: str, exc: Exception) -> ImageRejected:
    """The rejection for a decoder's exception: truncated/damaged data, or undecodable."""
    msg = str(exc)
    if isinstance(exc, OSError) and ("truncated" in msg or "broken" in msg.lower()):
        return TruncatedImage(f"{fmt} data is truncated or damaged: {msg}")
    return InvalidImage(f"{fmt} cannot be decoded: {msg}")


def probe(path: Path | str, max_pixels: int) -> ImageInfo:
    """Identify and validate an image file without keeping its pixels.

    Raises :class:`ImageRejected` for empty, non-image, unsupported, truncated or
    oversized (in pixels) files.
    """
    path = Path(path)
    fmt = _sniff_file(path)
    if fmt == "TIFF":
        return _probe_tiff(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PILImage.open(path) as img:
                width, height = img.size
                pages = getattr(img, "n_frames", 1)
                _check_pixels(width, height, 1, max_pixels)
                mode = img.mode
                img.load()  # full decode: detects truncated JPEG/PNG
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise _decode_error(fmt, exc) from exc
    return ImageInfo(fmt, int(width), int(height), _PIL_BITS.get(mode, 8), int(pages), mode)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric image to uint8; >8-bit data is stretched between its 0.01% and 99.99% points."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = np.percentile(a, [0.01, 99.99]) if a.size > 1 else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _gray(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return to_uint8(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = to_uint8(arr[..., :3]).astype(np.float32)
        return (rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] in (1, 2):
        return to_uint8(arr[..., 0])
    if arr.ndim == 3 and arr.shape[0] in (3, 4):  # planar
        return _gray(np.moveaxis(arr, 0, -1))
    raise InvalidImage(f"unsupported pixel layout {arr.shape}")


def load_gray(path: Path | str, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """Decode the first page to a 2-D uint8 array (raises :class:`ImageRejected`).

    PNG/JPEG/BMP are decoded once (the probe's checks happen on the same decode); TIFF goes
    through the full probe first (pages, bit depth, colour map). ``min_side``: a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while both sides stay ≥ it — for
    model inputs, never for scale reading, which measures pixels.
    """
    path = Path(path)
    fmt = _sniff_file(path)
    if fmt != "TIFF":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with PILImage.open(path) as img:
                    _check_pixels(img.size[0], img.size[1], 1, max_pixels)
                    if min_side and fmt == "JPEG" and img.mode in ("L", "RGB"):
                        img.draft(img.mode, (min_side, min_side))
                    grey = img.convert("L") if img.mode in ("P", "1") else img
                    return _gray(np.asarray(grey))
        except ImageRejected:
            raise
        except Exception as exc:
            raise _decode_error(fmt, exc) from exc
    info = probe(path, max_pixels)
    try:
        with tifffile.TiffFile(path) as tif:
            page = cast(tifffile.TiffPage, tif.pages[0])
            arr = page.asarray()
            if info.mode == "P" and page.colormap is not None:
                cmap = np.asarray(page.colormap)
                if cmap.max() > 255:
                    cmap = (cmap // 257).astype(np.uint8)
                arr = np.moveaxis(cmap[:, arr], 0, -1)
        return _gray(np.asarray(arr))
    except ImageRejected:
        raise
    except Exception as exc:
        raise InvalidImage(f"{info.format} cannot be decoded: {exc}") from exc
