"""Rendering instrument-style data bars with a known scale onto an image (synthetic test data).

Styles imitate the layouts met in practice: ``zeiss`` (white zone, capped bar, label above),
``fei`` (black zone in cells, capped bar interrupted by its label), ``jeol`` (black strip,
filled bar right of its label), ``hitachi`` (black strip, ruler of ticks, label below).
The truth — label, bar length in pixels, pixel size — is returned with the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.scale.units import to_nm

STYLES = ("zeiss", "fei", "jeol", "hitachi")
_FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu")]


def font(size: int, bold: bool = False, italic_serif: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSerif-Italic.ttf" if italic_serif else ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    for d in _FONT_DIRS:
        if (d / name).exists():
            return ImageFont.truetype(str(d / name), size)
    return ImageFont.load_default(size=size)


@dataclass
class BarTruth:
    style: str
    scale_value: float
    scale_unit: str
    bar_px: float
    pixel_size_nm: float
    databar_top: int


def _fmt(value: float) -> str:
    return f"{value:g}"


def render_databar(image: np.ndarray, style: str, scale_value: float, scale_unit: str, bar_px: int,
                   mag: str | None = None, kv: float = 5.0, wd_mm: float = 6.3, detector: str = "InLens",
                   unit_text: str | None = None, symbol_mu: bool = False) -> tuple[np.ndarray, BarTruth]:
    """Add a data bar below ``image`` (uint8 grey) and return the new image and its truth.

    ``symbol_mu`` draws the µ of a ``jeol`` label as a slanted serif glyph, as JEOL's data bars
    do (a Symbol-font µ beside a sans-serif number), which Tesseract rarely reads as µ.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    h, w = image.shape
    unit_text = unit_text or scale_unit
    if mag is None:  # the magnification this pixel size means on a 127 mm wide display
        m = 127e6 / (to_nm(scale_value, scale_unit) / bar_px) / w
        mag = f"{m / 1000:.2f} K X" if m >= 1000 else f"{m:.0f} X"
    label = f"{_fmt(scale_value)} {unit_text}" if style in ("zeiss", "fei") else f"{_fmt(scale_value)}{unit_text}"
    zone_h = max(36, int(0.11 * w))
    fs = max(11, int(zone_h * 0.22))
    bg, fg = {"zeiss": (255, 0), "fei": (0, 255), "jeol": (0, 255), "hitachi": (0, 255)}[style]
    canvas = Image.new("L", (w, h + zone_h), bg)
    canvas.paste(Image.fromarray(image), (0, 0))
    d = ImageDraw.Draw(canvas)
    f = font(fs)
    y0 = h
    x0 = int(0.04 * w)
    t = max(1, zone_h // 30)  # line thickness
    tick = max(3, zone_h // 8)
    if style == "zeiss":
        d.rectangle([0, y0, w - 1, y0 + zone_h - 1], outline=fg)
        d.text((x0, y0 + zone_h * 0.12), label, fill=fg, font=f)
        yb = int(y0 + zone_h * 0.62)
        d.rectangle([x0, yb, x0 + bar_px, yb + t - 1], fill=fg)
        d.rectangle([x0 - t // 2, yb - tick, x0 - t // 2 + t - 1, yb + tick], fill=fg)
        d.rectangle([x0 + bar_px - t // 2, yb - tick, x0 + bar_px - t // 2 + t - 1, yb + tick], fill=fg)
        bar_len: float = bar_px
        col = max(int(w * 0.3), x0 + bar_px + tick + fs)  # a long bar pushes the next column right
        d.text((col, y0 + zone_h * 0.12), f"EHT = {kv:.2f} kV", fill=fg, font=f)
        d.text((col, y0 + zone_h * 0.55), f"WD = {wd_mm:.1f} mm", fill=fg, font=f)
        d.text((int(w * 0.58), y0 + zone_h * 0.12), f"Signal A = {detector}", fill=fg, font=f)
        d.text((int(w * 0.58), y0 + zone_h * 0.55), f"Mag = {mag}", fill=fg, font=f)
    elif style == "fei":
        mval = float(mag.split()[0]) * (1000 if "K" in mag else 1)
        cells = [("HV", f"{kv:.2f} kV"), ("mag", f"{mval:,.0f} x".replace(",", " ")),
                 ("WD", f"{wd_mm:.1f} mm"), ("det", "ETD")]
        cx = 4
        for name, value in cells:
            d.text((cx, y0 + 3), name, fill=fg, font=f)
            d.text((cx, y0 + zone_h * 0.5), value, fill=fg, font=font(fs, bold=True))
            cx += int(w * 0.13)
            d.line([cx - 6, y0, cx - 6, y0 + zone_h], fill=128)
        xb = int(w * 0.6)
        yb = int(y0 + zone_h * 0.3)
        tw = d.textlength(label, font=f)
        mid = xb + bar_px / 2
        gap0, gap1 = int(mid - tw / 2 - 4), int(mid + tw / 2 + 4)
        if gap0 - xb >= 6:  # the label interrupts the bar
            d.rectangle([xb, yb, gap0, yb + t - 1], fill=fg)
            d.rectangle([gap1, yb, xb + bar_px, yb + t - 1], fill=fg)
            d.text((gap0 + 4, yb - fs * 0.6), label, fill=fg, font=f)
        else:  # a bar too short for that: the label goes below it
            d.rectangle([xb, yb, xb + bar_px, yb + t - 1], fill=fg)
            d.text((mid - tw / 2, yb + tick + 2), label, fill=fg, font=f)
        d.rectangle([xb - t // 2, yb - tick, xb - t // 2 + t - 1, yb + tick], fill=fg)
        d.rectangle([xb + bar_px - t // 2, yb - tick, xb + bar_px - t // 2 + t - 1, yb + tick], fill=fg)
        bar_len = bar_px
    elif style == "jeol":
        mval = float(mag.split()[0]) * (1000 if "K" in mag else 1)
        text = f"SEI   {kv:.1f}kV   X{mval:,.0f}   "
        d.text((x0, y0 + zone_h * 0.3), text, fill=fg, font=f)
        lx = x0 + d.textlength(text, font=f)
        if symbol_mu and unit_text == "µm":
            num = _fmt(scale_value)
            d.text((lx, y0 + zone_h * 0.3), num, fill=fg, font=f)
            mx = lx + d.textlength(num, font=f) + 1
            mu_font = font(fs, italic_serif=True)
            d.text((mx, y0 + zone_h * 0.3), "\u03bc", fill=fg, font=mu_font)
            ux = mx + d.textlength("\u03bc", font=mu_font) + 1
            d.text((ux, y0 + zone_h * 0.3), "m", fill=fg, font=f)
            end = ux + d.textlength("m", font=f)
        else:
            d.text((lx, y0 + zone_h * 0.3), label, fill=fg, font=f)
            end = lx + d.textlength(label, font=f)
        bx = int(end + 6)
        d.rectangle([bx, int(y0 + zone_h * 0.25), bx + bar_px - 1, int(y0 + zone_h * 0.25) + max(3, t * 3)], fill=fg)
        d.text((bx + bar_px + 20, y0 + zone_h * 0.3), f"WD {wd_mm:.1f}mm", fill=fg, font=f)
        bar_len = bar_px
    else:  # hitachi
        mval = float(mag.split()[0]) * (1000 if "K" in mag else 1)
        mtxt = f"{mval / 1000:.1f}k" if mval >= 1000 else f"{mval:.0f}"
        d.text((x0, y0 + zone_h * 0.35), f"TM4000 {kv:g}kV {wd_mm:.1f}mm x{mtxt} BSE", fill=fg, font=f)
        n = 10
        right = w - int(0.05 * w)
        left = right - bar_px
        for i in range(n + 1):
            x = left + i * bar_px / n
            d.rectangle([int(round(x)) - 1, y0 + 1, int(round(x)), y0 + max(5, zone_h // 6)], fill=fg)
        d.text((right - d.textlength(label, font=f), y0 + zone_h * 0.35), label, fill=fg, font=f)
        bar_len = float(int(round(left + bar_px)) - int(round(left)))
    px = to_nm(scale_value, scale_unit) / bar_len
    return np.asarray(canvas), BarTruth(style, scale_value, scale_unit, float(bar_len), px, h)


def render_overlay(image: np.ndarray, scale_value: float, scale_unit: str, bar_px: int,
                   fg: int = 255, boxed: bool = False) -> tuple[np.ndarray, BarTruth]:
    """A scale bar drawn over the image itself (no data bar): a bar in the lower right corner
    with its label centred above it, optionally on a filled box of the opposite colour."""
    h, w = image.shape
    canvas = Image.fromarray(image.copy())
    d = ImageDraw.Draw(canvas)
    fs = max(12, w // 45)
    f = font(fs, bold=True)
    label = f"{_fmt(scale_value)} {scale_unit}"
    t = max(3, fs // 4)
    right, bottom = w - int(0.05 * w), h - int(0.05 * h)
    left = right - bar_px
    tw = d.textlength(label, font=f)
    ty = bottom - t - int(1.6 * fs)
    if boxed:
        pad = fs // 2
        d.rectangle([min(left, right - tw) - pad, ty - pad, right + pad, bottom + pad], fill=255 - fg)
    d.rectangle([left, bottom - t, right - 1, bottom - 1], fill=fg)
    d.text((left + (bar_px - tw) / 2, ty), label, fill=fg, font=f)
    px = to_nm(scale_value, scale_unit) / bar_px
    return np.asarray(canvas), BarTruth("overlay", scale_value, scale_unit, float(bar_px), px, h)
