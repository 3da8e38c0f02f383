"""Small images of every kind the ingest path must accept or reject, made in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image


def _noise(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, hi, size=(h, w), dtype=dtype)


def png(h: int = 48, w: int = 64, mode: str = "L", seed: int = 0) -> bytes:
    arr = _noise(h, w, seed)
    if mode == "L":
        img = Image.fromarray(arr, "L")
    elif mode == "RGB":
        img = Image.fromarray(np.stack([arr, arr[::-1], arr[:, ::-1]], -1), "RGB")
    elif mode == "RGBA":
        img = Image.fromarray(np.stack([arr, arr, arr, np.full_like(arr, 255)], -1), "RGBA")
    elif mode == "P":
        img = Image.fromarray(arr, "L").convert("P")
    elif mode == "I;16":
        img = Image.fromarray(_noise(h, w, seed, np.uint16))
    else:
        raise ValueError(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(h: int = 48, w: int = 64, seed: int = 0, rgb: bool = True) -> bytes:
    arr = _noise(h, w, seed)
    img = Image.fromarray(np.stack([arr] * 3, -1), "RGB") if rgb else Image.fromarray(arr, "L")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bmp(h: int = 32, w: int = 32, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(h, w, seed), "L").save(buf, "BMP")
    return buf.getvalue()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(16, 16), "L").save(buf, "GIF")
    return buf.getvalue()


def tiff(h: int = 48, w: int = 64, bits: int = 16, pages: int = 1, seed: int = 0, rgb: bool = False) -> bytes:
    buf = io.BytesIO()
    dtype = np.uint16 if bits == 16 else np.uint8
    with tifffile.TiffWriter(buf) as tw:
        for p in range(pages):
            arr = _noise(h, w, seed + p, dtype)
            if rgb:
                arr = np.stack([arr] * 3, -1)
            tw.write(arr, photometric="rgb" if rgb else "minisblack")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]
