"""Length units, scale parsing, and the 1-2-5 scale bins."""

from __future__ import annotations

import math
import re
from typing import Any

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


# '1,000' and '10,000' are thousands (a comma before exactly three digits, after one to three);
# '0,5' and '2,50' are decimal commas. A thin or narrow no-break space may also group thousands.
_THOUSANDS = re.compile(r"\d{1,3}(?:[,\u2009\u202f]\d{3})+")
_NUMBER = r"(?:\d{1,3}(?:[,\u2009\u202f]\d{3})+(?![\d.,])|\d+(?:[.,]\d+)?)"
_QTY = re.compile(r"(?<![\d.,])([-+]?" + _NUMBER + r"(?:[eE][-+]?\d+)?)\s*(pm|nm|µm|μm|um|mm|cm|m)\b")


def parse_number(text: str) -> float | None:
    """A label's number: '1,000' -> 1000, '0,5' -> 0.5, '2.5' -> 2.5; None when not a number."""
    t = text.strip()
    if _THOUSANDS.fullmatch(t):
        t = re.sub(r"[,\u2009\u202f]", "", t)
    try:
        return float(t.replace(",", "."))
    except ValueError:
        return None


def parse_length(text: str) -> tuple[float, str] | None:
    """'200 nm' -> (200.0, 'nm'), '1,000 nm' -> (1000.0, 'nm'); None when there is no positive length."""
    m = _QTY.search(text.replace("\u03bc", "\u00b5"))
    if not m:
        return None
    value = parse_number(m.group(1))
    unit = normalise_unit(m.group(2))
    if unit is None or value is None or not valid_length(value):
        return None
    return value, unit


def nice_value(value: float) -> bool:
    """Scale bars are drawn at 'round' lengths: 1, 2, 2.5, 3, 4, 5 and their decades."""
    if not valid_length(value):
        return False
    mant = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return any(abs(mant - m) < 1e-6 for m in (1, 2, 2.5, 3, 4, 5))


# ---- scale bins and ranges --------------------------------------------------------------
#
# One rule for every range of scale-bar lengths: the lower bound is included, the upper one is
# not, [lo, hi). The 1-2-5 bins (search by ``scale_bin``), the clustering selection
# (``scale_min_nm``/``scale_max_nm`` of a clustering run and of ``semtag cluster``) and the
# search filters of the same names all use it, so a 2 µm bar is in the 2 µm–5 µm bin and outside
# a 1000–2000 nm selection everywhere.

def bin_edges_nm() -> list[float]:
    """1-2-5 steps from 1 nm to 10 mm: 1, 2, 5, 10, ..., 5000000, 10000000 nm."""
    edges = []
    for exp in range(0, 7):
        for m in (1, 2, 5):
            edges.append(m * 10.0 ** exp)
    edges.append(1e7)
    return edges


def format_nm(nm: float) -> str:
    for unit in ("mm", "µm", "nm"):
        if nm >= NM_PER[unit]:
            v = nm / NM_PER[unit]
            return f"{v:g} {unit}"
    return f"{nm:g} nm"


def in_scale_range(scale_nm: float | None, lo_nm: float | None = 1000.0, hi_nm: float | None = 2000.0) -> bool:
    """Whether a scale-bar length lies in [lo_nm, hi_nm) (a bound of None is open); the paper's
    selection by default: the 1 µm–2 µm bin."""
    if scale_nm is None or not valid_length(scale_nm):
        return False
    return (lo_nm is None or scale_nm >= lo_nm) and (hi_nm is None or scale_nm < hi_nm)


def range_conditions(column: Any, lo_nm: float | None, hi_nm: float | None) -> list[Any]:
    """The same rule as SQL conditions on a column of scale-bar lengths (a SQLAlchemy column or
    anything else with ``>=`` and ``<``)."""
    out = []
    if lo_nm is not None:
        out.append(column >= lo_nm)
    if hi_nm is not None:
        out.append(column < hi_nm)
    return out


def scale_bin(scale_nm: float | None) -> str | None:
    """The 1-2-5 bin [lo, hi) of a scale-bar length, e.g. 1500 nm -> '1 µm–2 µm', 2000 nm ->
    '2 µm–5 µm'; None outside 1 nm–10 mm."""
    edges = bin_edges_nm()
    for lo, hi in zip(edges, edges[1:]):
        if in_scale_range(scale_nm, lo, hi):
            return f"{format_nm(lo)}–{format_nm(hi)}"
    return None


def select_scale_range(readings, lo_nm: float | None = 1000.0, hi_nm: float | None = 2000.0):  # noqa: ANN001, ANN201
    """The items whose ``scale_nm`` (attribute or key) lies in [lo_nm, hi_nm)."""
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
