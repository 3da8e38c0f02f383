"""Locating the instrument's data bar and the scale bar inside it (OpenCV, NumPy).

The data bar is the flat band of text and lines at the bottom of most SEM images (bright or
dark, vendor-dependent height, :func:`find_databar`, also what a classifier crops away); the
same kind of panel may sit anywhere else in the frame (:func:`find_panels`); without either,
the scale bar may be drawn over the image (:func:`overlay_bars`, :func:`thin_bars`, its label
in :func:`label_lines`). A scale bar is a long thin horizontal line or rectangle, possibly
with end ticks, or a ruler of evenly spaced ticks (Hitachi TM). Its length is measured between
the centres of its end ticks when it has them, over its whole run otherwise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Bar:
    x0: float  # start and end of the measured length (px, image coordinates)
    x1: float
    y: int  # row of the bar's core
    top: int  # bounding box of the drawn bar (ticks included)
    bottom: int
    left: int
    right: int
    kind: str  # line | capped | ruler | half | block

    @property
    def length(self) -> float:
        return self.x1 - self.x0

    @property
    def cx(self) -> float:
        return (self.left + self.right) / 2


def _background_value(gray: np.ndarray) -> int:
    """The commonest grey level of the bottom rows: the data bar's background if there is one."""
    h = gray.shape[0]
    bottom = gray[h - max(4, h // 20):]
    hist = np.bincount(bottom.ravel(), minlength=256)
    return int(hist.argmax())


def find_databar(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the data bar at the bottom of the image, or None.

    Rows of the bar are mostly its background grey to within 4 levels (text and lines are
    sparse; a specimen, even a dark one, is noisier); the bar grows upward from the bottom while
    rows stay so, tolerating a few rows of text.
    """
    h, w = gray.shape
    if h < 40 or w < 40:
        return None
    bg = _background_value(gray)
    # a bar is flat; a dark specimen is not (|grey - bg| ≤ 4, counted per row in uint8: no int16 copies)
    near = np.count_nonzero(cv2.inRange(np.ascontiguousarray(gray), max(0, bg - 4), min(255, bg + 4)), axis=1) / w
    limit = int(h * 0.45)
    top = h
    misses = 0
    y = h - 1
    while y >= h - limit:
        if near[y] >= 0.5:
            top = y
            misses = 0
        else:
            misses += 1
            if misses > max(6, h // 60):  # a text line is at most this tall on mostly-background rows
                break
        y -= 1
    height = h - top
    if height < max(12, 0.03 * h):
        return None
    band = gray[top:]
    ink = (np.abs(band.astype(np.int16) - bg) > 60).mean()
    if ink < 0.003:
        return None
    return (0, int(top), int(w), int(h))


def inked_part(gray: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The data bar without its blank top rows: where the specimen above is as dark as a black
    bar, the band found by :func:`find_databar` starts too high; text and lines start lower."""
    x0, y0, x1, y1 = box
    band = gray[y0:y1, x0:x1].astype(np.int16)
    bg = _background_value(gray[y0:y1, x0:x1])
    rows = np.nonzero((np.abs(band - bg) > 60).sum(axis=1) >= 2)[0]
    if rows.size and rows[0] > 6:
        return x0, int(y0 + rows[0] - 3), x1, y1
    return box


def _foreground(region: np.ndarray) -> np.ndarray:
    bg = float(np.median(region))
    diff = np.abs(region.astype(np.int16) - bg)
    return (diff > max(50, 0.3 * max(bg, 255 - bg))).astype(np.uint8)


def _ticks(comp: np.ndarray, core_rows: np.ndarray) -> tuple[float | None, float | None]:
    """Centres of the end ticks rising above/below the core of a bar (None where there is none)."""
    core = np.zeros(comp.shape[0], bool)
    core[core_rows] = True
    off_core = comp[~core].sum(axis=0) if (~core).any() else np.zeros(comp.shape[1])
    tick_cols = np.nonzero(off_core >= 2)[0]
    span = comp.shape[1]
    edge = max(3, span * 0.12)
    left = tick_cols[tick_cols < edge]
    right = tick_cols[tick_cols >= span - edge]
    # a tick is narrow; a wide block at an end is a glyph touching the line, not a tick
    lt = float(left.mean()) if left.size and left.size <= max(4, span * 0.08) else None
    rt = float(right.mean()) if right.size and right.size <= max(4, span * 0.08) else None
    return lt, rt


def find_bars(gray: np.ndarray, box: tuple[int, int, int, int] | None = None,
              panels: list[tuple[int, int, int, int]] | None = None, mask: np.ndarray | None = None,
              max_share: float = 0.9) -> list[Bar]:
    """Candidate scale bars in ``box`` (default: the whole image), longest first.

    ``panels``, when given, receives the boxes of filled label panels met on the way: a
    uniform rectangle with text or a bar of the opposite colour inside (a scale bar drawn
    over the image on its own black or white box), to be read like a small data bar.
    ``mask`` (uint8, the region's shape) replaces the default foreground (ink that differs
    from the region's median grey), e.g. :func:`overlay_masks` for bars drawn over the image.
    A line longer than ``max_share`` of the region's width is a separator, not a bar (a label
    panel's bar may span almost all of it).
    """
    x0b, y0b, x1b, y1b = box or (0, 0, gray.shape[1], gray.shape[0])
    region = gray[y0b:y1b, x0b:x1b]
    rh, rw = region.shape
    mask = _foreground(region) if mask is None else mask.copy()
    mask[:1] = 0  # the first row may still be image
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_len = max(12, int(0.012 * gray.shape[1]))
    min_half = max(7, int(0.006 * gray.shape[1]))  # one end of a short bar cut in two by its label
    bars: list[Bar] = []
    halves: list[tuple[Bar, float | None, float | None, int]] = []
    small = []
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        if 1 <= w <= 6 and h >= 4 and h >= 2 * w and area >= 0.6 * w * h and y + h < rh:
            small.append((x + w / 2, y, h, y + h))
            continue
        if w < min_half or w > max_share * rw or y + h >= rh:
            continue
        comp = labels[y:y + h, x:x + w] == i
        if panels is not None and _is_panel(comp, int(area)):
            panels.append((int(x0b + x), int(y0b + y), int(x0b + x + w), int(y0b + y + h)))
            continue
        counts = comp.sum(axis=1)
        core_rows = np.nonzero(counts >= 0.85 * w)[0]
        if core_rows.size == 0 or np.ptp(core_rows) + 1 != core_rows.size:
            continue
        thick = core_rows.size
        if thick > max(3, 0.25 * w):
            # a filled block bar (some JEOL/Hitachi-style JPEG bars): solid, at least 2× as long as thick
            if area >= 0.95 * w * h and w >= 2 * h and h == thick and h <= 0.6 * rh:
                kind = _block_or_panel(region[y:y + h, x:x + w])
                if kind == "block":
                    yc = int(y0b + y + h / 2)
                    bars.append(Bar(x0b + x, x0b + x + w, yc, y0b + y, y0b + y + h, x0b + x, x0b + x + w, "block"))
                elif kind == "panel" and panels is not None and h >= 12:
                    panels.append((int(x0b + x), int(y0b + y), int(x0b + x + w), int(y0b + y + h)))
            continue
        if h > max(0.6 * w, thick + 40):
            continue
        lt, rt = _ticks(comp, core_rows)
        if w < min_len and (lt is None) == (rt is None):
            continue  # too short for a bar; only a piece with one end tick may be half of one
        yc = int(y0b + y + core_rows.mean())
        if lt is not None and rt is not None:
            bars.append(Bar(x0b + x + lt, x0b + x + rt, yc, y0b + y, y0b + y + h, x0b + x, x0b + x + w, "capped"))
        elif lt is None and rt is None:
            if h > thick + 2:
                continue  # a thick thing with strokes attached: text, not a bar
            bars.append(Bar(x0b + x, x0b + x + w, yc, y0b + y, y0b + y + h, x0b + x, x0b + x + w, "line"))
        else:
            part = Bar(x0b + x + (lt or 0), x0b + x + (rt if rt is not None else w), yc, y0b + y, y0b + y + h,
                       x0b + x, x0b + x + w, "half")
            halves.append((part, lt, rt, thick))
    bars.extend(_join_halves(halves))
    bars.extend(_rulers(small, x0b, y0b, gray.shape[1]))
    bars.sort(key=lambda b: -b.length)
    return bars


def _is_panel(comp: np.ndarray, area: int) -> bool:
    """A filled rectangle with a label inside: straight, fully drawn edges and holes (the text
    and bar of the other colour) covering part of it."""
    h, w = comp.shape
    if h < 12 or w < 1.2 * h:
        return False
    edges = (comp[0].mean(), comp[-1].mean(), comp[:, 0].mean(), comp[:, -1].mean())
    return min(edges) >= 0.9 and 0.5 <= area / (w * h) <= 0.98


def overlay_masks(gray: np.ndarray) -> list[np.ndarray]:
    """Near-white and near-black pixels: scale bars and labels drawn over the image are pure
    white or black, unlike most of the specimen's texture."""
    return [ink_mask(gray, white=True), ink_mask(gray, white=False)]


def ink_mask(gray: np.ndarray, white: bool) -> np.ndarray:
    """Near-white (≥ 225) or near-black (≤ 30) pixels, as uint8 0/1 (one array, no boolean in between)."""
    src = np.ascontiguousarray(gray)
    if white:
        return cv2.threshold(src, 224, 1, cv2.THRESH_BINARY)[1]
    return cv2.threshold(src, 30, 1, cv2.THRESH_BINARY_INV)[1]


def _block_or_panel(patch: np.ndarray) -> str | None:
    """A solid rectangle is a block bar when it is one flat colour, a label panel when ink of
    the opposite colour (text, a bar) covers part of it."""
    inner = patch[1:-1, 1:-1] if min(patch.shape) > 4 else patch  # JPEG-blurred edges aside
    base = float(np.median(inner))
    flat = np.abs(inner.astype(np.int16) - base) <= 40
    if flat.mean() >= 0.97:
        return "block"
    opposite = np.abs(patch.astype(np.int16) - (255 - base)) <= 100
    return "panel" if 0.02 <= opposite.mean() <= 0.5 else None


def _join_halves(halves: list) -> list[Bar]:
    """A capped bar interrupted by its label: a left-capped and a right-capped part on one row."""
    out = []
    lefts = [h for h in halves if h[1] is not None]
    rights = [h for h in halves if h[2] is not None]
    for lb, _, _, lthick in lefts:
        for rb, _, _, rthick in rights:
            gap = rb.left - lb.right
            if abs(lb.y - rb.y) <= 1 and lthick == rthick and 0 < gap <= 3 * (lb.length + rb.length) + 20 \
                    and 0.5 <= lb.length / max(rb.length, 1e-6) <= 2.0:  # the label sits centred in the gap
                out.append(Bar(lb.x0, rb.x1, lb.y, min(lb.top, rb.top), max(lb.bottom, rb.bottom),
                               lb.left, rb.right, "capped"))
    return out


def _rulers(ticks: list[tuple[float, int, int, int]], ox: int, oy: int, width: int) -> list[Bar]:
    """Rows of ≥ 5 evenly spaced small vertical ticks (Hitachi TM-style scale)."""
    out = []
    ticks = sorted(ticks)
    used = set()
    for i, (cx, ty, th, tb) in enumerate(ticks):
        if i in used:
            continue
        row = [(cx, ty, th, tb)]
        for j in range(i + 1, len(ticks)):
            c2, y2, h2, b2 = ticks[j]
            if abs(b2 - tb) <= 2 and c2 - row[-1][0] < 0.1 * width:
                row.append(ticks[j])
                used.add(j)
        if len(row) >= 5:
            gaps = np.diff([r[0] for r in row])
            if gaps.min() > 2 and gaps.max() <= 1.35 * np.median(gaps):
                top = min(r[1] for r in row)
                bottom = max(r[3] for r in row)
                out.append(Bar(ox + row[0][0], ox + row[-1][0], oy + int(bottom - 1), oy + top, oy + bottom,
                               ox + int(row[0][0]) - 2, ox + int(row[-1][0]) + 2, "ruler"))
    return out


def text_blobs(gray: np.ndarray, box: tuple[int, int, int, int], bars: list[Bar],
               ink: int | None = None) -> list[tuple[int, int, int, int]]:
    """Word-sized boxes (x0, y0, x1, y1, image coordinates) of the text inside ``box``.

    The scale bars' own strokes are removed first (a label drawn against its bar must not
    merge with it), then glyphs closer than about half a glyph height are joined into words.
    ``ink`` (a grey level, 0 or 255) takes only text of that colour (labels over the image).
    """
    x0b, y0b, x1b, y1b = box
    region = gray[y0b:y1b, x0b:x1b]
    if region.size == 0 or min(region.shape) < 4:
        return []
    if ink is None:
        mask = _foreground(region)
    else:
        mask = ink_mask(region, white=ink >= 128)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.ones(n, bool)
    keep[0] = False
    heights = []
    rh, rw = region.shape
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        gx0, gy0, gx1, gy1 = x + x0b, y + y0b, x + x0b + w, y + y0b + h
        if w >= 0.6 * rw or (h >= 0.6 * rh and w <= 3) or (h <= 4 and w >= 8 * h):
            keep[i] = False  # the frame, a separator, a cell border or a thin rule: not text
            continue
        for b in bars:
            inside = b.left - 1 <= gx0 and gx1 <= b.right + 2 and b.top - 1 <= gy0 and gy1 <= b.bottom + 2
            if inside and (w >= 3 * h or w >= 0.5 * (b.right - b.left) or (b.kind == "ruler" and h >= 2 * w)):
                keep[i] = False  # the bar, its end ticks or a ruler tick
                break
        if keep[i] and area <= 2:
            keep[i] = False  # speckle
        if keep[i] and h >= 5:
            heights.append(h)
    if not heights:
        return []
    glyph_h = float(np.median(heights))
    text = keep[labels].astype(np.uint8)
    kx = max(3, int(round(0.5 * glyph_h)))
    ky = max(3, int(round(0.3 * glyph_h)))
    joined = cv2.dilate(text, cv2.getStructuringElement(cv2.MORPH_RECT, (kx, ky)))
    m, _, bstats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    out = []
    for j in range(1, m):
        x, y, w, h, _ = bstats[j]
        # undo the dilation's growth (half a kernel on each side)
        x, y, w, h = x + kx // 2, y + ky // 2, w - 2 * (kx // 2), h - 2 * (ky // 2)
        if h < 5 or w < 3 or h > 0.9 * region.shape[0]:
            continue
        out.append((int(x + x0b), int(y + y0b), int(x + x0b + w), int(y + y0b + h)))
    return out


def panel_around(gray: np.ndarray, bar: Bar, min_share: float = 0.6) -> tuple[int, int, int, int] | None:
    """The filled box a bar drawn over the image sits on, if any: grown from the bar while each
    new row or column is mostly the box's colour (the bar's opposite), text rows included."""
    H, W = gray.shape
    white_bar = gray[bar.y, int(bar.cx)] >= 128
    box_colour = ink_mask(gray, white=not white_bar)
    x0, y0, x1, y1 = max(0, bar.left - 1), max(0, bar.top - 1), min(W, bar.right + 1), min(H, bar.bottom + 1)
    start = (x0, y0, x1, y1)
    for _ in range(3):
        grown = False
        while y0 > 0 and box_colour[y0 - 1, x0:x1].mean() >= min_share:
            y0, grown = y0 - 1, True
        while y1 < H and box_colour[y1, x0:x1].mean() >= min_share:
            y1, grown = y1 + 1, True
        while x0 > 0 and box_colour[y0:y1, x0 - 1].mean() >= min_share:
            x0, grown = x0 - 1, True
        while x1 < W and box_colour[y0:y1, x1].mean() >= min_share:
            x1, grown = x1 + 1, True
        if not grown:
            break
    thick = bar.bottom - bar.top
    if (y1 - y0) < thick + 10 or (x0, y0, x1, y1) == start or (y1 - y0) > 0.35 * H or (x1 - x0) > 0.7 * W:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _flat_levels(gray: np.ndarray, min_share: float, tol: int, max_levels: int = 4) -> list[int]:
    """Grey levels a flat fill would give, with at least ``min_share`` of the image within ±tol:
    black and white first (most panels are one or the other), then the other histogram peaks (the
    highest count within ±3 levels) by decreasing mass."""
    hist = cv2.calcHist([np.ascontiguousarray(gray)], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    near = np.array([cum[min(256, c + tol + 1)] - cum[max(0, c - tol)] for c in range(256)])
    peak = np.array([hist[c] > 0 and hist[c] >= hist[max(0, c - 3):c + 4].max() for c in range(256)])
    enough = near >= min_share * gray.size
    levels: list[int] = []
    for lo, hi in ((0, 4), (251, 255)):  # pure black, pure white
        c = lo + int(np.argmax(hist[lo:hi + 1]))
        if enough[c] and hist[c] >= 0.25 * near[c]:
            levels.append(c)
    for c in (int(c) for c in np.argsort(-near)):
        if len(levels) >= max_levels or not enough[c]:
            break
        if peak[c] and all(abs(c - lv) > tol for lv in levels):
            levels.append(c)
    return levels


def find_panels(gray: np.ndarray, max_panels: int = 3) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of data panels wherever they are in the frame, best first.

    A panel is found by its own evidence, not by its place: a rectangle of one flat grey (a
    histogram peak) holding text and a bar of strong, uniform contrast. The flat grey is closed
    over the text (strokes are thin), opened to cut away the specimen's specks of the same grey,
    and each region left is trimmed to the rectangle its rows and columns fill (a specimen area
    of the same grey beside the panel fills few of them). A full-width bar at the bottom is one;
    so is a white Zeiss panel with specimen rows below it, a panel at the top, or a box in a
    corner. Large images are searched at half resolution (the boxes are given at full).
    """
    H, W = gray.shape
    if H < 40 or W < 60:
        return []
    f = 2 if W >= 800 else 1
    small = np.ascontiguousarray(gray[::f, ::f])
    h_, w_ = small.shape
    tol = 6
    min_w, min_h = max(60, int(0.1 * W)), max(18, int(0.025 * H))
    close_k = cv2.getStructuringElement(cv2.MORPH_RECT, (15 // f, 15 // f))
    open_k = cv2.getStructuringElement(cv2.MORPH_RECT, (21 // f, 13 // f))
    found: list[tuple[float, tuple[int, int, int, int]]] = []
    for c in _flat_levels(small, min_share=0.004, tol=tol):
        flat = cv2.inRange(small, max(0, c - tol), min(255, c + tol))  # |grey - c| ≤ tol, in one uint8 array
        solid = cv2.morphologyEx(cv2.morphologyEx(flat, cv2.MORPH_CLOSE, close_k), cv2.MORPH_OPEN, open_k)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=4)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if w * f < min_w or h * f < min_h:
                continue
            box = _trim_to_rectangle(labels[y:y + h, x:x + w] == i, min_side=max(3, min_h // f))
            if box is None:
                continue
            x0, y0, x1, y1 = ((box[0] + x) * f, (box[1] + y) * f, min(W, (box[2] + x) * f), min(H, (box[3] + y) * f))
            if (x1 - x0) < min_w or (y1 - y0) < min_h or (x1 - x0) < 1.5 * (y1 - y0) or (y1 - y0) > 0.3 * H \
                    or (x1 - x0) * (y1 - y0) > 0.5 * W * H:
                continue
            x0, y0, x1, y1 = _refine_box(gray, c, tol, (x0, y0, x1, y1), f + 1)
            score = _panel_ink(gray[y0:y1, x0:x1], c)
            if score > 0:
                found.append((score * min(1.0, (x1 - x0) / (0.3 * W)), (x0, y0, x1, y1)))
    found.sort(key=lambda t: -t[0])
    out: list[tuple[int, int, int, int]] = []
    for _, box in found:
        if all(_overlap(box, b) < 0.5 for b in out):
            out.append(box)
    return out[:max_panels]


def _refine_box(gray: np.ndarray, c: int, tol: int, box: tuple[int, int, int, int],
                r: int) -> tuple[int, int, int, int]:
    """A box found at reduced resolution moved, side by side and by at most ``r`` px, to the last
    row or column that is still mostly the panel's grey."""
    H, W = gray.shape
    x0, y0, x1, y1 = box

    def row_ok(y: int) -> bool:
        return 0 <= y < H and (np.abs(gray[y, x0:x1].astype(np.int16) - c) <= tol).mean() >= 0.6

    def col_ok(x: int) -> bool:
        return 0 <= x < W and (np.abs(gray[y0:y1, x].astype(np.int16) - c) <= tol).mean() >= 0.6

    y0 = next((y for y in range(max(0, y0 - r), y0 + r + 1) if row_ok(y) and row_ok(y + 1)), y0)
    y1 = next((y + 1 for y in range(min(H - 1, y1 + r - 1), y1 - r - 2, -1) if row_ok(y) and row_ok(y - 1)), y1)
    x0 = next((x for x in range(max(0, x0 - r), x0 + r + 1) if col_ok(x) and col_ok(x + 1)), x0)
    x1 = next((x + 1 for x in range(min(W - 1, x1 + r - 1), x1 - r - 2, -1) if col_ok(x) and col_ok(x - 1)), x1)
    return x0, y0, x1, y1


def _panel_ink(patch: np.ndarray, c: int) -> float:
    """How much a flat box looks like a panel: text in one colour of strong contrast (not the
    specimen's varied greys), as at least three glyph-sized marks; 0 when it does not."""
    diff = np.abs(patch.astype(np.int16) - c)
    if (diff <= 6).mean() < 0.6:
        return 0.0  # a panel is mostly its own flat grey; a textured specimen is not
    ink = diff > 80
    share = float(ink.mean())
    if not 0.004 <= share <= 0.45:
        return 0.0
    values = patch[ink]
    mode = int(np.bincount(values, minlength=256).argmax())
    if (np.abs(values.astype(np.int16) - mode) <= 60).mean() < 0.5:
        return 0.0  # ink of many greys: specimen texture, not text
    n, _, st, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    ph = patch.shape[0]
    glyphs = sum(1 for k in range(1, n) if 4 <= st[k][3] <= 0.8 * ph and st[k][2] <= 2.5 * st[k][3] and st[k][4] >= 6)
    if glyphs < 3:
        return 0.0
    return min(share, 0.1)


def _trim_to_rectangle(region: np.ndarray, fill: float = 0.9, min_side: int = 9) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) left of a region once the rows and columns it fills less than
    ``fill`` are cut from the outside in (the worst side first); None if too little is left."""
    h, w = region.shape
    cx = np.zeros((h, w + 1), np.int32)  # row sums over any column range (int32 prefix sums, written in place)
    np.cumsum(region, axis=1, dtype=np.int32, out=cx[:, 1:])
    cy = np.zeros((h + 1, w), np.int32)  # column sums over any row range
    np.cumsum(region, axis=0, dtype=np.int32, out=cy[1:])
    y0, x0 = 0, 0
    y1, x1 = region.shape
    while y1 - y0 >= min_side and x1 - x0 >= min_side:
        rows = (cx[y0:y1, x1] - cx[y0:y1, x0]) / (x1 - x0)
        cols = (cy[y1, x0:x1] - cy[y0, x0:x1]) / (y1 - y0)
        sides = {"top": rows[0], "bottom": rows[-1], "left": cols[0], "right": cols[-1]}
        worst = min(sides, key=lambda k: sides[k])
        if sides[worst] >= fill:
            return x0, y0, x1, y1
        line = rows if worst in ("top", "bottom") else cols
        bad = line < fill
        run = bad if worst in ("top", "left") else bad[::-1]
        k = max(1, int(np.argmin(run)) if not run.all() else len(run))  # the whole run of poor lines at once
        if worst == "top":
            y0 += k
        elif worst == "bottom":
            y1 -= k
        elif worst == "left":
            x0 += k
        else:
            x1 -= k
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(1, small)


@dataclass
class TextLine:
    """A line of glyphs of one ink colour next to a bar drawn over the image: its box (image
    coordinates), where it sits against the bar, and a clean rendering of its glyphs alone
    (dark on white; the specimen between and around them left out)."""

    box: tuple[int, int, int, int]
    where: str
    score: float
    clean: np.ndarray
    crowded: bool = False  # a mark larger than a glyph right at one end: a glyph may be joined to specimen


def label_lines(gray: np.ndarray, bar: Bar, white: bool, max_lines: int = 3, strict: bool = False,
                loose: bool = False) -> list[TextLine]:
    """Candidate label lines of a bar drawn over the image, likeliest first.

    Glyphs are the marks of the bar's own colour (halfway between it and the specimen's median
    grey, so that JPEG-thinned strokes of a light font stay whole); glyphs side by side on one baseline, at most
    about a glyph height apart, form a line, without marks much taller than its median glyph (a
    specimen speck). A line counts when it sits centred above or below the bar, or level with
    it to its right or left, within a few line heights. Its marks are rendered alone, so that
    the specimen around them (bright specks next to white text) never reaches the OCR.

    ``strict``: the glyphs are the marks halfway from that threshold to the bar's own level
    instead (a label drawn in the bar's pure colour over specimen nearly as bright, which the
    usual threshold joins to its glyphs); no lines where the two are close. ``loose``: a third of
    the way from the usual threshold towards the specimen's median (thin strokes of a small label
    that JPEG dimmed below the usual one).
    """
    H, W = gray.shape
    L = bar.right - bar.left
    pad_x, pad_y = int(max(L, 200, 0.12 * W)), int(max(40, 0.6 * L, 0.09 * H))
    rx0, ry0 = max(0, bar.left - pad_x), max(0, bar.top - pad_y)
    rx1, ry1 = min(W, bar.right + pad_x), min(H, bar.bottom + pad_y)
    sub = gray[ry0:ry1, rx0:rx1]
    med = float(np.median(sub))
    thr = max(160.0, (255 + med) / 2) if white else min(95.0, med / 2)
    if strict:
        core = gray[bar.y, max(0, bar.left):bar.right + 1]
        level = float(np.percentile(core, 90 if white else 10)) if core.size else thr
        if (level - thr if white else thr - level) < 24:
            return []  # the bar is not clearly beyond the usual threshold: nothing stricter to try
        thr += (level - thr) / 2
    elif loose:
        if abs(thr - med) < 40:
            return []
        thr -= (thr - med) / 3
    mask = ((sub >= thr) if white else (sub <= thr)).astype(np.uint8)
    # the bar and its ticks out, so that a glyph touching an end stays a glyph
    mask[max(0, bar.top - ry0 - 1):bar.bottom - ry0 + 1, max(0, bar.left - rx0 - 1):bar.right - rx0 + 1] = 0
    n, lab, st, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    st1 = st[1:]
    keep = (st1[:, 4] >= 2) & (st1[:, 3] <= 150) & (st1[:, 2] <= 300)
    pieces = [[x, y, x + w, y + h, area] for x, y, w, h, area in st1[keep].tolist()]
    # a glyph, or two run together ('µm', 'nm' and '00' often touch after JPEG)
    glyphs = [g for g in pieces if 6 <= g[3] - g[1] <= 120 and g[2] - g[0] <= 4.0 * (g[3] - g[1]) + 2
              and g[4] >= 0.1 * (g[2] - g[0]) * (g[3] - g[1])]
    glyphs.sort()
    parent = list(range(len(glyphs)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, (xa0, ya0, xa1, ya1, _) in enumerate(glyphs):
        ha = ya1 - ya0
        for b in range(a + 1, len(glyphs)):
            xb0, yb0, xb1, yb1, _ = glyphs[b]
            hb = yb1 - yb0
            gap = xb0 - xa1
            if gap > 0.8 * max(ha, hb):
                if xb0 > xa1 + 2 * ha + 120:
                    break
                continue
            overlap = min(ya1, yb1) - max(ya0, yb0)
            if overlap >= 0.5 * min(ha, hb) and 0.45 <= ha / hb <= 2.2 and gap >= -0.3 * min(xa1 - xa0, xb1 - xb0):
                parent[root(b)] = root(a)
    groups: dict[int, list[list[int]]] = {}
    for k, g in enumerate(glyphs):
        groups.setdefault(root(k), []).append(g)
    out: list[TextLine] = []
    for members in groups.values():
        if len(members) < 2:
            continue  # a lone mark is no line
        hm = float(statistics.median([g[3] - g[1] for g in members]))
        members = [g for g in members if g[3] - g[1] <= 1.7 * hm]  # a taller speck beside the text
        if len(members) < 2:
            continue
        x0, y0 = min(g[0] for g in members) + rx0, min(g[1] for g in members) + ry0
        x1, y1 = max(g[2] for g in members) + rx0, max(g[3] for g in members) + ry0
        lh = y1 - y0
        if x1 - x0 > 12 * lh or lh > 0.8 * max(L, 40):
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        placed = None
        if abs(cx - bar.cx) <= 0.3 * L + lh:
            if y1 <= bar.top + 2 and bar.top - y1 <= 2.5 * lh:
                placed = ("above", (bar.top - y1) / lh)
            elif y0 >= bar.bottom - 2 and y0 - bar.bottom <= 2.5 * lh:
                placed = ("below", (y0 - bar.bottom) / lh)
        if placed is None and abs(cy - bar.y) <= 0.8 * lh:
            if x0 >= bar.right - 2 and x0 - bar.right <= 2.5 * lh:
                placed = ("right", (x0 - bar.right) / lh + 0.2)
            elif x1 <= bar.left + 2 and bar.left - x1 <= 2.5 * lh:
                placed = ("left", (bar.left - x1) / lh + 0.3)
        if placed is None:
            continue
        bx0, by0 = max(rx0, x0 - 2), max(ry0, y0 - 2)
        bx1, by1 = min(rx1, x1 + 2), min(ry1, y1 + 2)
        sel = _marks_inside(lab, st, (bx0 - rx0, by0 - ry0, bx1 - rx0, by1 - ry0), [g[:4] for g in members])
        clean = _grey_glyphs(gray[by0:by1, bx0:bx1], sel, white, thr)
        score = placed[1] + abs(cx - bar.cx) / max(L, 1) * (placed[0] in ("above", "below"))
        crowded = _crowded(st, (x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0), hm)
        out.append(TextLine((bx0, by0, bx1, by1), placed[0], score, clean, crowded))
    out.sort(key=lambda t: t.score)
    return out[:max_lines]


def _crowded(st: np.ndarray, box: tuple[int, int, int, int], glyph_h: float) -> bool:
    """Whether a mark taller or wider than a glyph lies level with a text line, right beside
    one of its ends (a glyph of the label joined to specimen of its colour is such a mark)."""
    x0, y0, x1, y1 = box
    lh = max(1, y1 - y0)
    gap = 0.6 * glyph_h
    x, y, w, h = (st[1:, k].astype(np.int64) for k in range(4))
    big = (h > 1.7 * glyph_h) | (w > 2.5 * glyph_h)  # glyph-sized marks: the line's grouping has judged them
    level = np.minimum(y + h, y1 - 0.2 * lh) - np.maximum(y, y0 + 0.2 * lh) > 0
    beside = ((x0 - gap <= x + w) & (x + w <= x0 + 1)) | ((x1 - 1 <= x) & (x <= x1 + gap))
    return bool(np.any(big & level & beside))


def _marks_inside(lab: np.ndarray, st: np.ndarray, box: tuple[int, int, int, int],
                  glyph_boxes: list[list[int]]) -> np.ndarray:
    """Dark-on-white rendering of the marks that lie (mostly) inside ``box``: the glyphs, the
    pieces of a broken one (small marks over a glyph's columns) and decimal points (small marks
    on the baseline), without specks elsewhere or what only reaches into the box."""
    x0, y0, x1, y1 = box
    lh = y1 - y0
    ids = np.unique(lab[y0:y1, x0:x1])
    keep = []
    for i in ids[ids > 0]:
        x, y, w, h, area = st[i]
        ix = min(x + w, x1) - max(x, x0)
        iy = min(y + h, y1) - max(y, y0)
        if ix <= 0 or iy <= 0 or ix * iy < 0.7 * w * h:
            continue
        if h < 0.35 * lh:
            # a piece of a broken glyph touches it; a decimal point sits on the baseline; the
            # rest is specimen speckle (many of them where the specimen is almost as bright)
            piece = area >= 0.01 * lh * lh and any(
                min(x + w, gx1) - max(x, gx0) >= 0.5 * w and max(gy0 - (y + h), y - gy1) <= max(2, 0.12 * lh)
                for gx0, gy0, gx1, gy1 in glyph_boxes)
            point = area >= 0.006 * lh * lh and y + h / 2 >= y0 + 0.6 * lh and w <= 0.35 * lh
            if not (piece or point):
                continue
        keep.append(i)
    return np.isin(lab[y0:y1, x0:x1], keep)


def _grey_glyphs(patch: np.ndarray, sel: np.ndarray, white: bool, thr: float) -> np.ndarray:
    """The selected glyphs in their own grey levels (anti-aliased edges kept, which Tesseract
    reads better than blocky binary strokes), dark on white, everything else white."""
    near = cv2.dilate(sel.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    g = patch.astype(np.float32)
    lo = min(thr, 128.0) if white else 0.0
    hi = max(thr, 128.0)
    ink = np.clip((g - lo) / max(1.0, 255.0 - lo), 0, 1) if white else np.clip((hi - g) / hi, 0, 1)
    return np.where(near, 255 - 255 * ink, 255).astype(np.uint8)


def thin_bars(gray: np.ndarray, white: bool, regions: list[tuple[int, int, int, int]] | None = None) -> list[Bar]:
    """Scale bars drawn over the image that touch specimen of their own colour (a white bar
    without a halo across bright particles), where :func:`find_bars` sees one merged blob.

    Looked for where the usual mask has a long horizontal run (:func:`bar_regions`), twice: in
    the pixels of the bar's pure colour (≥ 245 or ≤ 10), which the specimen rarely reaches; and
    in the usual mask with the marks that are thick vertically (the specimen) taken out, where
    the long runs left are a bar's core, each measured again on the full mask in a band around
    it, so that its end ticks count (between their centres)."""
    H, W = gray.shape
    mask = ink_mask(gray, white)
    out: list[Bar] = []
    min_len = max(20, int(0.02 * W))
    if regions is None:
        regions = bar_regions(mask, max(12, int(0.012 * W)))
    for x0, y0, x1, y1 in regions:
        sub = gray[y0:y1, x0:x1]
        strict = ((sub >= 245) if white else (sub <= 10)).astype(np.uint8)  # the bar's own pure colour
        out += find_bars(gray, (x0, y0, x1, y1), mask=strict, max_share=1.0)
        m = mask[y0:y1, x0:x1]
        thick = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, 13)))
        runs = cv2.morphologyEx(m & (1 - thick), cv2.MORPH_OPEN,
                                cv2.getStructuringElement(cv2.MORPH_RECT, (min_len, 1)))
        n, _, st, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in st[i])
            x, y = x + x0, y + y0
            if h > 12 or area < 0.8 * w * h or w > 0.6 * W:
                continue
            mm = 3 * h + 4
            by0, by1, bx0, bx1 = max(0, y - mm), min(H, y + h + mm), max(0, x - 3), min(W, x + w + 3)
            band = mask[by0:by1, bx0:bx1].copy()
            found = [b for b in find_bars(gray, (bx0, by0, bx1, by1),
                                          mask=_only_core_component(band, y - by0, x - bx0, h, w), max_share=1.0)
                     if b.length >= 0.9 * w - 8]
            if found:
                out.append(max(found, key=lambda b: b.length))
            else:
                out.append(Bar(float(x), float(x + w), y + h // 2, y, y + h, x, x + w, "line"))
    return out


def _only_core_component(band: np.ndarray, cy: int, cx: int, h: int, w: int) -> np.ndarray:
    """The band's mask reduced to the component holding the run (the bar and its ticks),
    with the rows beyond it that are wider than the run cut away."""
    n, lab, _, _ = cv2.connectedComponentsWithStats(band, connectivity=8)
    core = lab[cy + h // 2, cx + w // 2]
    out = (lab == core).astype(np.uint8) if core else band
    out[:, : max(0, cx - 3)] = 0
    out[:, cx + w + 3:] = 0
    return out


def bar_regions(mask: np.ndarray, min_len: int, max_regions: int = 16) -> list[tuple[int, int, int, int]]:
    """Boxes around the longest horizontal runs of an ink mask (where a bar can be), with room
    for end ticks above and below; boxes that touch are one."""
    H, W = mask.shape
    f = 2 if W >= 1200 else 1  # large images: runs found on a 2×2 max-pooled mask (a 1-px bar survives)
    small = cv2.dilate(mask, np.ones((f, f), np.uint8), anchor=(0, 0))[::f, ::f] if f > 1 else mask
    runs = cv2.morphologyEx(small, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (max(6, min_len // f), 1)))
    n, _, st, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    cands = sorted((tuple(int(v) * f for v in st[i][:4]) + (0,) for i in range(1, n) if st[i][3] * f <= 40),
                   key=lambda s: -s[2])
    boxes: list[list[int]] = []
    for x, y, w, h, _ in cands[:max_regions]:
        m = max(14, 3 * h + 8)
        box = [max(0, x - 10), max(0, y - m), min(W, x + w + 10), min(H, y + h + m)]
        for b in boxes:
            if box[0] <= b[2] and b[0] <= box[2] and box[1] <= b[3] and b[1] <= box[3]:
                b[:] = [min(b[0], box[0]), min(b[1], box[1]), max(b[2], box[2]), max(b[3], box[3])]
                break
        else:
            boxes.append(box)
    return [(b[0], b[1], b[2], b[3]) for b in boxes]


def overlay_bars(gray: np.ndarray, mask: np.ndarray, panels: list[tuple[int, int, int, int]] | None = None,
                 regions: list[tuple[int, int, int, int]] | None = None) -> list[Bar]:
    """:func:`find_bars` over a whole image's ink mask, looked at only where the mask has a long
    horizontal run (every bar has one): the connected components of a textured specimen's mask
    cost more than everything else, and only a few rows can hold a bar."""
    H, W = gray.shape
    min_len = max(12, int(0.012 * W))
    bars: list[Bar] = []
    for x0, y0, x1, y1 in (regions if regions is not None else bar_regions(mask, min_len)):
        sub = mask[y0:y1, x0:x1].copy()
        found = find_bars(gray, (x0, y0, x1, y1), panels=panels, mask=sub, max_share=1.0)
        bars.extend(b for b in found if b.length >= 0.8 * min_len)
    bars.sort(key=lambda b: -b.length)
    return bars
