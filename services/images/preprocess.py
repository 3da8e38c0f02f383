"""The one image preprocessing shared by training, export and serving.

A model file carries its :class:`Preprocessing` (as JSON in the ONNX metadata), and every
consumer calls :func:`prepare` with it, so serving cannot drift from training: decode to grey,
cut the instrument's data bar away (so no model learns from the bar), resize, replicate to the
model's channels and normalise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from services.images.imaging import load_gray
from services.scale.databar import find_databar

DEFAULT_MAX_PIXELS = 200_000_000


@dataclass(frozen=True)
class Preprocessing:
    input_size: int = 299
    channels: int = 3
    crop: str = "databar"          # "databar" (cut the bottom data bar) or "none"
    resize: str = "stretch"        # the whole frame, aspect ratio not kept (as the paper's 299² inputs)
    scale: float = 1 / 127.5       # x * scale + offset: Inception's [-1, 1]
    offset: float = -1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def crop_databar(gray: np.ndarray) -> np.ndarray:
    """The image above its data bar (the whole image when no bar is found)."""
    box = find_databar(gray)
    if box is None:
        return gray
    top = box[1]
    return gray[:top] if top >= 16 else gray


def resize_gray(gray: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 grey (any size) → uint8 (S, S): data bar cut, resized."""
    if pp.crop == "databar":
        gray = crop_databar(gray)
    s = pp.input_size
    interp = cv2.INTER_AREA if min(gray.shape) > s else cv2.INTER_LINEAR
    return cv2.resize(gray, (s, s), interpolation=interp)


def normalise(small: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 (…, S, S) → float32 (…, S, S, C) model input."""
    x = small.astype(np.float32) * np.float32(pp.scale) + np.float32(pp.offset)
    return np.repeat(x[..., None], pp.channels, axis=-1)


def prepare_gray(gray: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 grey (any size) → float32 (S, S, C) normalised model input."""
    return normalise(resize_gray(gray, pp), pp)


def prepare(path: Path | str, pp: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` (any accepted format) and prepare it; raises ``ImageRejected`` for bad files."""
    return prepare_gray(load_gray(path, max_pixels, min_side=pp.input_size), pp)
