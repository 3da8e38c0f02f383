"""Reading the data bar's text with Tesseract (LSTM engine) and parsing it.

The label of the scale bar is read from targeted crops around the bar (upscaled, binarised);
the rest of the bar (Mag, kV, WD, detector, date, vendor) from the whole data bar. Parsing
tolerates Tesseract's usual confusions: µ read as u, p, y, T, d, j or z; O/0, l/1, S/5.
"""

from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from services.scale import tesseract
from services.scale.units import normalise_unit, parse_number

# One OpenMP thread per Tesseract call: on small crops extra threads cost more than they give,
# and workers already run one task per core.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")


@dataclass
class Word:
    text: str
    conf: float
    left: int
    top: int
    width: int
    height: int
    by_glyphs: bool = False  # pieced together by read_label_glyphs, not read by Tesseract as a word

    @property
    def cx(self) -> float:
        return self.left + self.width / 2

    @property
    def cy(self) -> float:
        return self.top + self.height / 2


def prepare(crop: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """Upscale and binarise to dark text on white, as Tesseract prefers."""
    big = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    _, bw = cv2.threshold(big, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if (bw == 0).mean() > 0.5:  # light text on dark: invert
        bw = 255 - bw
    return cv2.copyMakeBorder(bw, 12, 12, 12, 12, cv2.BORDER_CONSTANT, value=255)


def read_words(crop: np.ndarray, origin: tuple[int, int] = (0, 0), scale: float = 3.0, psm: int = 11,
               whitelist: str | None = None) -> list[Word]:
    """Words with their boxes in image coordinates."""
    if crop.size == 0 or min(crop.shape) < 4:
        return []
    img = prepare(crop, scale)
    data = tesseract.image_to_data(img, psm=psm, whitelist=whitelist)
    words = []
    for i, text in enumerate(data["text"]):
        text = (text or "").strip()
        if not text:
            continue
        conf = float(data["conf"][i])
        x = (data["left"][i] - 12) / scale + origin[0]
        y = (data["top"][i] - 12) / scale + origin[1]
        words.append(Word(text, conf, int(x), int(y), int(data["width"][i] / scale), int(data["height"][i] / scale)))
    return words


def read_blob(gray: np.ndarray, blob: tuple[int, int, int, int], whitelist: str | None = None) -> list[Word]:
    """One word-sized box read as a single text line, upscaled to a glyph height Tesseract
    reads best (about 36 px) and binarised on its own (a targeted crop)."""
    x0, y0, x1, y1 = blob
    h = y1 - y0
    m = max(2, int(0.3 * h))
    H, W = gray.shape
    cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
    return read_words(gray[cy0:cy1, cx0:cx1], (cx0, cy0), scale=_blob_scale(h), psm=7, whitelist=whitelist)


def _blob_scale(height: int) -> float:
    """Upscaling that brings a word of this height to about 36 px, where Tesseract reads best."""
    return float(np.clip(36.0 / max(height, 1), 1.5, 6.0))


def _glyph_boxes(bw: np.ndarray) -> list[list[int]]:
    """Glyphs of a binary word image (text = 1), left to right; parts overlapping in x are one
    glyph (the dot of an i, a broken µ)."""
    n, _, st, _ = cv2.connectedComponentsWithStats(bw, connectivity=8)
    comps = sorted(([int(v) for v in st[i][:4]] for i in range(1, n) if st[i][4] >= 3), key=lambda c: c[0])
    glyphs: list[list[int]] = []
    for x, y, w, h in comps:
        if glyphs and x < glyphs[-1][2] - 1:
            g = glyphs[-1]
            g[1], g[2], g[3] = min(g[1], y), max(g[2], x + w), max(g[3], y + h)
        else:
            glyphs.append([x, y, x + w, y + h])
    return glyphs


_UNIT_OF = {"nm": "nm", "um": "µm", "mm": "mm"}


def read_label_glyphs(gray: np.ndarray, blob: tuple[int, int, int, int]) -> Word | None:
    """A scale label such as '1µm' read in two parts when Tesseract mangles it as a whole
    ('Tum', 'dum', '1am': JEOL's µ is a slanted Symbol-font glyph).

    The last glyph must be an x-height 'm' after taller digits; the glyph before it is µ when it
    descends below the baseline, otherwise n, u or m as read with only those letters allowed;
    the glyphs left of the unit are read with only digits and the decimal point allowed, at
    three sizes, and the value is the one two of them agree on.
    """
    x0, y0, x1, y1 = blob
    crop = gray[y0:y1, x0:x1]
    if crop.size == 0 or min(crop.shape) < 5:
        return None
    _, bw = cv2.threshold(crop, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if bw.mean() > 0.5:
        bw = 1 - bw
    glyphs = _glyph_boxes(bw.astype(np.uint8))
    if len(glyphs) < 3:
        return None
    m, u, first = glyphs[-1], glyphs[-2], glyphs[0]
    xh = m[3] - m[1]
    if xh < 4 or (m[2] - m[0]) < 0.9 * xh or (first[3] - first[1]) < 1.15 * xh:
        return None  # the word does not end in an x-height 'm' after taller digits
    unit: str | None
    if u[3] - m[3] >= 0.2 * xh and u[1] >= m[1] - 0.25 * xh:
        unit = "µm"  # descends below the baseline, starts at x-height: µ
    else:
        ux0 = max(0, x0 + u[0] - 2)
        words = read_words(gray[y0:y1, ux0:x1 + 2], (ux0, y0), scale=_blob_scale(y1 - y0),
                           psm=8, whitelist="unm")
        unit = _UNIT_OF.get("".join(w.text for w in words))
        if unit is None:
            return None
    nx1 = x0 + u[0] - 1
    readings: dict[str, list[float]] = {}
    for k in (1.0, 1.5, 2.0):  # a digit dropped at one size is kept at the others: the value two sizes agree on
        words = read_words(gray[y0:y1, max(0, x0 - 2):nx1], (max(0, x0 - 2), y0),
                           scale=k * _blob_scale(y1 - y0), psm=7, whitelist="0123456789.,")
        number = "".join(w.text for w in words)  # '1,000': a thousands separator (without the comma, 1.000)
        if re.fullmatch(r"\d{1,4}(?:[.,]\d{1,3})?", number):  # a comma is read as parse_number reads it
            readings.setdefault(number, []).append(min(w.conf for w in words))
        if any(len(v) >= 2 for v in readings.values()):
            break
    agreed = [n for n, confs in readings.items() if len(confs) >= 2]
    if not agreed:
        return None
    return Word(agreed[0] + unit, min(readings[agreed[0]]), x0, y0, x1 - x0, y1 - y0, by_glyphs=True)


def lines_of(words: list[Word]) -> list[list[Word]]:
    """Words grouped into text lines (by vertical overlap), each sorted left to right."""
    lines: list[list[Word]] = []
    for w in sorted(words, key=lambda w: (w.cy, w.left)):
        for line in lines:
            line_h = float(statistics.median([x.height for x in line]))
            line_cy = float(statistics.median([x.cy for x in line]))
            # a word swollen by a bar it ran into counts as at most 1.3 lines tall, so that it
            # does not pull in the line above
            if abs(w.cy - line_cy) <= 0.6 * max(line_h, min(w.height, 1.3 * line_h), 4):
                line.append(w)
                break
        else:
            lines.append([w])
    return [sorted(line, key=lambda w: w.left) for line in lines]


# ---- parsing -----------------------------------------------------------------------------

_MU = "µμupyTdjaz"
_JUNK = "jpy\\[(|'\"\u201c\u201d°"  # a mark Tesseract puts before the u it reads for µ
_QTY = re.compile(
    r"(?<![\w.])(?P<num>[TL](?=[" + _MU + r"]m)|[0-9OoIl|SB]{1,4}(?:[.,][0-9Oo]{1,3})?)\s*\.?"  # 'Tum': a 1; '200.um'
    r"(?P<unit>(?:[" + _JUNK + r"]?[µμu]|[" + _MU + r"])m|nm|mm|m)(?P<star>\*?)(?![A-Za-z])"  # 'jum', '"um': µm
)
_FIELD_LABELS = re.compile(
    r"((WD|Width|Height|HFW|VFW|FOV|Focus|Aperture|Size|Pixel|Field|View|Depth|Stage|Dist)\s*[:=]?"
    r"|\b[XYZ]\s*[:=]|(?<![\dk.]\s)(?<![\dk.])\b[XYZ])\s*$",  # a stage axis, not the X ending '1.00 K X'

    re.IGNORECASE,
)


@dataclass
class Label:
    value: float
    unit: str
    text: str
    guessed_unit: bool  # µ inferred from a look-alike (p, y, T, d, j)
    words: list[Word]

    @property
    def conf(self) -> float:
        return float(np.mean([w.conf for w in self.words])) if self.words else 0.0

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (min(w.left for w in self.words), min(w.top for w in self.words),
                max(w.left + w.width for w in self.words), max(w.top + w.height for w in self.words))


_LOOKALIKES = "OoIl|SBTL"  # what Tesseract reads for 0, 0, 1, 1, 1, 5, 8, 1, 1 in a label's number


def _fix_digits(num: str) -> str:
    return num.translate(str.maketrans(_LOOKALIKES, "001115811"))


_HEADER = re.compile(r"^(WD|HFW|VFW|FOV|Width|Height|Focus|Aperture|pressure|Depth)$", re.IGNORECASE)


def _under_field_header(label_words: list[Word], words: list[Word]) -> bool:
    """FEI-style cells: a value under a 'WD'/'HFW' header word is that field, not the scale."""
    lx0 = min(w.left for w in label_words)
    lx1 = max(w.left + w.width for w in label_words)
    ly0 = min(w.top for w in label_words)
    lh = max(w.height for w in label_words)
    for w in words:
        if _HEADER.match(w.text.strip(":=")) and w.top < ly0 and ly0 - (w.top + w.height) < 2.5 * lh:
            if w.left < lx1 and w.left + w.width > lx0 - 0.5 * lh:
                return True
    return False


def _phrases(line: list[Word]) -> list[list[Word]]:
    """A text line cut where words stand far apart (separate cells of a data bar), so that a
    'WD' in one cell never claims the number in another."""
    out: list[list[Word]] = [[line[0]]] if line else []
    for prev, w in zip(line, line[1:]):
        if w.left - (prev.left + prev.width) > 2.5 * max(prev.height, w.height, 6):
            out.append([w])
        else:
            out[-1].append(w)
    return out


def find_labels(words: list[Word]) -> list[Label]:
    """Length quantities ('200 nm', '1 µm', '10.0um') in reading order, other fields excluded."""
    labels = []
    for line in (p for ln in lines_of(words) for p in _phrases(ln)):
        # join the phrase keeping word boundaries, remember which word each character came from
        text, owner = "", cast(list[Word | None], [])
        for w in line:
            if text:
                text += " "
                owner.append(None)
            text += w.text
            owner.extend([w] * len(w.text))
        for m in _QTY.finditer(text):
            before = text[: m.start()]
            if re.search(r"\d\s$", before):
                continue  # '2 5µm': a decimal point lost between two digits, not a 5 µm label
            if _FIELD_LABELS.search(before) or re.search(r"(WD|HFW|FOV|Width|VFW)\s*[:=]?\s*\S{0,3}\s*$", before):
                continue
            num = _fix_digits(m.group("num"))
            if not re.fullmatch(r"\d+(?:[.,]\d+)?", num):
                continue
            unit_raw = m.group("unit")
            guessed = m.group("num") in ("T", "L")  # 'Tum', 'Lum': the number itself is a look-alike of 1
            if unit_raw not in ("nm", "mm", "m"):
                guessed = guessed or unit_raw not in ("µm", "μm", "um")  # a look-alike, or a stray mark before it
                unit_raw = "µm"
            unit = normalise_unit(unit_raw)
            value = parse_number(num)  # '1,000 nm' is a thousand nanometres, '0,5 µm' half a micrometre
            if unit is None or value is None or value <= 0:
                continue
            if unit == "m":
                continue  # a bare 'm' is never a scale-bar unit on an SEM
            ws = sorted({id(o): o for o in owner[m.start():m.end()] if o is not None}.values(), key=lambda w: w.left)
            if _under_field_header(ws, words):
                continue
            labels.append(Label(value, unit, m.group(0).strip(), guessed, ws))
    return labels


# ---- other fields of the data bar --------------------------------------------------------

_VENDORS = [
    ("Zeiss", re.compile(r"ZEISS|Signal A|EHT\s*=|Mag\s*=|Photo No", re.I)),
    ("FEI/Thermo", re.compile(r"\bHFW\b|\bdwell\b|\bdet\b.*\bmode\b|Helios|Quanta|Teneo|Nova|Apreo", re.I)),
    ("TESCAN", re.compile(r"TESCAN|View field|SEM HV|SEM MAG|Det:?\s*(SE|BSE|In-?Beam)", re.I)),
    ("Hitachi", re.compile(r"\bTM[1-4]\d{3}\b|\bSU\d{3,4}\b|Hitachi|\bS-\d{4}\b", re.I)),
    ("JEOL", re.compile(r"JEOL|\bSEI\b|\bLEI\b|\bCOMPO\b|\bLABE\b|\bJSM\b", re.I)),
]


def parse_fields(text: str) -> dict:
    f: dict = {}
    t = text.replace("\u03bc", "\u00b5").replace("\u00a5", "V")  # Tesseract reads JEOL's 'kV' as 'k¥'
    m = re.search(r"Mag\s*[=:]?\s*(\d[\d.,]*\s*[kK]?\s*[xX]\b|\d[\d.,]*\s*[kK]?x)", t) or \
        re.search(r"(?<![\w.])[xX×](\d[\d.,]*[kK]?)(?![\w.])", t) or \
        re.search(r"(?<![\w.,])(\d{1,3}(?:[ ,]\d{3})+\s*[xX]|\d[\d.,]*\s*[kK]?\s*[xX])(?![\w])", t)
    if not m:  # JEOL writes 'X3,500'; Tesseract often drops the X
        m = re.search(r"(?<![\w.,])(\d{1,3},\d{3})(?![\w.,])", t)
    if m:
        f["mag"] = m.group(1).strip()
    m = re.search(r"(?<![\w.@])(\d+(?:[.,]\d+)?)\s*ke?V", t, re.I)
    if m and 0.01 <= float(m.group(1).replace(",", ".")) <= 400:  # '10.0@0kV' is no 0 kV beam
        f["hv_kv"] = float(m.group(1).replace(",", "."))
    m = re.search(r"WD\s*[=:]?\s*(\d+(?:[.,]\d+)?)\s*(mm|[µu]m)", t)
    if m:
        v = float(m.group(1).replace(",", "."))
        f["wd_mm"] = v if m.group(2) == "mm" else v / 1000
    m = re.search(r"(?:Signal\s*A|Detector|Det)\s*[=:]?\s*([A-Za-z][\w-]*)", t)
    if m:
        f["detector"] = m.group(1)
    else:
        m = re.search(r"\b(SEI|LEI|BSE|BSD|SE2|InLens|ETD|TLD|CBS|SE)\b", t)
        if m:
            f["detector"] = m.group(1)
    m = re.search(r"\b(\d{4}[/.-]\d{1,2}[/.-]\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"
                  r"|\d{1,2}\s+[A-Z][a-z]{2}\s+\d{4})\b", t)
    if m:
        f["date"] = m.group(1)
    for vendor, pattern in _VENDORS:
        if pattern.search(t):
            f["vendor"] = vendor
            break
    m = re.search(r"(?:HFW|FOV|Width|View field)\s*[=:]?\s*(\d+(?:[.,]\d+)?)\s*(?:x\s*[\d.,]+\s*)?(nm|[µu]m|mm)", t)
    if m:
        f["field_width"] = f"{m.group(1)} {normalise_unit(m.group(2)) or m.group(2)}"
    return f


def unit_shape(clean: np.ndarray) -> str | None:
    """What the end of an isolated label (dark on white) looks like: 'µ' when it ends in an
    x-height m after a glyph that descends below the baseline, 'm' when it ends in an m after
    glyphs that do not, None when it does not end in an m at all."""
    bw = (clean < 128).astype(np.uint8)
    glyphs = _glyph_boxes(bw)
    if len(glyphs) < 3:
        return None
    m, u, first = glyphs[-1], glyphs[-2], glyphs[0]
    xh = m[3] - m[1]
    if xh < 4 or (m[2] - m[0]) < 0.9 * xh or (first[3] - first[1]) < 1.15 * xh:
        return None
    if u[3] - m[3] >= 0.2 * xh and u[1] >= m[1] - 0.25 * xh:
        return "µ"  # descends below the baseline, starts at x-height
    if u[1] >= m[1] - 0.25 * xh and abs(u[3] - m[3]) <= 0.15 * xh:
        return "m"  # an x-height letter on the baseline: n, u (read for µ?) or m
    return None  # a digit or merged glyphs: nothing to tell


def decimal_point(clean: np.ndarray) -> int | None:
    """Where an isolated label (dark on white) has a decimal point: the number of glyphs left of
    a small mark that sits on the digits' baseline between two of them, or None. Tesseract often
    drops such a point ('2.5 µm' read as '25 µm', and both are round values)."""
    bw = (clean < 128).astype(np.uint8)
    n, _, st, _ = cv2.connectedComponentsWithStats(bw, connectivity=8)
    comps = [[int(v) for v in st[i]] for i in range(1, n) if st[i][4] >= 2]
    if len(comps) < 3:
        return None
    hd = max(c[3] for c in comps)
    tall = sorted((c for c in comps if c[3] >= 0.6 * hd), key=lambda c: c[0])
    if len(tall) < 2 or hd < 8:
        return None
    glyphs: list[list[int]] = []  # tall marks overlapping in x are one glyph
    for x, y, w, h, _ in tall:
        if glyphs and x < glyphs[-1][1] - 1:
            glyphs[-1][1] = max(glyphs[-1][1], x + w)
            glyphs[-1][2] = max(glyphs[-1][2], y + h)
        else:
            glyphs.append([x, x + w, y + h])
    baseline = float(np.median([g[2] for g in glyphs[:2]]))  # the number comes first
    for x, y, w, h, area in comps:
        if h > 0.3 * hd or w > 0.3 * hd or w < 0.06 * hd or area < 0.4 * w * h:
            continue
        if abs(y + h - baseline) > max(1.5, 0.12 * hd):
            continue
        left = sum(g[1] <= x for g in glyphs)
        if not 0 < left < len(glyphs) or glyphs[left][0] < x + w:
            continue
        gap = glyphs[left][0] - glyphs[left - 1][1]
        others = [b[0] - a[1] for a, b in zip(glyphs, glyphs[1:]) if b is not glyphs[left]]
        # clear of both neighbours, in a gap the point widens well beyond the narrowest other one
        # (a speck in the ordinary gap between two digits is no point)
        if gap >= w + 2 and (not others or gap >= 2 * max(1, min(others)) + w):
            return left
    return None


_HOPE = re.compile("[0-9" + re.escape(_LOOKALIKES) + "m]")  # a digit, a look-alike of one, or a unit's m


def _agrees(words: list[Word], shape: str | None) -> bool:
    labels = find_labels(words)
    if not labels:
        return False
    return shape != "µ" or labels[-1].unit == "µm"  # a descender proves a µ; its absence is weaker evidence


def read_clean_line(clean: np.ndarray, origin: tuple[int, int]) -> tuple[list[Word], bool | None]:
    """A line of glyphs already isolated (dark on white, see databar.label_lines) read as one
    text line, and whether a second reading agreed with it.

    Tesseract's reading of a short label changes with the glyph height it is given, so it is
    read at 36 and 48 px glyph height (and 24 px when neither gives a label whose unit agrees
    with the glyphs' shapes: a µ descends below the baseline, and read as n it is rejected);
    failing that, glyph by glyph (:func:`read_label_glyphs`). A first reading of some text with no
    digit, no look-alike of one and no m, of glyphs that do not end in an m, is specimen: it is not
    read again (most lines next to a plain image's bar candidates are). The agreement is True when two
    readings give the same label, False when they give different ones, None when only one did.
    """
    h, w = clean.shape
    pad = max(4, h // 3)
    img = cv2.copyMakeBorder(clean, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=255)
    ox, oy = origin[0] - pad, origin[1] - pad
    shape = unit_shape(clean)
    first: list[Word] | None = None
    good: list[list[Word]] = []
    for height, psm in ((36, 7), (48, 8), (24, 7)):
        if len(good) == 2 or (good and height == 24):
            break
        words = read_words(img, (ox, oy), scale=float(np.clip(height / max(h, 1), 0.5, 8.0)), psm=psm)
        first = words if first is None else first
        if _agrees(words, shape):
            good.append(words)
        elif height == 36 and shape is None and words and not _HOPE.search("".join(w.text for w in words)):
            return words, None  # no digit, no look-alike of one and no m: specimen, not a label
    if good:
        if len(good) == 1:
            return good[0], None
        a, b = (find_labels(g)[-1] for g in good)
        return good[0], (a.value, a.unit) == (b.value, b.unit)

    glyph_read = read_label_glyphs(img, (pad, pad, pad + w, pad + h)) if shape is not None else None
    if glyph_read is not None:
        glyph_read.left += ox
        glyph_read.top += oy
        return [glyph_read], None
    return ([] if first is None or find_labels(first) else first), None  # a label its glyphs contradict is none
