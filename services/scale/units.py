"""Length units, scale parsing, and the 1-2-5 scale bins."""

from __future__ import annotations

import math
import re

NM_PER = {"pm": 1e-3, "nm": 1.0, "µm": 1e3, "mm": 1e6, "cm": 1e7, "m": 1e9}

# micro sign U+00B5 and Greek mu U+03BC, and the ASCII spelling 'u'
_UNIT_ALIASES = {
    "pm": "pm", "nm": "nm", "µm": "µm", "μm": "µm", "um": "µm", "micron": "µm", "microns": "µm",
    "mm": "mm", "cm": "cm", "m": "m",
}


def normalise_unit(unit: str | None) -> str | None:
    if unit is None:
        return None
    u = unit.strip().replace("\u03bc", "\u00b5")
    return _UNIT_ALIASES.get(u) or _UNIT_ALIASES.get(u.lower())


def to_nm(value: float, unit: str) -> float:
    u = normalise_unit(unit)
    if u is None:
        raise ValueError(f"unknown length unit {unit!r}")
    return float(value) * NM_PER[u]


def valid_length(value) -> bool:  # noqa: ANN001
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0


_QTY = re.compile(r"([-+]?\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?)\s*(pm|nm|µm|μm|um|mm|cm|m)\b")


def parse_length(text: str) -> tuple[float, str] | None:
    """'200 nm' -> (200.0, 'nm'); None when there is no positive length."""
    m = _QTY.search(text.replace("\u03bc", "\u00b5"))
    if not m:
        return None
    value = float(m.group(1).replace(",", "."))
    unit = normalise_unit(m.group(2))
    if unit is None or not valid_length(value):
        return None
    return value, unit


def nice_value(value: float) -> bool:
    """Scale bars are drawn at 'round' lengths: 1, 2, 2.5, 3, 4, 5 and their decades."""
    if not valid_length(value):
        return False
    mant = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return any(abs(mant - m) < 1e-6 for m in (1, 2, 2.5, 3, 4, 5))


# ---- scale bins -------------------------------------------------------------------------

def bin_edges_nm() -> list[float]:
    """1-2-5 steps from 1 nm to 1 mm: 1, 2, 5, 10, ..., 500000, 1000000 nm."""
    edges = []
    for exp in range(0, 6):
        for m in (1, 2, 5):
            edges.append(m * 10.0 ** exp)
    edges.append(1e6)
    return edges


def format_nm(nm: float) -> str:
    for unit in ("mm", "µm", "nm"):
        if nm >= NM_PER[unit]:
            v = nm / NM_PER[unit]
            return f"{v:g} {unit}"
    return f"{nm:g} nm"


def scale_bin(scale_nm: float | None) -> str | None:
    """The 1-2-5 bin of a scale-bar length, e.g. 1500 nm -> '1 µm–2 µm'; None outside 1 nm–1 mm."""
    if scale_nm is None or not valid_length(scale_nm):
        return None
    edges = bin_edges_nm()
    for lo, hi in zip(edges, edges[1:]):
        if lo <= scale_nm < hi or (hi == edges[-1] and scale_nm == hi):
            return f"{format_nm(lo)}–{format_nm(hi)}"
    return None


def in_scale_range(scale_nm: float | None, lo_nm: float = 1000.0, hi_nm: float = 2000.0) -> bool:
    """The paper's selection: scale bars from lo to hi (default 1 µm–2 µm, both included)."""
    return scale_nm is not None and valid_length(scale_nm) and lo_nm <= scale_nm <= hi_nm


def select_scale_range(readings, lo_nm: float = 1000.0, hi_nm: float = 2000.0):  # noqa: ANN001, ANN201
    """The items whose ``scale_nm`` (attribute or key) lies in [lo_nm, hi_nm]."""
    def get(r):  # noqa: ANN001, ANN202
        return r.get("scale_nm") if isinstance(r, dict) else getattr(r, "scale_nm", None)
    return [r for r in readings if in_scale_range(get(r), lo_nm, hi_nm)]


def snap_nice(nm: float, tolerance: float = 0.03) -> tuple[float, str] | None:
    """The round scale-bar label (value, unit) within ``tolerance`` of a length in nm, if any."""
    if not valid_length(nm):
        return None
    for unit in ("mm", "µm", "nm"):
        if nm >= NM_PER[unit] * 0.999 or unit == "nm":
            v = nm / NM_PER[unit]
            exp = math.floor(math.log10(v))
            for m in (1, 2, 2.5, 3, 4, 5, 10):
                cand = m * 10.0 ** exp
                if abs(cand - v) / cand <= tolerance:
                    return round(cand, 6), unit
            return None
    return None
