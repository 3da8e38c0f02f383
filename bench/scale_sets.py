"""Test sets for scale reading built at run time from the real micrographs in ../shared/data/sem-real.

Nothing here is committed image data: every composite is drawn afresh from the shared images
with a seeded generator, so a set is reproducible from (seed, n) and the images themselves
never enter the repository. Figures measured on these sets are composite accuracy (a real
micrograph under a drawn panel or bar), never real accuracy: bench/scale_real.py is that.

- :func:`bases`: the real micrographs without a scale bar of their own: the plain images, the
  two metadata images without a data bar, and the specimen part (above the data bar) of the
  images that have one (not the FEI test fixtures, whose specimen is zeroed, nor the images
  with a detector's text pasted over the specimen).
- :func:`panel_set`: data panels drawn *inside* the frame in six vendor styles (Zeiss white and
  dark, FEI cells, JEOL strip, TESCAN, Hitachi ruler): at the bottom edge as most instruments
  draw them, full width with specimen rows below, at the top, or a box in a corner.
- :func:`overlay_set`: a bar and its label drawn straight over the micrograph, white on dark or
  black on light, with or without a halo, anywhere, at random size, label and JPEG quality.
- :func:`plain_set`: the real images with no bar, for the false-positive rate, and
  :func:`plain_variants`: the same at other sizes, flipped and through JPEG.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.images.imaging import load_gray
from services.scale.databar import find_databar
from services.scale.render import PANEL_STYLES, render_bar_over, render_panel
from services.scale.units import to_nm

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sem-real"
NICE = [(v, u) for u in ("nm", "µm", "mm") for v in (1, 2, 5, 10, 20, 50, 100, 200, 500)
        if 5 <= to_nm(v, u) <= 2e6] + [(2.5, "µm"), (3, "µm"), (300, "nm")]
_SKIP = ("FEI-Helios", "Sahilsonii")  # zeroed specimen; a YOLO caption pasted over the specimen


@dataclass
class Case:
    name: str
    image: np.ndarray  # uint8 grey, as decoded after any JPEG step
    value: float | None  # the true label (None: no bar)
    unit: str | None
    bar_px: float | None
    kind: str  # panel style, 'overlay', or 'plain'
    info: dict[str, Any] = field(default_factory=dict)
    jpeg: int | None = None  # JPEG quality the image went through (None: lossless)

    def encoded(self) -> tuple[str, bytes]:
        """The file as it would be uploaded: JPEG bytes at its quality, PNG otherwise."""
        if self.jpeg:
            return ".jpg", cv2.imencode(".jpg", self.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg])[1].tobytes()
        return ".png", cv2.imencode(".png", self.image)[1].tobytes()


def manifest(root: Path = DEFAULT_ROOT) -> list[dict]:
    return [r for r in csv.DictReader(open(root / "MANIFEST.tsv"), delimiter="\t") if not r["file"].endswith(".txt")]


def plain_rows(root: Path = DEFAULT_ROOT) -> list[dict]:
    """Images with no scale bar drawn on them (the plain ones and the two metadata-only ones)."""
    return [r for r in manifest(root) if "bar=" not in r["scale_truth"]]


def bases(root: Path = DEFAULT_ROOT) -> list[tuple[str, np.ndarray]]:
    """Real micrographs without a bar of their own (see the module docstring)."""
    out = []
    for r in manifest(root):
        if any(s in r["file"] for s in _SKIP):
            continue
        g = load_gray(root / r["file"], 150_000_000)
        if "bar=" in r["scale_truth"]:
            box = find_databar(g)
            if box is None:
                continue
            g = g[: box[1] - 2]
        if min(g.shape) >= 150:
            out.append((r["file"], np.ascontiguousarray(g)))
    return out


def plain_set(root: Path = DEFAULT_ROOT) -> Iterator[Case]:
    for r in plain_rows(root):
        g = load_gray(root / r["file"], 150_000_000)
        yield Case(r["file"].replace("/", "__"), g, None, None, None, "plain", {"file": r["file"]})


def plain_variants(n: int, seed: int = 0, root: Path = DEFAULT_ROOT) -> Iterator[Case]:
    """``n`` versions of the plain real images (no bar) at other sizes, flipped, through JPEG: a
    larger denominator for the false-positive rate than the images themselves."""
    rng = np.random.default_rng(seed + 104729)
    plain = [(r["file"], load_gray(root / r["file"], 150_000_000)) for r in plain_rows(root)]
    for i in range(n):
        name, g = plain[i % len(plain)]
        img, q = _jpeg(rng, _resized(rng, g))
        yield Case(f"plainvar{seed}_{i:04d}", img, None, None, None, "plain", {"file": name}, q)


def _resized(rng: np.random.Generator, g: np.ndarray) -> np.ndarray:
    """The micrograph at one of the widths instruments write, flipped at random."""
    w = int(rng.choice([640, 800, 1024, 1280, 1536]))
    h = int(round(g.shape[0] * w / g.shape[1]))
    h = max(240, min(h, int(1.2 * w)))
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA if w < g.shape[1] else cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.3:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _scale_for(rng: np.random.Generator, image_w: int, target_px: float) -> tuple[float, str, int]:
    """A label and bar length as an instrument would choose them: a magnification, then the round
    length nearest to the wanted bar length."""
    mag = 10 ** rng.uniform(1.3, 5.3)
    px = 127e6 / mag / image_w
    value, unit = min(NICE, key=lambda vu: abs(math.log(to_nm(*vu) / (px * target_px))))
    bar = int(round(to_nm(value, unit) / px))
    return float(value), unit, bar


def _jpeg(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, int | None]:
    if rng.random() < 0.7:
        q = int(rng.integers(60, 96))
        enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        return cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE), q
    return img, None


def panel_set(n: int, seed: int = 0, root: Path = DEFAULT_ROOT,
              base_list: list[tuple[str, np.ndarray]] | None = None) -> Iterator[Case]:
    """``n`` data panels drawn inside the frame of real micrographs (styles in turn)."""
    rng = np.random.default_rng(seed)
    base_list = base_list if base_list is not None else bases(root)
    for i in range(n):
        style = PANEL_STYLES[i % len(PANEL_STYLES)]
        name, g = base_list[int(rng.integers(len(base_list)))]
        img = _resized(rng, g)
        H, W = img.shape
        where = ("bottom", "bottom_inset", "top", "box")[int(rng.integers(4))]
        if where == "box":
            pw = int(W * rng.uniform(0.45, 0.7))
            ph = int(np.clip(pw * rng.uniform(0.13, 0.2), 30, 0.3 * H))
            x0 = int(rng.choice([int(0.02 * W), W - pw - int(0.02 * W)]))
            y0 = int(rng.choice([int(0.02 * H), H - ph - int(0.02 * H)]))
        else:
            margin = int(rng.choice([0, 0, int(0.01 * W)]))
            pw = W - 2 * margin
            ph = int(np.clip(W * rng.uniform(0.06, 0.11), 30, 0.25 * H))
            x0 = margin
            below = int(H * rng.uniform(0.02, 0.15)) if where == "bottom_inset" else 0  # specimen rows under it
            y0 = (H - ph - below) if where.startswith("bottom") else int(H * rng.uniform(0, 0.04))
        box = (x0, y0, x0 + pw, y0 + ph)
        value, unit, bar = _scale_for(rng, W, pw * rng.uniform(0.1, 0.28))
        font_name = str(rng.choice(["sans", "sans", "condensed", "bold"]))
        for _ in range(6):  # a bar that does not fit the panel's layout is made shorter
            out, truth = render_panel(img, style, value, unit, bar, box, font_name=font_name,
                                      symbol_mu=bool(rng.integers(2)), kv=float(rng.choice([1, 2, 5, 10, 15, 20])),
                                      wd_mm=round(float(rng.uniform(3, 15)), 1))
            bx0, _, bx1, _ = truth.bar_box
            if bx0 >= box[0] and bx1 <= box[2] - 2:
                break
            value, unit, bar = _scale_for(rng, W, bar * 0.7)
        else:
            continue
        out, q = _jpeg(rng, out)
        yield Case(f"panel{seed}_{i:04d}", out, truth.scale_value, truth.scale_unit, truth.bar_px, style,
                   {"base": name, "where": where, "box": list(box), "font": font_name}, q)


def overlay_set(n: int, seed: int = 0, root: Path = DEFAULT_ROOT,
                base_list: list[tuple[str, np.ndarray]] | None = None) -> Iterator[Case]:
    """``n`` bars with their labels drawn straight over real micrographs, wholly inside the frame."""
    rng = np.random.default_rng(seed + 7919)
    base_list = base_list if base_list is not None else bases(root)
    made = 0
    while made < n:
        name, g = base_list[int(rng.integers(len(base_list)))]
        img = _resized(rng, g)
        H, W = img.shape
        value, unit, bar = _scale_for(rng, W, W * rng.uniform(0.08, 0.3))
        bar = int(np.clip(bar, 20, 0.45 * W))
        fs = int(np.clip(W * rng.uniform(0.018, 0.04), 13, 56))
        thick = int(np.clip(W * rng.uniform(0.003, 0.009), 2, 12))
        pos = str(rng.choice(["above", "above", "below", "below", "right", "left"]))
        corner = rng.random() < 0.6  # most people put the bar in a corner
        if corner:
            x = int(rng.choice([0.05 * W + (5 * fs if pos == "left" else 0),
                                W - 0.05 * W - bar - (5 * fs if pos == "right" else 0)]))
            y = int(rng.choice([0.06 * H + 2 * fs, H - 0.06 * H - 2 * fs]))
        else:
            x = int(rng.uniform(0.04 * W, max(0.05 * W, W - bar - 0.04 * W)))
            y = int(rng.uniform(0.06 * H + 2 * fs, H - 0.06 * H - 2 * fs))
        region = img[max(0, y - 2 * fs):y + 2 * fs, max(0, x - 4 * fs):x + bar + 4 * fs]
        lo, hi = np.percentile(region, [10, 90]) if region.size else (0, 255)
        halo = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
        if hi < 200:
            fg = 255
        elif lo > 60:
            fg = 0
        else:  # mixed ground: a person adds a halo (or picks the colour that reads)
            fg = 255 if np.median(region) < 128 else 0
            halo = halo or int(rng.integers(1, 4))
        out, truth = render_bar_over(img, value, unit, bar, x, y, fg=fg, halo=halo, thickness=thick, label_pos=pos,
                                     font_name=str(rng.choice(["bold", "sans", "condensed"])), font_size=fs,
                                     capped=bool(rng.random() < 0.3),
                                     label_text=(f"{value:g}{unit}" if rng.random() < 0.3 else None))
        bx0, by0, bx1, by1 = truth.drawn_box or (0, 0, W, H)
        if bx0 < 4 or by0 < 4 or bx1 > W - 4 or by1 > H - 4:
            continue  # the label would run off the image: a person would not draw it there
        out, q = _jpeg(rng, out)
        yield Case(f"overlay{seed}_{made:04d}", out, value, unit, truth.bar_px, "overlay",
                   {"base": name, "fg": fg, "halo": halo, "pos": pos, "corner": corner, "font_px": fs}, q)
        made += 1


def evaluate(cases: Iterator[Case] | list[Case], tmp: Path, reader: Any = None) -> list[dict]:
    """Each case written as it would be uploaded (JPEG or PNG) and read by ``read_scale``; one row
    per case: the truth, the reading, and whether the label is exact and the pixel size within 2%."""
    import time

    from services.scale.reader import read_scale

    reader = reader or read_scale
    rows = []
    for c in cases:
        suffix, data = c.encoded()
        path = tmp / f"{c.name}{suffix}"
        path.write_bytes(data)
        t = time.process_time()
        res = reader(path)
        ms = (time.process_time() - t) * 1000  # CPU time: other load on a shared machine barely changes it
        path.unlink()
        label_ok = c.value is not None and (res.scale_value, res.scale_unit) == (c.value, c.unit)
        px_true = to_nm(c.value, c.unit) / c.bar_px if c.value is not None and c.bar_px else None
        px_err = abs(res.pixel_size_nm - px_true) / px_true if px_true and res.pixel_size_nm else None
        o = res.detail.get("ocr", {})
        rows.append({"name": c.name, "kind": c.kind, "jpeg": c.jpeg, **c.info, "truth": (c.value, c.unit, c.bar_px),
                     "read": (res.scale_value, res.scale_unit, res.bar_px), "source": res.source,
                     "confidence": res.confidence or 0.0,
                     "raw_confidence": o.get("raw_confidence", res.confidence or 0.0),
                     "label_ok": label_ok, "px_err": px_err,
                     "correct": bool(label_ok and px_err is not None and px_err <= 0.02),
                     "claimed": res.scale_value is not None, "glyphs": o.get("label") == "read glyph by glyph",
                     "path": o.get("path"), "bar_ok": bool(c.bar_px and res.bar_px
                                                           and abs(res.bar_px - c.bar_px) <= 0.02 * c.bar_px),
                     "ms": ms})
    return rows
