"""Synthetic SEM-like images of the ten categories, each with a rendered data bar of known scale.

For tests and demos only: the ten procedural generators differ in ways a classifier can learn
(blobs, arrays, wires, fibres, pores, …), so accuracy on them says nothing about real SEM images.

Every image gets SEM-like appearance: secondary-electron edge brightening, a tilt gradient,
shot noise, occasional charging streaks, a random magnification (feature size), and a data bar
(Zeiss, FEI, JEOL or Hitachi style) whose label, bar length and pixel size are written to
``MANIFEST.tsv`` beside the images.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from services.data.categories import SLUGS
from services.errors import BadInput, BadParams
from services.scale.render import STYLES, render_databar
from services.scale.units import to_nm

# Folder names as in the public NFFA-EUROPE dataset, so the dataset loader's aliases are exercised.
FOLDERS = ["Porous_Sponge", "Patterned_surface", "Particles", "Films_Coated_Surface", "Powder", "Tips",
           "Nanowires", "Biological", "MEMS_devices_and_electrodes", "Fibres"]
_NICE = [(1, "nm"), (2, "nm"), (5, "nm"), (10, "nm"), (20, "nm"), (50, "nm"), (100, "nm"), (200, "nm"),
         (500, "nm"), (1, "µm"), (2, "µm"), (5, "µm"), (10, "µm"), (20, "µm"), (50, "µm"), (100, "µm"),
         (200, "µm"), (500, "µm"), (1, "mm")]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), max(0.5, sigma))
    return (n - n.mean()) / (n.std() + 1e-6)


def _porous(rng, h, w, s):  # noqa: ANN001, ANN202 — generators share one signature
    field = _smooth_noise(rng, h, w, 3.0 * s)
    pores = field < rng.uniform(-0.3, 0.4)
    img = np.where(pores, 0.12, 0.75).astype(np.float32)
    return img + 0.1 * _smooth_noise(rng, h, w, 1.0)


def _patterned(rng, h, w, s):  # noqa: ANN001, ANN202
    img = np.full((h, w), 0.3, np.float32)
    pitch = max(6, int(rng.uniform(7, 12) * s))
    r = max(2, int(pitch * rng.uniform(0.22, 0.38)))
    square = rng.random() < 0.4
    for y in range(-pitch, h + pitch, pitch):
        off = pitch // 2 if (y // pitch) % 2 and rng.random() < 0.5 else 0
        for x in range(-pitch + off, w + pitch, pitch):
            if square:
                cv2.rectangle(img, (x - r, y - r), (x + r, y + r), 0.85, -1)
            else:
                cv2.circle(img, (x, y), r, 0.85, -1, cv2.LINE_AA)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-20, 20), 1.0)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def _particles(rng, h, w, s):  # noqa: ANN001, ANN202
    img = 0.15 + 0.05 * _smooth_noise(rng, h, w, 8)
    r0 = max(2.0, rng.uniform(3, 6) * s)
    for _ in range(int(rng.uniform(0.25, 0.6) * h * w / (r0 * r0 * 12))):
        r = max(2, int(r0 * rng.uniform(0.8, 1.2)))
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        cv2.circle(img, (cx, cy), r, 0.8, -1, cv2.LINE_AA)
    return img


def _films(rng, h, w, s):  # noqa: ANN001, ANN202
    img = 0.5 + 0.08 * _smooth_noise(rng, h, w, 10 * s) + 0.04 * _smooth_noise(rng, h, w, 1.5)
    for _ in range(int(rng.integers(0, 4))):  # cracks
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, math.pi)
        pts = []
        for _ in range(12):
            pts.append((int(x), int(y)))
            ang += rng.normal(0, 0.3)
            x, y = x + 8 * s * math.cos(ang), y + 8 * s * math.sin(ang)
        cv2.polylines(img, [np.array(pts, np.int32)], False, 0.2, 1, cv2.LINE_AA)
    return img.astype(np.float32)


def _powders(rng, h, w, s):  # noqa: ANN001, ANN202
    img = np.full((h, w), 0.1, np.float32)
    for _ in range(int(h * w / (40 * s * s))):
        c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        r = rng.uniform(2, 9) * s
        k = int(rng.integers(4, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        pts = c + np.stack([np.cos(angles), np.sin(angles)], 1) * r * rng.uniform(0.6, 1.0, (k, 1))
        cv2.fillPoly(img, [pts.astype(np.int32)], float(rng.uniform(0.4, 0.9)), cv2.LINE_AA)
    return img


def _tips(rng, h, w, s):  # noqa: ANN001, ANN202
    img = 0.1 + 0.05 * _smooth_noise(rng, h, w, 6)
    apex = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.15, 0.45) * h])
    half = rng.uniform(0.15, 0.35) * w
    base_y = h * 1.05
    pts = np.array([apex, [apex[0] - half, base_y], [apex[0] + half, base_y]], np.int32)
    cv2.fillPoly(img, [pts], 0.6, cv2.LINE_AA)
    xs = np.arange(w, dtype=np.float32)[None, :]
    shade = 0.25 * np.clip((xs - apex[0]) / half, -1, 1)  # one flank lit, the other in shadow
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return np.where(mask > 0, img + shade, img).astype(np.float32)


def _nanowires(rng, h, w, s):  # noqa: ANN001, ANN202
    img = 0.15 + 0.05 * _smooth_noise(rng, h, w, 6)
    main = rng.uniform(0, math.pi)
    for _ in range(int(rng.integers(25, 60))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang = main + rng.normal(0, 0.8)
        length = rng.uniform(0.3, 0.9) * max(h, w)
        p1 = (int(x - length / 2 * math.cos(ang)), int(y - length / 2 * math.sin(ang)))
        p2 = (int(x + length / 2 * math.cos(ang)), int(y + length / 2 * math.sin(ang)))
        cv2.line(img, p1, p2, float(rng.uniform(0.6, 0.95)), max(1, int(0.6 * s)), cv2.LINE_AA)
    return img


def _biological(rng, h, w, s):  # noqa: ANN001, ANN202
    img = 0.25 + 0.06 * _smooth_noise(rng, h, w, 5)
    for _ in range(int(rng.integers(3, 9))):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        ax = (int(rng.uniform(8, 18) * s), int(rng.uniform(5, 12) * s))
        ang = rng.uniform(0, 180)
        cv2.ellipse(img, c, ax, ang, 0, 360, 0.7, -1, cv2.LINE_AA)
        cv2.ellipse(img, c, (max(1, ax[0] // 3), max(1, ax[1] // 3)), ang, 0, 360, 0.45, -1, cv2.LINE_AA)
    wobble = _smooth_noise(rng, h, w, 2.5 * s)
    return img + 0.05 * wobble


def _mems(rng, h, w, s):  # noqa: ANN001, ANN202
    img = np.full((h, w), 0.2, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = int(rng.uniform(0, w * 0.8)), int(rng.uniform(0, h * 0.8))
        x1, y1 = x0 + int(rng.uniform(0.2, 0.6) * w), y0 + int(rng.uniform(0.15, 0.5) * h)
        cv2.rectangle(img, (x0, y0), (x1, y1), 0.65, -1)
        if rng.random() < 0.7:  # comb fingers
            pitch = max(3, int(rng.uniform(3, 6) * s))
            for x in range(x0, x1, 2 * pitch):
                cv2.rectangle(img, (x, y1), (x + pitch - 1, min(h, y1 + int(0.2 * h))), 0.65, -1)
    return img


def _fibres(rng, h, w, s):  # noqa: ANN001, ANN202
    img = 0.1 + 0.04 * _smooth_noise(rng, h, w, 6)
    for _ in range(int(rng.integers(4, 10))):
        x, y = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        ang = rng.uniform(0, 2 * math.pi)
        pts = []
        for _ in range(40):
            pts.append((int(x), int(y)))
            ang += rng.normal(0, 0.06)
            x, y = x + 0.05 * w * math.cos(ang), y + 0.05 * w * math.sin(ang)
        thick = max(3, int(rng.uniform(3, 6) * s))
        cv2.polylines(img, [np.array(pts, np.int32)], False, 0.55, thick, cv2.LINE_AA)
        cv2.polylines(img, [np.array(pts, np.int32)], False, 0.8, max(1, thick // 3), cv2.LINE_AA)
    return img


GENERATORS = [_porous, _patterned, _particles, _films, _powders, _tips, _nanowires, _biological, _mems, _fibres]


def _sem_look(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Edge brightening, tilt gradient, charging streaks and shot noise; returns uint8."""
    h, w = img.shape
    gx, gy = cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1)
    img = img + rng.uniform(0.2, 0.5) * np.sqrt(gx * gx + gy * gy)
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    img = img + rng.uniform(-0.08, 0.08) * ys
    if rng.random() < 0.25:  # charging: a few bright horizontal scan lines
        for y in rng.integers(0, h, int(rng.integers(1, 4))):
            img[y:y + int(rng.integers(1, 3))] += rng.uniform(0.2, 0.5)
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    img = img + rng.normal(0, rng.uniform(0.02, 0.07), img.shape).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


