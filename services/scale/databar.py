"""Locating the instrument's data bar and the scale bar inside it (OpenCV, NumPy).

The data bar is the flat band of text and lines at the bottom of most SEM images (bright or
dark, vendor-dependent height); without one, the scale bar may be drawn over the image. A
scale bar is a long thin horizontal line or rectangle, possibly with end ticks, or a ruler
of evenly spaced ticks (Hitachi TM). Its length is measured between the centres of its end
ticks when it has them, over its whole run otherwise.
"""

from __future__ import annotations

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
    near = (np.abs(gray.astype(np.int16) - bg) <= 4).mean(axis=1)  # a bar is flat; a dark specimen is not
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
    return (diff > max(50, 0.35 * max(bg, 255 - bg))).astype(np.uint8)


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
    """Near-white (≥ 225) or near-black (≤ 30) pixels, as uint8 0/1."""
    return ((gray >= 225) if white else (gray <= 30)).astype(np.uint8)


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
