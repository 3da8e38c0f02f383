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

from services.scale.units import NM_PER, to_nm

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
    drawn_box: tuple[int, int, int, int] | None = None  # what was drawn (bar and label), for overlays


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


# ---- panels inside the frame and bars over the image (composites over real micrographs) -------

PANEL_STYLES = ("zeiss", "zeiss_dark", "fei", "jeol", "tescan", "hitachi")
_FONT_FILES = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "condensed": "DejaVuSansCondensed.ttf",
               "mono": "DejaVuSansMono.ttf", "serif_italic": "DejaVuSerif-Italic.ttf"}


def font_named(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """One of the DejaVu faces that scripts/install.sh installs (``_FONT_FILES``)."""
    for d in _FONT_DIRS:
        if (d / _FONT_FILES[name]).exists():
            return ImageFont.truetype(str(d / _FONT_FILES[name]), size)
    return ImageFont.load_default(size=size)


@dataclass
class PanelTruth:
    style: str
    scale_value: float
    scale_unit: str
    bar_px: float
    pixel_size_nm: float
    box: tuple[int, int, int, int]  # the panel (x0, y0, x1, y1)
    bar_box: tuple[int, int, int, int]


def _mag_text(px_nm: float, image_w: int) -> float:
    return 127e6 / px_nm / image_w


def _capped(d: ImageDraw.ImageDraw, x: float, y: int, length: int, t: int, tick: int, fill: int) -> None:
    """A bar with end ticks whose centres are ``length`` apart (the length readers measure)."""
    x0 = int(round(x))
    d.rectangle([x0, y, x0 + length, y + t - 1], fill=fill)
    for xe in (x0, x0 + length):
        d.rectangle([xe - t // 2, y - tick, xe - t // 2 + t - 1, y + t - 1 + tick], fill=fill)


def render_panel(image: np.ndarray, style: str, scale_value: float, scale_unit: str, bar_px: int,
                 box: tuple[int, int, int, int], label_text: str | None = None, font_name: str = "sans",
                 symbol_mu: bool = False, kv: float = 5.0, wd_mm: float = 6.3, border: bool = True
                 ) -> tuple[np.ndarray, PanelTruth]:
    """Draw an instrument-style data panel *over* ``image`` (uint8 grey) inside ``box`` (x0, y0, x1,
    y1): the specimen stays visible around it (above, below, beside). The panel holds the scale bar
    (``bar_px`` long between its end-tick centres), its label and the acquisition fields; the
    magnification and any field width agree with the pixel size the bar implies.
    """
    if style not in PANEL_STYLES:
        raise ValueError(f"unknown panel style {style!r}; choose from {', '.join(PANEL_STYLES)}")
    H, W = image.shape
    x0, y0, x1, y1 = box
    pw, ph = x1 - x0, y1 - y0
    px = to_nm(scale_value, scale_unit) / bar_px
    mag = _mag_text(px, W)
    label = label_text or (f"{_fmt(scale_value)} {scale_unit}" if style in ("zeiss", "zeiss_dark", "fei", "tescan")
                           else f"{_fmt(scale_value)}{scale_unit}")
    bg, fg = {"zeiss": (255, 0), "zeiss_dark": (0, 255), "fei": (0, 255), "jeol": (0, 255),
              "tescan": (225, 0), "hitachi": (0, 255)}[style]
    canvas = Image.fromarray(image.copy())
    d = ImageDraw.Draw(canvas)
    d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=bg, outline=fg if border and style in ("zeiss", "zeiss_dark") else bg)
    fs = max(10, int(ph * (0.3 if style in ("jeol", "hitachi") else 0.24)))
    f = font_named(font_name, fs)
    t = max(2, ph // 24)
    tick = max(3, ph // 9)
    m = int(0.03 * pw) + 4
    fw_nm = px * W
    bar_x = float(x0 + m)
    if style in ("zeiss", "zeiss_dark"):
        d.text((bar_x, y0 + ph * 0.12), label, fill=fg, font=f)
        yb = int(y0 + ph * 0.66)
        _capped(d, bar_x, yb, bar_px, t, tick, fg)
        col = max(x0 + int(pw * 0.3), int(bar_x) + bar_px + tick + fs)
        mtxt = f"{mag / 1000:.2f} K X" if mag >= 1000 else f"{mag:.0f} X"
        cx = col
        for top, bottom in ((f"EHT = {kv:.2f} kV", f"WD = {wd_mm:.1f} mm"), ("Signal A = InLens", f"Mag = {mtxt}")):
            cw = max(d.textlength(top, font=f), d.textlength(bottom, font=f))
            if cx + cw >= x1 - 4:
                break
            d.text((cx, y0 + ph * 0.12), top, fill=fg, font=f)
            d.text((cx, y0 + ph * 0.55), bottom, fill=fg, font=f)
            cx = int(max(cx + cw + 2 * fs, x0 + pw * 0.6))
        bar_top, bar_bottom = yb - tick, yb + t + tick
    elif style == "fei":
        cells = [("HV", f"{kv:.2f} kV"), ("mag", f"{mag:,.0f} x".replace(",", " ")), ("WD", f"{wd_mm:.1f} mm"),
                 ("HFW", _fmt_len(fw_nm)), ("det", "ETD")]
        cx = x0 + 4
        fb = font_named("bold" if font_name == "sans" else font_name, fs)
        cell_w = max(int(d.textlength("10.00 kV", font=fb)) + 14, int(pw * 0.11))
        for name, value in cells:
            if cx + cell_w > x1 - bar_px - 3 * fs:
                break
            d.text((cx, y0 + 3), name, fill=fg, font=f)
            d.text((cx, y0 + ph * 0.52), value, fill=fg, font=fb)
            cx += cell_w
            d.line([cx - 6, y0, cx - 6, y1 - 1], fill=128)
        bar_x = float(max(cx + 8, x1 - bar_px - 2 * m - int(d.textlength(label, font=f)) // 2))
        bar_x = min(bar_x, float(x1 - bar_px - m))
        yb = int(y0 + ph * 0.3)
        _capped(d, bar_x, yb, bar_px, t, tick, fg)
        tw = d.textlength(label, font=f)
        d.text((bar_x + (bar_px - tw) / 2, yb + tick + 2), label, fill=fg, font=f)
        bar_top, bar_bottom = yb - tick, yb + t + tick
    elif style == "jeol":
        text = f"SEI   {kv:.1f}kV   X{mag:,.0f}   "
        ty = y0 + (ph - fs) * 0.4
        d.text((x0 + m, ty), text, fill=fg, font=f)
        lx = x0 + m + d.textlength(text, font=f)
        if symbol_mu and scale_unit == "µm" and label_text is None:
            num = _fmt(scale_value)
            d.text((lx, ty), num, fill=fg, font=f)
            mx = lx + d.textlength(num, font=f) + 1
            mu_font = font_named("serif_italic", fs)
            d.text((mx, ty), "\u03bc", fill=fg, font=mu_font)
            ux = mx + d.textlength("\u03bc", font=mu_font) + 1
            d.text((ux, ty), "m", fill=fg, font=f)
            end = ux + d.textlength("m", font=f)
        else:
            d.text((lx, ty), label, fill=fg, font=f)
            end = lx + d.textlength(label, font=f)
        bar_x = float(int(end + 6))
        yb = int(y0 + ph * 0.3)
        thick = max(3, t * 2)
        d.rectangle([int(bar_x), yb, int(bar_x) + bar_px - 1, yb + thick], fill=fg)
        if bar_x + bar_px + 20 + d.textlength(f"WD {wd_mm:.1f}mm", font=f) < x1:
            d.text((bar_x + bar_px + 20, ty), f"WD {wd_mm:.1f}mm", fill=fg, font=f)
        bar_top, bar_bottom = yb, yb + thick + 1
    elif style == "tescan":
        fields = [f"SEM HV: {kv:.1f} kV", f"WD: {wd_mm:.2f} mm", f"View field: {_fmt_len(fw_nm, ': ')}",
                  f"SEM MAG: {mag / 1000:.1f} kx" if mag >= 1000 else f"SEM MAG: {mag:.0f} x"]
        cx = x0 + m
        for text in fields:
            if cx + d.textlength(text, font=f) > x1 - 4:
                break
            d.text((cx, y0 + ph * 0.08), text, fill=fg, font=f)
            cx += int(d.textlength(text, font=f)) + 3 * fs
        row2 = y0 + ph * 0.55
        d.text((x0 + m, row2), "Det: SE", fill=fg, font=f)
        bar_x = float(x0 + m + d.textlength("Det: SE", font=f) + 3 * fs)
        yb = int(row2 + fs * 0.45)
        _capped(d, bar_x, yb, bar_px, t, tick, fg)
        d.text((bar_x + bar_px + fs, row2), label, fill=fg, font=f)
        if x1 - d.textlength("TESCAN", font=f) - 6 > bar_x + bar_px + fs + d.textlength(label, font=f) + 2 * fs:
            d.text((x1 - d.textlength("TESCAN", font=f) - 6, row2), "TESCAN", fill=fg, font=f)
        bar_top, bar_bottom = yb - tick, yb + t + tick
    else:  # hitachi: a ruler of ticks with its label under the right end
        mtxt = f"{mag / 1000:.1f}k" if mag >= 1000 else f"{mag:.0f}"
        d.text((x0 + m, y0 + ph * 0.4), f"TM4000 {kv:g}kV {wd_mm:.1f}mm x{mtxt} BSE", fill=fg, font=f)
        right = x1 - m
        left = right - bar_px
        for i in range(11):
            x = left + i * bar_px / 10
            d.rectangle([int(round(x)) - 1, y0 + 2, int(round(x)), y0 + max(6, ph // 6)], fill=fg)
        d.text((right - d.textlength(label, font=f), y0 + ph * 0.4), label, fill=fg, font=f)
        bar_x = float(left)
        bar_top, bar_bottom = y0 + 2, y0 + max(6, ph // 6)
        bar_px = int(round(left + bar_px)) - int(round(left))
    bar_box = (int(bar_x) - t, int(bar_top), int(bar_x) + bar_px + t, int(bar_bottom))
    return np.asarray(canvas), PanelTruth(style, scale_value, scale_unit, float(bar_px), px, (x0, y0, x1, y1),
                                          bar_box)


def _fmt_len(nm: float, sep: str = " ") -> str:
    for unit in ("mm", "µm", "nm"):
        if nm >= NM_PER[unit]:
            v = nm / NM_PER[unit]
            return f"{v:.3g}{sep.strip(':') or ' '}{unit}".replace("  ", " ")
    return f"{nm:.3g} nm"


def render_bar_over(image: np.ndarray, scale_value: float, scale_unit: str, bar_px: int, x: int, y: int,
                    fg: int = 255, halo: int = 0, thickness: int = 4, label_pos: str = "above",
                    font_name: str = "bold", font_size: int = 20, capped: bool = False,
                    label_text: str | None = None) -> tuple[np.ndarray, BarTruth]:
    """A scale bar and its label drawn straight over the image (no panel): ``fg`` white or black,
    with a ``halo`` (outline of the other colour, in px) or none; the bar's left end at (x, y),
    the label above, below, left or right of it."""
    canvas = Image.fromarray(image.copy())
    d = ImageDraw.Draw(canvas)
    f = font_named(font_name, font_size)
    label = label_text or f"{_fmt(scale_value)} {scale_unit}"
    bg = 255 - fg
    l0, t0, r0, b0 = d.textbbox((0, 0), label, font=f)  # the ink's box, descender included
    tw, th = r0 - l0, b0 - t0
    tick = max(3, thickness) if capped else 0
    gap = max(3, font_size // 3) + halo
    mid = y + thickness / 2
    left, top = {"above": (x + (bar_px - tw) / 2, y - tick - gap - th),
                 "below": (x + (bar_px - tw) / 2, y + thickness + tick + gap),
                 "left": (x - gap - tw - tick, mid - th / 2),
                 "right": (x + bar_px + gap + tick, mid - th / 2)}[label_pos]
    tx, ty = left - l0, top - t0
    if halo:
        d.rectangle([x - halo - (thickness // 2 if capped else 0), y - tick - halo,
                     x + bar_px + halo + (thickness // 2 if capped else 0), y + thickness - 1 + tick + halo], fill=bg)
    if capped:
        _capped(d, x, y, bar_px, thickness, tick, fg)
    else:
        d.rectangle([x, y, x + bar_px - 1, y + thickness - 1], fill=fg)
    d.text((tx, ty), label, fill=fg, font=f, stroke_width=halo, stroke_fill=bg if halo else None)
    px = to_nm(scale_value, scale_unit) / bar_px
    truth = BarTruth("overlay", scale_value, scale_unit, float(bar_px), px, int(y))
    drawn = (int(min(x - halo - thickness, left - halo)), int(min(y - tick - halo, top - halo)),
             int(max(x + bar_px + halo + thickness, left + tw + halo)) + 1,
             int(max(y + thickness + tick + halo, top + th + halo)) + 1)
    truth.drawn_box = drawn
    return np.asarray(canvas), truth