@dataclass
class SynthImage:
    file: str
    category: str
    category_index: int
    style: str
    scale_value: float
    scale_unit: str
    bar_px: float
    pixel_size_nm: float
    seed: int


def _specimen(rng: np.random.Generator, category_index: int, h: int, w: int, magnification: float) -> np.ndarray:
    return _sem_look(rng, GENERATORS[category_index](rng, h, w, magnification).astype(np.float32))


def specimen(category_index: int, width: int, height: int, seed: int) -> np.ndarray:
    """The specimen part alone (uint8 grey, no data bar): a base for other bar layouts."""
    if not 0 <= category_index < len(GENERATORS):
        raise BadInput(f"category index {category_index} is outside 0–9", "unknown_category")
    rng = np.random.default_rng(seed)
    return _specimen(rng, category_index, height, width, rng.uniform(0.6, 1.8) * max(1.0, width / 256))


def make_image(category_index: int, width: int, height: int, seed: int,
               style: str | None = None) -> tuple[np.ndarray, SynthImage]:
    """One synthetic image (uint8 grey, ``height`` × ``width`` including its data bar) and its truth."""
    if not 0 <= category_index < len(GENERATORS):
        raise BadInput(f"category index {category_index} is outside 0–9", "unknown_category")
    rng = np.random.default_rng(seed)
    zone_h = max(36, int(0.11 * width))
    h = height - zone_h
    if h < 16 or width < 32:
        raise BadInput(f"image size {width}x{height} is too small (at least 64x64)", "bad_size")
    magnification = rng.uniform(0.6, 1.8) * max(1.0, width / 256)
    img = _specimen(rng, category_index, h, width, magnification)
    # FEI and JEOL layouts need room for their text cells beside the bar.
    styles = STYLES if width >= 400 else ("zeiss", "hitachi")
    style = style or styles[int(rng.integers(len(styles)))]
    target_px = rng.uniform(0.15, 0.25) * width
    pixel_nm = float(10 ** rng.uniform(0.3, 3.0)) / magnification
    value, unit = min(_NICE, key=lambda vu: abs(math.log(to_nm(*vu) / (pixel_nm * target_px))))
    bar_px = int(round(to_nm(value, unit) / pixel_nm))
    bar_px = int(np.clip(bar_px, 0.08 * width, 0.3 * width))
    out, truth = render_databar(img, style, float(value), unit, bar_px)
    info = SynthImage("", SLUGS[category_index], category_index, style, float(value), unit,
                      truth.bar_px, truth.pixel_size_nm, seed)
    return out, info


