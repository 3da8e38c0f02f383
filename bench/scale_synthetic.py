"""Scale reading on synthetic data bars with known truth (robustness, not real accuracy).

Renders N images over the synthetic specimens in the four data-bar styles (Zeiss, FEI, JEOL,
Hitachi), with random image widths, labels, bar lengths, JEOL's slanted µ, blur and JPEG
quality, and reports per style: exact value + unit with the bar measured to ±1 px, and
confident (≥ 0.7) wrong answers. Synthetic figures are never real accuracy: see
bench/scale_real.py for that. Usage: python bench/scale_synthetic.py [N] [SEED]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from services.data.synth import specimen
from services.scale.reader import read_scale
from services.scale.render import STYLES, render_databar

NICE = [(100, "nm"), (200, "nm"), (500, "nm"), (1, "µm"), (2, "µm"), (5, "µm"), (10, "µm"), (20, "µm"),
        (50, "µm"), (100, "µm"), (200, "µm"), (1, "mm")]


def main(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    stats: dict[str, list] = defaultdict(lambda: [0, 0, 0, []])
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            style = STYLES[i % len(STYLES)]
            w = int(rng.choice([512, 640, 1024, 1280]))
            value, unit = NICE[int(rng.integers(len(NICE)))]
            bar_px = int(rng.uniform(0.08, 0.28) * w)
            img, truth = render_databar(specimen(int(rng.integers(10)), w, int(w * 0.7), seed=seed * 1000 + i),
                                        style, value, unit, bar_px, symbol_mu=bool(rng.integers(2)))
            if rng.random() < 0.5:
                img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.0)))
            if rng.random() < 0.7:
                _, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 95))])
                img = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)
            path = Path(tmp) / f"{i:04d}.png"
            cv2.imwrite(str(path), img)
            t = time.perf_counter()
            res = read_scale(path)
            s = stats[style]
            s[3].append((time.perf_counter() - t) * 1000)
            exact = (res.scale_value, res.scale_unit) == (value, unit) and res.bar_px is not None \
                and abs(res.bar_px - truth.bar_px) <= 1
            s[0] += 1
            s[1] += exact
            s[2] += (not exact) and (res.confidence or 0) >= 0.7
    print(f"{'style':10s} {'n':>4s} {'exact':>8s} {'conf.wrong':>10s} {'ms/img':>7s}")
    for style in STYLES:
        k, e, cw, ms = stats[style]
        print(f"{style:10s} {k:4d} {e:4d}/{k:<3d} {cw:10d} {np.mean(ms):7.0f}")
    tot = [sum(stats[s][j] for s in STYLES) for j in range(3)]
    print(f"{'ALL':10s} {tot[0]:4d} {tot[1]:4d}/{tot[0]:<3d} {tot[2]:10d}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 80, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
