"""Reads one image's scale. (The metadata and OCR readers are added by the scale issue.)"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
        return asdict(self)


def read_scale(path: Path | str, gray: np.ndarray | None = None, sidecar: Path | str | None = None) -> ScaleResult:
    return ScaleResult(reason="not read: no scale reader installed yet")
