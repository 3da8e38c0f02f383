"""The scale read from the image's own pixels: the instrument's data bar, a label panel, or a
bar drawn over the image (OpenCV for the bars, Tesseract for the text).

:func:`read_ocr` finds the data bar (:mod:`services.scale.databar`), reads it whole, and where
that gives no confident reading reads the text next to the candidate bars again blob by blob
(a label whose µ ruins the word, glyph by glyph). :func:`interpret` pairs a label with its bar
and sets a raw score from the checks that could be made: magnification, printed field width,
round value (:mod:`services.scale.calibration` turns it into a probability, per path). Where
the data bar gives no confident reading, data panels elsewhere in the frame are read the same
way; without either, label panels and bars over the image, whose label is read from its
glyphs alone (:func:`read_overlay`). ``notes['path']`` says which: data bar, panel, overlay.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.scale import ocr
from services.scale.databar import (
    Bar,
    TextLine,
    bar_regions,
    find_bars,
    find_databar,
    find_panels,
    inked_part,
    label_lines,
    overlay_bars,
    overlay_masks,
    panel_around,
    text_blobs,
    thin_bars,
)
from services.scale.units import nice_value, parse_length, to_nm


@dataclass
class OcrReading:
    scale_value: float | None = None
    scale_unit: str | None = None
    bar_px: float | None = None
    pixel_size_nm: float | None = None
    confidence: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    databar_box: list[int] | None = None
    label_text: str | None = None
    reason: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # how it was read (for detail, not search)


def _bar_line(bar: Bar) -> list[float]:
    """[x0, y, x1] of the measured length, in image pixels (drawn by the console's scale overlay)."""
    return [round(float(bar.x0), 1), int(bar.y), round(float(bar.x1), 1)]


def _box_gap(box: tuple[float, float, float, float], bar: Bar) -> float:
    """Distance between a box (x0, y0, x1, y1) and a bar's box (0 when they touch or overlap)."""
    dx = max(0.0, bar.left - box[2], box[0] - bar.right)
    dy = max(0.0, bar.top - box[3], box[1] - bar.bottom)
    return float(np.hypot(dx, dy))


def _inside_text(bar: Bar, words: list[ocr.Word]) -> bool:
    """A 'bar' lying within a word's box is a glyph stroke (=, -, T), not a scale bar."""
    for w in words:
        if sum(ch.isalnum() for ch in w.text) < 2 or any(ch in w.text for ch in "-_—–|"):
            continue
        if (w.left - 2 <= bar.left and bar.right <= w.left + w.width + 2
                and w.top + 0.15 * w.height <= bar.y <= w.top + 0.85 * w.height
                and bar.length <= 0.6 * w.width):
            return True
    return False


def _pair(labels: list[ocr.Label], bars: list[Bar], mag: float | None = None,
          width: int = 0) -> tuple[ocr.Label | None, Bar | None]:
    best: tuple[ocr.Label | None, Bar | None] = (None, None)
    best_score: float | None = None
    for lab in labels:
        lh = max(6.0, lab.box[3] - lab.box[1])
        lx0, ly0, lx1, ly1 = lab.box
        for bar in bars:
            d = _box_gap(lab.box, bar)
            if d > 4.5 * lh + 10 or bar.length < 0.8 * lh:
                continue
            if bar.kind in ("capped", "half") and bar.length <= 0.6 * (lx1 - lx0) \
                    and lx0 - 2 <= bar.left and bar.right <= lx1 + 2 and ly0 - 2 <= bar.top and bar.bottom <= ly1 + 2:
                continue  # an 'm' or 'n' of the label itself, not a bar the words ran into
            score = d / lh - (0.5 if bar.kind in ("capped", "ruler") else 0.0) - min(bar.length, 400) / 400
            ratio = mag_ratio(to_nm(lab.value, lab.unit) / bar.length, mag, width) if mag else None
            if ratio is not None:
                score += 0.0 if 0.3 <= ratio <= 3.5 else 3.0
            if best_score is None or score < best_score:
                best, best_score = (lab, bar), score
    if best[0] is None and labels:
        return labels[0], None
    return best


# Magnification is defined against a reference display width; 127 mm (Polaroid 545) is the
# classic one, modern instruments use 100–300 mm. Enough to tell µm from mm or nm.
MAG_REFERENCE_NM = 127e6


def parse_mag(text: str | None) -> float | None:
    """'X3,500' -> 3500, 'x10.0k' -> 10000, '50.00 K X' -> 50000, '35 000 x' -> 35000."""
    if not text:
        return None
    m = re.search(r"(\d[\d\s.,]*)\s*([kK])?", text)
    if not m:
        return None
    num = m.group(1).strip().replace(" ", "")
    if re.fullmatch(r"\d{1,3}([.,]\d{3})+", num) and not m.group(2):
        num = num.replace(",", "").replace(".", "")  # 'X31,750' (or its comma read as a point): thousands
    num = num.replace(",", ".")
    try:
        value = float(num)
    except ValueError:
        return None
    if m.group(2):
        value *= 1000
    return value if 5 <= value <= 5e6 else None  # below 5× the number was misread (no SEM goes lower)


def mag_ratio(pixel_size_nm: float, mag: float | None, width: int) -> float | None:
    """Measured pixel size ÷ the one the magnification implies (≈1 when consistent)."""
    if not mag or not pixel_size_nm:
        return None
    return pixel_size_nm / (MAG_REFERENCE_NM / mag / width)


def _field_width_px(fields: dict, width: int) -> float | None:
    q = parse_length(fields.get("field_width", "")) if fields.get("field_width") else None
    return to_nm(*q) / width if q else None


_DIGIT_LOOKALIKES = str.maketrans({"O": "0", "o": "0", "I": "1", "l": "1", "|": "1", "i": "1", "T": "1",
                                   "S": "5", "B": "8"})
_NOT_A_LABEL = re.compile(r"(kV|KV|k¥|kv|WD|HFW|FOV|mag)", re.I)


def label_from_mag(words: list[ocr.Word], bars: list[Bar], mag: float | None,
                   width: int, px_ref_nm: float | None = None) -> tuple[ocr.Label, Bar, float] | None:
    """A fallback when no 'number + unit' was legible: the number printed next to the scale bar,
    with the unit the magnification implies.

    Tesseract often mangles µ beyond recognition ('104m', 'Tum', '1am'). The digits next to the
    bar (and their prefixes: '104m' may be '10' + a µ read as '4') are tried with nm, µm and mm;
    a candidate is kept only when it is a round bar length and agrees with the magnification
    (or, given ``px_ref_nm``, the pixel size of a printed field width) within a factor of 2.
    The result is always flagged as guessed (low confidence).
    """
    if mag is not None and mag < 5:  # below 5× the magnification itself was misread
        mag = None
    if (not mag and not px_ref_nm) or not bars:
        return None
    best = None
    for bar in bars[:3]:
        for i, w in enumerate(words):
            lh = max(6.0, float(w.height))
            far = _box_gap((w.left, w.top, w.left + w.width, w.top + w.height), bar) > 3.0 * lh + 10
            if far or _NOT_A_LABEL.search(w.text) or re.search(r"\d,\d{3}", w.text):
                continue  # another field, or a magnification such as '10,000'
            if i > 0 and re.fullmatch(r"(WD|HFW|FOV|X|x)[:=]?", words[i - 1].text.strip()):
                continue
            m = re.match(r"^[(\[]?([0-9OoIl|iTSB]{1,4})", w.text)
            if not m:
                continue
            digits = m.group(1).translate(_DIGIT_LOOKALIKES)
            rest = w.text[m.end():]
            if not digits.isdigit() or rest.startswith(".") or len(rest) > 3 or (rest and not rest.endswith("m")):
                continue  # a word ('listry'), a decimal ('3.1mm'), or not a mangled unit after the digits
            for n in range(len(digits), 0, -1):
                value = float(digits[:n])
                if not nice_value(value):
                    continue
                for unit in ("nm", "µm", "mm"):
                    px = to_nm(value, unit) / bar.length
                    ratio = px / px_ref_nm if px_ref_nm else mag_ratio(px, mag, width)
                    if ratio is not None and 0.5 <= ratio <= 2.0:
                        score = abs(np.log(ratio))
                        if best is None or score < best[2]:
                            best = (ocr.Label(value, unit, w.text, True, [w]), bar, score)
    return best


def _covered(word: ocr.Word, blobs: list[tuple[int, int, int, int]]) -> bool:
    area = max(1, word.width * word.height)
    for x0, y0, x1, y1 in blobs:
        ix = min(word.left + word.width, x1) - max(word.left, x0)
        iy = min(word.top + word.height, y1) - max(word.top, y0)
        if ix > 0 and iy > 0 and ix * iy >= 0.3 * area:
            return True
    return False


def _read_blobs(gray: np.ndarray, blobs: list[tuple[int, int, int, int]]) -> list[ocr.Word]:
    """Each text blob read on its own; a blob that looks like a label whose µ ruined the word
    is read again glyph by glyph."""
    out: list[ocr.Word] = []
    for b in blobs:
        found = ocr.read_blob(gray, b)
        text = "".join(wd.text for wd in found)
        if not ocr.find_labels(found) and len(text) <= 6 and (not text or text.endswith("m")) \
                and not _NOT_A_LABEL.search(text):
            glyph_read = ocr.read_label_glyphs(gray, b)
            found = [glyph_read] if glyph_read is not None else found
        out += found
    return out


def _line_of(blob: tuple[int, int, int, int], blobs: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The blob grown by its neighbours on the same text line (a number and its unit set apart
    by a wide space, '500 nm')."""
    x0, y0, x1, y1 = blob
    grown = True
    while grown:
        grown = False
        for b in blobs:
            h, bh = y1 - y0, b[3] - b[1]
            overlap = min(y1, b[3]) - max(y0, b[1])
            gap = max(b[0] - x1, x0 - b[2])
            if (b[0] < x0 or b[2] > x1) and overlap >= 0.6 * min(h, bh) and 0.6 <= bh / h <= 1.6 \
                    and gap <= 0.9 * max(h, bh):
                x0, y0, x1, y1 = min(x0, b[0]), min(y0, b[1]), max(x1, b[2]), max(y1, b[3])
                grown = True
    return x0, y0, x1, y1


def _blobs_near(blobs: list[tuple[int, int, int, int]], bars: list[Bar],
                per_bar: int = 3) -> list[tuple[int, int, int, int]]:
    """The text lines nearest to each bar (at most ``per_bar`` each, within 2.5 line heights)."""
    chosen: list[tuple[int, int, int, int]] = []
    for bar in bars:
        near = sorted((b for b in blobs if _box_gap(b, bar) <= 2.5 * (b[3] - b[1]) + 5
                       and (b[2] - b[0]) <= 20 * (b[3] - b[1])), key=lambda b: _box_gap(b, bar))
        for b in near[:per_bar]:
            line = _line_of(b, blobs)
            if line not in chosen:
                chosen.append(line)
    return chosen


def targeted_words(gray: np.ndarray, box: tuple[int, int, int, int], bars: list[Bar],
                   words: list[ocr.Word], blobs: list[tuple[int, int, int, int]] | None = None) -> list[ocr.Word]:
    """The data bar's words with those next to the likeliest scale bars read again, each text
    blob on its own (segmented, the bar's strokes removed, normalised glyph height)."""
    chosen = _blobs_near(blobs if blobs is not None else text_blobs(gray, box, bars[:3]), bars[:3])
    if not chosen:
        return words
    return [wd for wd in words if not _covered(wd, chosen)] + _read_blobs(gray, chosen)


def read_zone(gray: np.ndarray, box: tuple[int, int, int, int], image_width: int, panel: bool = False) -> OcrReading:
    """A data bar (or a label panel): read whole once; where that gives no confident reading,
    the text next to the candidate bars is read again blob by blob, and the more confident of
    the two readings is kept."""
    bars = find_bars(gray, box, max_share=0.98 if panel else 0.9)
    blobs = text_blobs(gray, box, bars[:3])
    x0, y0, x1, y1 = box
    crop = gray[y0:y1, x0:x1]
    scale = 3.0 if (y1 - y0) < 90 else 2.0
    words = ocr.read_words(crop, (x0, y0), scale=scale)
    fields = ocr.parse_fields(_text_of(words))
    r = interpret(words, bars, fields, image_width, box)
    if bars and r.confidence < 0.9:
        again = targeted_words(gray, box, bars, words, blobs)
        if again is not words:
            fields2 = {**fields, **ocr.parse_fields(_text_of(again))}  # the targeted crops read better
            r2 = interpret(again, bars, fields2, image_width, box)
            if r2.confidence > r.confidence:
                r2.notes["read"] = "targeted crops"
                r = r2
    return r


def _read_panel(gray: np.ndarray, panel: tuple[int, int, int, int], image_width: int) -> OcrReading:
    """A label panel (a bar and its label on a filled box over the image), read as a small data bar."""
    r = read_zone(gray, panel, image_width, panel=True)
    r.databar_box = None
    r.notes["panel_box"] = list(panel)
    r.notes["path"] = "panel"
    return r


def _round_value(r: OcrReading) -> float:
    """A label over the image read as a value no bar is drawn at ('306 nm', '2004 µm', '3500 nm':
    a 0 read as 6, a µ as '4u', a speck as a digit) replaced by the one round value a single such
    slip gives, if there is exactly one; a change of the raw score (a guess costs)."""
    if r.scale_value is None or nice_value(r.scale_value):
        return 0.0
    digits = f"{r.scale_value:g}"
    if not digits.isdigit():
        return 0.0
    cands = {digits[:i] + "0" + digits[i + 1:] for i in range(1, len(digits)) if digits[i] in "689"}
    nice = sorted({float(c) for c in cands if nice_value(float(c))})
    if not nice and len(digits) >= 3:
        # one glyph too many at the end (a µ read as '4u') or at the start (a speck before the
        # label read as a digit: '3500 nm', '220 µm'), where only one of them is round
        # (a leading 1 is kept: '150 nm' and '1200 nm' are labels too)
        ends = {float(d) for d in (digits[:-1],) + ((digits[1:],) if digits[0] != "1" else ())
                if d[0] != "0" and nice_value(float(d))}
        nice = sorted(ends)
    if len(nice) != 1:
        return 0.0
    r.notes["value_corrected_from"] = r.scale_value
    r.scale_value = nice[0]
    if r.bar_px and r.scale_unit:
        r.pixel_size_nm = to_nm(r.scale_value, r.scale_unit) / r.bar_px
    return 0.25 - 0.15  # interpret took 0.25 off for a value that is not round; a guess costs 0.15


def _restore_point(r: OcrReading, digits_before: int | None) -> None:
    """A label read without the decimal point its glyphs show ('25 µm' where '2.5 µm' is drawn)
    given the point back (:func:`ocr.decimal_point` finds it), where the value is then still round;
    not one read with a separator of its own (the comma of '1,000 nm' is such a mark too)."""
    if r.scale_value is None or digits_before is None:
        return
    if r.label_text and re.search(r"\d[.,\u2009\u202f]\d", r.label_text):
        return  # the label was read with its own point or thousands separator: that is the mark ('1,000 nm')
    digits = f"{r.scale_value:g}"
    if not digits.isdigit() or digits_before >= len(digits):
        return
    value = float(digits[:digits_before] + "." + digits[digits_before:])
    if not nice_value(value):  # (a round value stays round by a power of ten: the point's own evidence decides)
        return
    r.notes["decimal_point_restored"] = r.scale_value
    r.scale_value = value
    if r.bar_px and r.scale_unit:
        r.pixel_size_nm = to_nm(value, r.scale_unit) / r.bar_px


def _overlay_checks(gray: np.ndarray, bar: Bar, line: TextLine, notes: dict[str, Any]) -> float:
    """What a bar drawn over the image and its label say about the reading (a change of the raw
    score): a label above or below is centred on the whole bar, one beside it starts right at
    its end; a bar whose ends run on in its own colour is a piece of something longer (a bar
    merged with specimen, measured short)."""
    delta = 0.0
    lx0, ly0, lx1, ly1 = line.box
    lh = max(1, ly1 - ly0)
    length = max(1.0, bar.right - bar.left)
    if line.where in ("above", "below"):
        off = abs((lx0 + lx1) / 2 - bar.cx) / length
        delta += 0.05 if off <= 0.06 else (-0.3 if off > 0.15 else 0.0)
        notes["label_offset"] = round(off, 3)
    else:
        gap = (lx0 - bar.right) if line.where == "right" else (bar.left - lx1)
        delta += -0.2 if gap > 1.5 * lh else 0.0
    H, W = gray.shape
    core = float(np.median(gray[bar.y, bar.left:bar.right]))
    ran_on = 0
    for x in (bar.left - 3, bar.right + 2):
        if 0 <= x < W and abs(float(gray[bar.y, x]) - core) <= 30:
            ran_on += 1
    if ran_on:
        notes["bar_runs_on"] = ran_on
        delta -= 0.25 * ran_on
    return delta


WEAK_LABEL = 0.7  # a label read over the image with a lower raw score is compared with the other lines


def _label_candidates(gray: np.ndarray, bar: Bar, white: bool) -> Iterator[TextLine]:
    """A bar's label lines, likeliest first: at the usual threshold, then (only if the loop asks
    for more) at the strict one, where glyphs come apart from specimen nearly as bright, then at
    the loose one, where JPEG-dimmed thin strokes stay whole; a line rendered exactly as one already
    read (the same box and glyphs) is not read again."""
    seen: set[bytes] = set()
    for threshold in ({}, {"strict": True}, {"loose": True}):
        for line in label_lines(gray, bar, white=white, **threshold):
            key = line.clean.tobytes() + bytes(str(line.box), "ascii")
            if key not in seen:  # the same glyphs at another threshold: read once
                seen.add(key)
                yield line


def read_overlay(gray: np.ndarray, bars: list[Bar]) -> OcrReading:
    """No data bar: a scale bar drawn over the image, its label in the blobs right next to it."""
    h, w = gray.shape
    best = OcrReading(reason="no data bar and no labelled scale bar found")
    for k, bar in enumerate(bars):
        pad_x = int(max(bar.right - bar.left, 60))
        pad_y = int(max(30, 0.6 * (bar.right - bar.left)))
        region = (max(0, bar.left - pad_x), max(0, bar.top - pad_y),
                  min(w, bar.right + pad_x), min(h, bar.bottom + pad_y))
        ink = 255 if gray[bar.y, int(bar.cx)] >= 128 else 0  # labels are drawn in the bar's colour
        candidates = []
        for line in _label_candidates(gray, bar, white=ink == 255):
            words, agreed = ocr.read_clean_line(line.clean, (line.box[0], line.box[1]))
            if ocr.find_labels(words):
                r = interpret(words, [bar], {}, w, None)
                r.notes["label_place"] = line.where
                r.notes["path"] = "overlay"
                delta = 0.0
                if agreed is not None:  # two readings at different glyph heights: the same label or not
                    r.notes["readings_agree"] = agreed
                    delta += 0.1 if agreed else -0.2
                delta += _overlay_checks(gray, bar, line, r.notes)
                _restore_point(r, ocr.decimal_point(line.clean))
                delta += _round_value(r)
                if r.scale_unit == "µm" and ocr.unit_shape(line.clean) == "m":
                    r.notes["unit_shape"] = "no descender for a µ"  # an n read as µ would be 1000× off
                    delta -= 0.25
                if line.crowded:
                    r.notes["label_crowded"] = True  # a glyph may be missing: look on, at the strict threshold
                    delta -= 0.2
                r.confidence = float(np.clip(r.confidence + delta, 0.0, 0.99))
                candidates.append(r)
                if not line.crowded and r.confidence >= WEAK_LABEL:
                    break  # else look on: a likelier line, or the strict threshold, may read better
        labels = [(r.scale_value, r.scale_unit) for r in candidates]
        for r in candidates:
            if labels.count((r.scale_value, r.scale_unit)) >= 2:  # two lines or thresholds read the same label
                r.notes["lines_agree"] = True
                r.confidence = float(min(0.99, r.confidence + 0.1))
        if not candidates and k == 0:
            # the marks next to the longest bar read one by one; beside the others this cost a textured
            # plain image more than all the rest and changed no reading of the 1,680 tuning composites
            words = _read_blobs(gray, _blobs_near(text_blobs(gray, region, [bar], ink=ink), [bar]))
            candidates = [interpret(words, [bar], ocr.parse_fields(_text_of(words)), w, None)] if words else []
            for r in candidates:
                r.notes["path"] = "overlay"
        panel = panel_around(gray, bar)
        if panel is not None:  # the bar and its label on a box of their own
            candidates.append(_read_panel(gray, panel, w))
        for r in candidates:
            if r.scale_value is not None and (best.scale_value is None or r.confidence > best.confidence):
                best = r
    if best.scale_value is None and bars:
        best.bar_px = round(bars[0].length, 1)
    return best


def read_ocr(gray: np.ndarray) -> OcrReading:
    """The scale from the burned-in data bar; where that gives no confident reading, from a data
    panel elsewhere in the frame; without either, from a label panel or a bar drawn over the image.
    ``databar_box`` is the data bar at the bottom whenever there is one (what a classifier crops
    away); a panel elsewhere in the frame is in ``notes['panel_box']``."""
    box = find_databar(gray)
    r = _read_ocr(gray, box)
    if box is not None:
        r.databar_box = list(box)
    return r


def _read_ocr(gray: np.ndarray, box: tuple[int, int, int, int] | None) -> OcrReading:
    h, w = gray.shape
    best = OcrReading(reason="no data bar and no labelled scale bar found")
    if box is not None:
        best = read_zone(gray, inked_part(gray, box), w)
        best.notes["path"] = "data bar"
        if best.scale_value is not None and best.confidence >= 0.6:
            return best
    for panel in find_panels(gray):
        if box is not None and panel[1] >= box[1] - 2:
            continue  # the data bar itself, read above
        r = _read_panel(gray, panel, w)
        if r.scale_value is not None and (best.scale_value is None or r.confidence > best.confidence):
            best = r
        if best.confidence >= 0.9:
            return best
    if best.scale_value is not None and best.confidence >= 0.6:
        return best
    panels: list[tuple[int, int, int, int]] = []
    # bars over the image lie above a data bar (one with a label read: else it may be no data bar)
    top = box[1] if box is not None and best.scale_value is not None else h
    masks = overlay_masks(gray)  # near-white, near-black
    regions = [bar_regions(m, max(12, int(0.012 * w))) for m in masks]
    bars = sorted((b for m, rg in zip(masks, regions) for b in overlay_bars(gray, m, panels=panels, regions=rg)
                   if b.bottom < top and _inside_frame(b)), key=lambda b: -b.length)
    panels = [p for p in panels if p[3] <= top]
    for panel in sorted(panels, key=lambda p: -p[3])[:2]:  # lowest first
        r = _read_panel(gray, panel, w)
        if r.scale_value is not None and (best.scale_value is None or r.confidence > best.confidence):
            best = r
    if best.confidence < 0.9:
        r = read_overlay(gray, bars[:3])
        if r.scale_value is None:  # a bar touching specimen of its own colour is one blob in the masks
            extra = [b for white, rg in zip((True, False), regions) for b in thin_bars(gray, white, rg)
                     if b.bottom < top and _inside_frame(b)
                     and all(abs(b.y - o.y) > 2 or abs(b.left - o.left) > 4 for o in bars[:3])]
            if extra:
                r2 = read_overlay(gray, sorted(extra, key=lambda b: -b.length)[:3])
                r = r2 if r2.scale_value is not None else r
        if r.scale_value is not None and r.confidence > best.confidence or best.scale_value is None:
            best = r
    return best


def _inside_frame(bar: Bar) -> bool:
    """A bar drawn over the image leaves a row of specimen above it: a run along the frame's top
    edge is the image's border (costly to read labels around, never a label). The bottom edge is
    ruled out already: a bar must end above the data bar, or above the last row (``bottom`` is
    exclusive)."""
    return bar.top > 0


def _text_of(words: list[ocr.Word]) -> str:
    return "\n".join(" ".join(x.text for x in line) for line in ocr.lines_of(words))


def interpret(words: list[ocr.Word], bars: list[Bar], fields: dict, w: int,
              box: tuple[int, int, int, int] | None) -> OcrReading:
    """A reading from the data bar's words and candidate bars: the label, the bar it belongs
    to, the pixel size, and a confidence from the checks that could be made."""
    r = OcrReading(fields=dict(fields), databar_box=list(box) if box is not None else None)
    labels = ocr.find_labels(words)
    bars = [b for b in bars if not _inside_text(b, words)]
    if not labels:
        guess = label_from_mag(words, bars, parse_mag(r.fields.get("mag")), w, _field_width_px(r.fields, w))
        if guess is None:
            r.reason = "no scale label found in the data bar" if box else "no data bar and no labelled scale bar found"
            if bars:
                r.bar_px = round(bars[0].length, 1)
            return r
        label, bar, _ = guess
        r.scale_value, r.scale_unit, r.label_text = label.value, label.unit, label.text
        r.bar_px = round(bar.length, 1)
        r.notes["bar_line"] = _bar_line(bar)
        r.pixel_size_nm = to_nm(label.value, label.unit) / bar.length
        check = mag_ratio(r.pixel_size_nm, parse_mag(r.fields.get("mag")), w)
        if check is not None:
            r.fields["mag_check"] = round(check, 3)
        r.reason = (f"label {label.text!r} illegible: number read beside the bar, unit from the "
                    f"{'printed field width' if _field_width_px(r.fields, w) else 'magnification'}")
        r.confidence = 0.4
        return r
    label, bar = _pair(labels, bars, parse_mag(r.fields.get("mag")), w)  # type: ignore[assignment]  # a label: labels
    r.scale_value, r.scale_unit, r.label_text = label.value, label.unit, label.text
    conf = 0.45
    if bar is not None:
        r.bar_px = round(bar.length, 1)
        r.notes["bar_line"] = _bar_line(bar)
        r.pixel_size_nm = to_nm(label.value, label.unit) / bar.length
        conf += 0.2
    else:
        r.reason = "scale label read but no scale bar found next to it"
    conf += 0.1 if nice_value(label.value) else -0.25
    conf += 0.1 if label.conf >= 80 else (-0.1 if label.conf < 50 else 0.0)
    if label.guessed_unit:
        conf -= 0.1
    ratio = mag_ratio(r.pixel_size_nm, parse_mag(r.fields.get("mag")), w) if r.pixel_size_nm else None
    if ratio is not None:
        r.fields["mag_check"] = round(ratio, 3)
        if 0.3 <= ratio <= 3.5:
            conf += 0.1
        else:
            # a unit misread (µm as mm, nm as µm) is off by 1000×: try the neighbouring unit
            alt_unit = {"mm": "µm", "µm": "nm" if ratio > 1 else "mm", "nm": "µm"}.get(label.unit)
            alt_ratio = ratio * (to_nm(1, alt_unit) / to_nm(1, label.unit)) if alt_unit else None
            if alt_unit is not None and alt_ratio is not None and 0.3 <= alt_ratio <= 3.5:
                r.fields["unit_corrected_from"] = label.unit
                r.scale_unit = alt_unit
                r.pixel_size_nm = to_nm(label.value, alt_unit) / bar.length if bar is not None else None
                conf = min(conf, 0.5)
            else:
                conf = min(conf, 0.2)
    elif label.unit == "mm":
        conf = min(conf, 0.4)  # mm scale bars are rare and 'µm' is often read as 'mm'
    if any(wd.by_glyphs for wd in label.words):
        # pieced together glyph by glyph: the magnification check cannot tell 1 from 2 or 5
        conf = min(conf, 0.65)
        r.notes["label"] = "read glyph by glyph"
    fw_px = _field_width_px(r.fields, w)
    if fw_px and r.pixel_size_nm:
        rel = abs(fw_px - r.pixel_size_nm) / fw_px
        r.fields["field_width_check"] = round(rel, 4)
        conf = max(conf, 0.95) if rel <= 0.03 else min(conf, 0.3)
    r.confidence = float(np.clip(conf, 0.0, 0.99))
    return r
