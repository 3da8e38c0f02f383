"""Image probing (cheap, at upload) and decoding (in workers), in bounded memory.

SEM images arrive as JPEG, PNG, BMP or TIFF — often 16-bit grayscale TIFF, sometimes
multi-page. :func:`probe` identifies a file and rejects what cannot be processed, with a
code and a message, without decoding its pixels; :func:`decode_gray` decodes the first page
to 8-bit grayscale.

Memory is bounded by configuration, not by the file. Two limits apply to every image:

* ``max_pixels`` (``SEMTAG_MAX_PIXELS``): width × height × pages;
* ``max_decoded_bytes`` (``SEMTAG_MAX_DECODED_BYTES``): the first page decoded as stored,
  width × height × samples per pixel × bytes per sample (twice that for a progressive JPEG,
  whose decoder keeps every 16-bit DCT coefficient; plus the file itself for a PNG, which libpng
  decodes from memory). A small compressed file of a huge RGBA or 16-bit image is refused here,
  not in a worker.

Decoding holds the page once at its stored depth, then narrows it to 8-bit grey *in the same
buffer*, row block by row block (no float copy of the whole image), and reduces it by an integer
factor where the caller needs less (the classifier, very large images for scale reading). A
process-wide budget (:class:`DecodeBudget`) lets several threads decode at once only while their
pages fit in ``max_decoded_bytes`` together, so concurrency cannot multiply the peak.
"""

from __future__ import annotations

import math
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import tifffile
from PIL import Image as PILImage

from services.errors import BadInput

PILImage.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limits before decoding

ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
DEFAULT_MAX_DECODED_BYTES = 192 * 1024 * 1024
MAX_PAGES = 10_000          # a TIFF's page directory is read whole at upload: bound it
_BLOCK_PIXELS = 1 << 18     # rows are narrowed 256 kpx at a time: the only float temporaries (a few MB)

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


class DecodeTooLarge(ImageRejected):
    """The first page, decoded as stored, would need more memory than ``max_decoded_bytes``."""

    status = 413
    code = "decode_too_large"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    bit_depth: int
    pages: int
    mode: str
    samples: int = 1               # samples (channels) per pixel of the first page, as stored
    decoded_bytes: int = 0         # the first page decoded as stored (what max_decoded_bytes bounds)


@dataclass(frozen=True)
class Decoded:
    """A decoded first page: 8-bit grey, reduced ``factor`` times on each side (1 = full resolution)."""

    gray: np.ndarray
    factor: int
    width: int                     # the stored image's size, before any reduction
    height: int
    colourfulness: float = 0.0     # Hasler & Süsstrunk, from a subsample; 0 for grey images


# ---- the process-wide decode budget ----------------------------------------------------------------