def write_dataset(out: Path | str, per_class: int, width: int = 1024, height: int = 768, seed: int = 0,
                  fmt: str = "png", progress=None) -> list[SynthImage]:  # noqa: ANN001
    """Write ``per_class`` images of each category into ``out/<dataset folder>/`` and ``MANIFEST.tsv``."""
    if per_class < 1:
        raise BadParams("--per-class must be at least 1")
    if fmt not in ("png", "jpg", "tif"):
        raise BadParams(f"unknown format {fmt!r}; choose png, jpg or tif")
    out = Path(out)
    rows: list[SynthImage] = []
    total = per_class * len(GENERATORS)
    for c, folder in enumerate(FOLDERS):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img_seed = seed * 1_000_003 + c * 100_003 + i
            img, info = make_image(c, width, height, img_seed)
            rel = f"{folder}/synth_{c}_{i:05d}.{fmt}"
            params = [cv2.IMWRITE_JPEG_QUALITY, 92] if fmt == "jpg" else []
            if not cv2.imwrite(str(out / rel), img, params):
                raise OSError(f"cannot write {out / rel}")
            info.file = rel
            rows.append(info)
            if progress is not None:
                progress(len(rows), total)
    with open(out / "MANIFEST.tsv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])), delimiter="\t")
        wr.writeheader()
        for r in rows:
            wr.writerow(asdict(r))
    return rows