class DecodeBudget:
    """A byte-weighted semaphore: decodes in flight in this process hold at most ``capacity`` bytes.

    A decode asks for its page's decoded size (at most the capacity, which the probe enforces) and
    waits while others hold the rest, so N threads decoding N huge images take turns instead of
    multiplying the peak; small images decode side by side.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.held = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        want = min(max(0, int(nbytes)), self.capacity)
        with self._cond:
            while self.held + want > self.capacity:
                self._cond.wait()
            self.held += want
        try:
            yield
        finally:
            with self._cond:
                self.held -= want
                self._cond.notify_all()


_budget = DecodeBudget(DEFAULT_MAX_DECODED_BYTES)


def release_memory() -> None:
    """Give freed heap memory back to the operating system (glibc's ``malloc_trim``; a no-op elsewhere).

    Decoding and model runs free most of what they allocate, but glibc keeps freed heap pages for reuse,
    per thread arena: a worker's resident memory would stay at its largest image or batch for good. The
    pipeline calls this after each step; it costs about a millisecond."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_soon: threading.Timer | None = None
_soon_lock = threading.Lock()
_holding = 0  # batches in flight in this process (threads of an embedded service, or the inference worker's two)


@contextmanager
def memory_held(delay_s: float = 2.0) -> Iterator[None]:
    """Around a batch: freed heap pages are kept while it runs and given back (:func:`release_memory`)
    once ``delay_s`` has passed with no batch in flight, whether the batch ended or failed.

    The inference worker's batches follow each other: trimming after each one made the next run fault
    all its activation pages in again (about 1,800 page faults and 5 ms of system time per image,
    6–17% of the engine's speed; bench/RESULTS.md, issue 15). A busy worker keeps them; an idle one
    returns them two seconds after its last batch."""
    global _soon, _holding
    with _soon_lock:
        _holding += 1
        if _soon is not None:  # a trim due from the previous batch would only make this one fault them in
            _soon.cancel()
            _soon = None
    try:
        yield
    finally:
        with _soon_lock:
            _holding -= 1
            if _holding == 0:
                _soon = threading.Timer(delay_s, _release_if_idle)
                _soon.daemon = True
                _soon.start()


def _release_if_idle() -> None:
    with _soon_lock:  # held while trimming: a batch starting now waits the millisecond the trim takes
        if _holding == 0:
            release_memory()


_trim: Any = None  # glibc's malloc_trim once looked up; False where there is none


def configure(max_decoded_bytes: int) -> None:
    """Set this process's decode budget (the entry points call it with ``SEMTAG_MAX_DECODED_BYTES``)."""
    global _budget
    if _budget.capacity != max_decoded_bytes:
        _budget = DecodeBudget(max_decoded_bytes)


def max_decoded_bytes() -> int:
    return _budget.capacity


# ---- probing --------------------------------------------------------------------------------------

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


def _check_decoded(info: ImageInfo, limit: int) -> ImageInfo:
    if info.decoded_bytes > limit:
        raise DecodeTooLarge(
            f"decoding this {info.width}x{info.height} {info.format} ({info.samples} sample(s) of "
            f"{info.bit_depth} bits per pixel) needs {info.decoded_bytes} bytes, more than the limit of {limit} "
            "(SEMTAG_MAX_DECODED_BYTES: width × height × samples × bytes per sample)")
    return info


def _probe_tiff(path: Path, max_pixels: int) -> ImageInfo:
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            first = tif.pages.first
            width, height = int(first.imagewidth), int(first.imagelength)
            _check_pixels(width, height, 1, max_pixels)
            total, n = 0, 0
            for i, page in enumerate(tif.pages):
                page = cast(tifffile.TiffPage, page)
                n = i + 1
                if n > MAX_PAGES:
                    raise InvalidImage(f"TIFF has more than {MAX_PAGES} pages")
                total += int(page.imagewidth) * int(page.imagelength)
                if total > max_pixels:
                    _check_pixels(width, height, max(2, total // max(1, width * height)), max_pixels)
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
            decoded = int(first.nbytes) if first.dtype is not None else width * height * samples * max(1, bits // 8)
            return ImageInfo("TIFF", width, height, bits, n, mode, samples, decoded)
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


_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel


def _probe_png(path: Path, max_pixels: int, verify: bool = True) -> ImageInfo:
    """Header and data checked in constant memory: the IDAT stream is inflated in slices and discarded,
    so truncated or damaged data is found without holding a single decoded row of a huge image
    (``verify=False``: the header only)."""
    with open(path, "rb") as fh:
        fh.read(8)
        head = fh.read(8)
        if len(head) < 8 or head[4:] != b"IHDR":
            raise InvalidImage("PNG cannot be decoded: the IHDR chunk is missing")
        ihdr = fh.read(13)
        if len(ihdr) < 13:
            raise TruncatedImage("PNG data is truncated or damaged: the header is cut short")
        width, height, bits, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", ihdr)
        if ctype not in _PNG_SAMPLES or bits not in (1, 2, 4, 8, 16):
            raise InvalidImage(f"PNG cannot be decoded: colour type {ctype} with {bits} bits is not valid")
        _check_pixels(width, height, 1, max_pixels)
        fh.read(4)  # IHDR's CRC
        samples = _PNG_SAMPLES[ctype]
        if ctype == 3:
            samples = 3  # a palette expands to RGB when decoded
        row_bytes = (width * _PNG_SAMPLES[ctype] * bits + 7) // 8
        decoded = width * height * samples * (2 if bits == 16 else 1) + path.stat().st_size
        mode = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}[ctype] if bits <= 8 else \
            {0: "I;16", 2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}.get(ctype, "P")
        info = ImageInfo("PNG", width, height, bits, 1, mode, samples, decoded)
        if not verify:
            return info
        if interlace:  # Adam7: seven passes, each row with its filter byte
            expected = 0
            for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                                   (1, 0, 2, 2), (0, 1, 1, 2)):
                pw, ph = max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy)
                if pw and ph:
                    expected += ph * (1 + (pw * _PNG_SAMPLES[ctype] * bits + 7) // 8)
        else:
            expected = height * (1 + row_bytes)
        inflater = zlib.decompressobj()
        produced, ended = 0, False
        while True:
            hdr = fh.read(8)
            if len(hdr) < 8:
                break
            length, kind = struct.unpack(">I4s", hdr)
            if kind == b"IEND":
                ended = True
                break
            if kind != b"IDAT":
                fh.seek(length + 4, 1)
                continue
            remaining = length
            while remaining:
                data = fh.read(min(remaining, 1 << 16))
                if not data:
                    raise TruncatedImage("PNG data is truncated or damaged: image data is cut short")
                remaining -= len(data)
                try:
                    while data:
                        produced += len(inflater.decompress(data, 1 << 20))
                        data = inflater.unconsumed_tail
                except zlib.error as exc:
                    raise TruncatedImage(f"PNG data is truncated or damaged: {exc}") from exc
                if produced > expected + 1:
                    raise InvalidImage("PNG cannot be decoded: more image data than its size needs")
            fh.read(4)  # CRC
        if produced < expected:
            raise TruncatedImage(f"PNG data is truncated or damaged: {produced} of {expected} image bytes")
        if not ended and not inflater.eof:
            raise TruncatedImage("PNG data is truncated or damaged: the file ends before its image data does")
    return info


def _probe_pil(path: Path, fmt: str, max_pixels: int, limit: int, verify: bool = True,
               keep_min_side: int | None = None) -> tuple[ImageInfo, Decoded | None]:
    """JPEG and BMP: the header from Pillow, the data checked by a decode at 1/8 scale (JPEG, libjpeg's DCT
    scaling, so a huge JPEG costs 1/64 of its pixels) or against the file size (uncompressed BMP).

    ``keep_min_side``: a grey JPEG is checked by decoding it instead at the scale :func:`decode_gray` would
    give for that ``min_side``, and those pixels are returned (the classifier's input, decoded once: the
    entropy decoding, most of a JPEG's cost, is the same at every DCT scale)."""
    kept: Decoded | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PILImage.open(path) as img:
                width, height = img.size
                pages = getattr(img, "n_frames", 1)
                _check_pixels(width, height, 1, max_pixels)
                mode = img.mode
                bands = len(img.getbands())
                decoded = width * height * bands * max(1, _PIL_BITS.get(mode, 8) // 8)
                if fmt == "JPEG" and (img.info.get("progressive") or img.info.get("progression")):
                    decoded = 2 * width * height * bands  # the coefficient buffer of a progressive decode
                info = _check_decoded(ImageInfo(fmt, int(width), int(height), _PIL_BITS.get(mode, 8), int(pages),
                                                mode, bands, decoded), limit)
                if not verify:
                    return info, None
                if fmt == "JPEG":  # a progressive decode keeps its coefficients whole: under the budget
                    keep = bool(keep_min_side) and mode == "L" and bands == 1
                    factor = _reduction(height, width, keep_min_side, None) if keep else 8
                    dct = max((d for d in _JPEG_REDUCED if d <= factor), default=1)
                    img.draft(mode, (max(1, width // dct), max(1, height // dct)))
                    with _budget.hold(decoded if decoded > width * height * bands else decoded // (dct * dct)):
                        img.load()
                        if keep:
                            gray = np.asarray(img)
                            gray = reduce(gray, factor // dct) if factor // dct > 1 else gray.copy()
                            kept = Decoded(gray, dct * max(1, factor // dct), int(width), int(height), 0.0)
                elif fmt == "BMP" and img.info.get("compression", 0) == 0 and img.tile:
                    offset = img.tile[0][2]
                    stride = ((width * _bmp_bits(path) + 31) // 32) * 4
                    if offset + stride * height > path.stat().st_size:
                        raise TruncatedImage("BMP data is truncated or damaged: the file is shorter than its rows")
                else:
                    with _budget.hold(decoded):
                        img.load()
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise _decode_error(fmt, exc) from exc
    return info, kept


def _bmp_bits(path: Path) -> int:
    with open(path, "rb") as fh:
        head = fh.read(30)
    return int(struct.unpack("<H", head[28:30])[0]) if len(head) >= 30 else 24


def probe(path: Path | str, max_pixels: int, max_decoded: int | None = None, verify: bool = True) -> ImageInfo:
    """Identify and validate an image file without decoding its pixels whole.

    Raises :class:`ImageRejected` for empty, non-image, unsupported, truncated or oversized (in
    pixels, or in decoded bytes: ``max_decoded``, by default this process's budget) files.
    ``verify=False`` reads the header only (a worker, for a file the upload already checked).
    """
    return probe_keeping(path, max_pixels, max_decoded, verify)[0]


def probe_keeping(path: Path | str, max_pixels: int, max_decoded: int | None = None, verify: bool = True,
                  keep_min_side: int | None = None) -> tuple[ImageInfo, Decoded | None]:
    """:func:`probe`, and with ``keep_min_side`` the pixels its check decoded, where that check decodes the
    whole image anyway (a grey JPEG): what :func:`decode_gray` with that ``min_side`` gives, or None."""
    path = Path(path)
    fmt = _sniff_file(path)
    limit = max_decoded_bytes() if max_decoded is None else max_decoded
    kept = None
    if fmt == "TIFF":
        info = _probe_tiff(path, max_pixels)
    elif fmt == "PNG":
        info = _probe_png(path, max_pixels, verify)
    else:
        info, kept = _probe_pil(path, fmt, max_pixels, limit, verify, keep_min_side)
    return _check_decoded(info, limit), kept


# ---- decoding --------------------------------------------------------------------------------------

def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness; SEM micrographs are grey (≈ 0), photos and plots are not."""
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        return 0.0
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def _subsample(arr: np.ndarray, target: int = 256) -> np.ndarray:
    """A strided view of about target × target pixels (no copy)."""
    step = max(1, max(arr.shape[0], arr.shape[1]) // target)
    return arr[::step, ::step]


def _colour_of(arr: np.ndarray, bgr: bool = False) -> float:
    """The colourfulness of a colour page, on a 256-px thumbnail (area-averaged from a strided sample, as a
    thumbnail of the whole would be); 0 for grey pages."""
    if arr.ndim != 3 or arr.shape[-1] < 3:
        return 0.0
    sub = _subsample(arr, 512)[..., :3]
    if sub.dtype != np.uint8:
        if sub.dtype.kind not in "ui":
            return 0.0
        sub = (sub.astype(np.float32) * (255.0 / float(np.iinfo(sub.dtype).max))).astype(np.float32)
    h, w = sub.shape[:2]
    k = max(1, max(h, w) // 256)
    if k > 1:
        sub = cv2.resize(sub, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    return colourfulness(sub[..., ::-1] if bgr else sub)


_LUMA_RGB = np.array([0.299, 0.587, 0.114], np.float32)
_LUMA_BGR = _LUMA_RGB[::-1].copy()


def _grey_block(block: np.ndarray, bgr: bool = False) -> np.ndarray:
    """(rows, w[, c]) → (rows, w) at float32 (colour: ITU-R 601 luma of the first three samples)."""
    if block.ndim == 2:
        return block.astype(np.float32, copy=False)
    if block.shape[-1] >= 3:
        return block[..., :3].astype(np.float32) @ (_LUMA_BGR if bgr else _LUMA_RGB)
    return block[..., 0].astype(np.float32, copy=False)


def _blocks(rows: int, width: int) -> Iterator[tuple[int, int]]:
    step = max(1, _BLOCK_PIXELS // max(1, width))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _stretch_limits(arr: np.ndarray, bgr: bool = False) -> tuple[float, float]:
    """The 0.01% and 99.99% points of the grey values, block by block: exact by histogram for integer
    samples up to 16 bits, from a strided sample of about 4 M values otherwise."""
    h, w = arr.shape[:2]
    integral = arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2
    if integral:
        offset = -int(np.iinfo(arr.dtype).min) if arr.dtype.kind == "i" else 0
        hist = np.zeros(65536, np.int64)
        for r0, r1 in _blocks(h, w):
            g = _grey_block(arr[r0:r1], bgr)
            if arr.ndim == 3 and arr.shape[-1] >= 3:
                g = np.rint(g)
            hist += np.bincount((g.astype(np.int64).ravel() + offset), minlength=65536)[:65536]
        cdf = np.cumsum(hist)
        n = int(cdf[-1])
        if n <= 1:
            return 0.0, 1.0
        lo = float(np.searchsorted(cdf, 0.0001 * (n - 1), side="right") - offset)
        hi = float(np.searchsorted(cdf, 0.9999 * (n - 1), side="left") - offset)
        if hi <= lo:
            nz = np.nonzero(hist)[0]
            lo, hi = float(nz[0] - offset), float(nz[-1] - offset)
        return lo, hi
    step = max(1, int(math.sqrt(h * w / 4e6)))
    g = _grey_block(arr[::step, ::step], bgr)
    g = g[np.isfinite(g)]
    if g.size <= 1:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(g, [0.01, 99.99]))
    if hi <= lo:
        lo, hi = float(g.min()), float(g.max())
    return lo, hi


def narrow_to_uint8(arr: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Any decoded page (h, w[, c]) → uint8 grey (h, w), written over ``arr``'s own buffer where it can be.

    8-bit data keeps its values (colour: luma); deeper data is stretched between its 0.01% and 99.99%
    points. Rows are converted a block at a time, so the only extra memory is one block of float32.
    ``bgr``: colour samples are in OpenCV's blue-green-red order.
    """
    if arr.dtype == bool:
        arr = arr.view(np.uint8) if arr.ndim == 2 else arr[..., 0].view(np.uint8)
        return (arr * 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.ascontiguousarray(np.moveaxis(arr, 0, -1))  # planar
    if arr.ndim not in (2, 3):
        raise InvalidImage(f"unsupported pixel layout {arr.shape}")
    h, w = arr.shape[:2]
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return arr
    if arr.dtype == np.uint8:
        scale, lo = None, 0.0
    else:
        lo, hi = _stretch_limits(arr, bgr)
        scale = 0.0 if hi <= lo else 255.0 / (hi - lo)
    in_place = arr.flags.c_contiguous and arr.flags.writeable
    out = arr.reshape(-1).view(np.uint8)[: h * w].reshape(h, w) if in_place else np.empty((h, w), np.uint8)
    for r0, r1 in _blocks(h, w):
        g = _grey_block(arr[r0:r1], bgr)
        if scale is None:
            block = np.clip(g + 0.5, 0, 255).astype(np.uint8) if arr.ndim == 3 else g.astype(np.uint8)
        elif scale == 0.0:
            block = np.zeros(g.shape, np.uint8)
        else:
            g = np.where(np.isfinite(g), g, lo) if g.dtype.kind == "f" else g
            block = np.clip((g - lo) * np.float32(scale) + 0.5, 0, 255).astype(np.uint8)
        out[r0:r1] = block  # rows [r0, r1) of the output end before the unread input rows begin
    return out


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric image to uint8 grey (see :func:`narrow_to_uint8`); ``arr`` is left unchanged."""
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return arr
    return narrow_to_uint8(np.array(arr, copy=True))


def _reduction(h: int, w: int, min_side: int | None, max_work_pixels: int | None) -> int:
    """The largest integer factor keeping both sides ≥ ``min_side``, at least the one bringing the image
    under ``max_work_pixels``."""
    f = 1
    if min_side:
        f = max(1, min(h, w) // max(1, min_side))
    if max_work_pixels and h * w > max_work_pixels:
        f = max(f, math.ceil(math.sqrt(h * w / max_work_pixels)))
    return max(1, f)


def reduce(gray: np.ndarray, factor: int) -> np.ndarray:
    """Area average over factor × factor blocks (a new, smaller array)."""
    if factor <= 1:
        return gray
    h, w = gray.shape
    return cv2.resize(gray, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)


def _decode_native(path: Path, fmt: str, info: ImageInfo) -> tuple[np.ndarray, bool, float]:
    """The first page as stored (a palette TIFF as the grey of its colours), whether its colour samples
    are BGR, and its colourfulness (from a subsample)."""
    if fmt == "TIFF":
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            arr = page.asarray()
            if info.mode == "P" and page.colormap is not None:
                cmap = np.asarray(page.colormap, np.float64)
                if cmap.max() > 255:
                    cmap = cmap / 257.0
                lut = np.clip(cmap[:3].T @ _LUMA_RGB.astype(np.float64) + 0.5, 0, 255).astype(np.uint8)
                return lut[arr], False, _colour_of(np.moveaxis(cmap[:3][:, _subsample(arr, 512)], 0, -1))
        return arr, False, _colour_of(arr)
    if fmt == "PNG":
        import imagecodecs

        data = path.read_bytes()  # ≤ the upload limit; libpng decodes into one array (OpenCV's decoder holds two)
        arr = imagecodecs.png_decode(data)
        del data
        return arr, False, _colour_of(arr)
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is not None:
        return bgr, True, _colour_of(bgr, bgr=True)
    # a variant OpenCV does not read (some BMP headers): Pillow, within the same budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with PILImage.open(path) as img:
            img.load()
            arr = np.asarray(img.convert("RGB") if img.mode in ("P", "1", "CMYK", "YCbCr") else img)
    return arr, False, _colour_of(arr)


_JPEG_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_JPEG_REDUCED_COLOUR = cv2.IMREAD_REDUCED_COLOR_8


def _decode_jpeg(path: Path, info: ImageInfo, factor: int) -> tuple[np.ndarray, int, float]:
    """A JPEG straight to grey (libjpeg's own colour conversion), at 1/2, 1/4 or 1/8 scale by DCT
    scaling where ``factor`` allows; the colourfulness from an extra 1/8-scale colour decode."""
    dct = max((d for d in _JPEG_REDUCED if d <= factor), default=1)
    gray = cv2.imread(str(path), _JPEG_REDUCED[dct])
    if gray is None:
        raise InvalidImage("JPEG cannot be decoded")
    colour = 0.0
    if info.samples >= 3:
        small = cv2.imread(str(path), _JPEG_REDUCED_COLOUR)
        colour = _colour_of(small, bgr=True) if small is not None else 0.0
    return gray, dct, colour


def decode_gray(path: Path | str, max_pixels: int, min_side: int | None = None,
                max_work_pixels: int | None = None) -> Decoded:
    """Decode the first page to 8-bit grey in bounded memory (raises :class:`ImageRejected`).

    ``min_side``: the result may be reduced by an integer factor while both sides stay ≥ it (model
    inputs; never for scale reading at ordinary sizes, which measures pixels). ``max_work_pixels``:
    an image larger than this is reduced until it fits (scale reading of very large images).
    ``Decoded.factor`` says by how much, so lengths measured on the result can be scaled back.
    """
    path = Path(path)
    info = probe(path, max_pixels, verify=False)
    factor = _reduction(info.height, info.width, min_side, max_work_pixels)
    try:
        with _budget.hold(info.decoded_bytes):
            if info.format == "JPEG":
                gray, dct, colour = _decode_jpeg(path, info, factor)
                gray = reduce(gray, factor // dct) if factor // dct > 1 else gray
                factor = dct * max(1, factor // dct)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    arr, bgr, colour = _decode_native(path, info.format, info)
                gray = narrow_to_uint8(arr, bgr)
                del arr
                gray = reduce(gray, factor) if factor > 1 else gray
                if gray.base is not None:  # a view into the stored page's buffer: keep only the grey
                    gray = gray.copy()
    except ImageRejected:
        raise
    except Exception as exc:
        raise _decode_error(info.format, exc) from exc
    return Decoded(gray, factor, info.width, info.height, round(float(colour), 4))


def load_gray(path: Path | str, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """The first page as a 2-D uint8 array (see :func:`decode_gray`; raises :class:`ImageRejected`)."""
    return decode_gray(path, max_pixels, min_side=min_side).gray
