"""Fits the calibration of scale-reading confidence (services/scale/calibration.py) and reports it.

Labelled readings: the OCR readings of the real images with a readable bar (every image, the
metadata ones read from their data bar alone, and those as JPEG q75 and q90 exports), the plain
real images (any reading there is a false positive), and composites from bench/scale_sets.py
(data panels inside the frame, bars over the image). A reading is right when its label (value
and unit) is exact and, where the truth has a bar length or pixel size, its pixel size is within
2%. An isotonic fit (scikit-learn) of right/wrong against the raw OCR score is made on the fit
seed and judged on composites of the other seed, and the other way round (two-fold); the
reliability table, the ECE and the threshold where precision reaches 99% come from those
judgements, and the tables kept are fitted on everything. The real readings are in every fit
(too few to hold out); their own reliability is printed too. Usage:
    python bench/scale_calibrate.py [N_PER_SET] [SEED_A] [SEED_B] [--write] [--cache=FILE.json]
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
from sklearn.isotonic import IsotonicRegression

from bench.scale_sets import DEFAULT_ROOT, bases, evaluate, overlay_set, panel_set, plain_set
from services.images.imaging import load_gray
from services.scale.reader import read_scale, sidecar_for
from services.scale.units import parse_length

CAL = Path(__file__).resolve().parents[1] / "services" / "scale" / "calibration.py"


def real_readings(root: Path = DEFAULT_ROOT) -> list[dict]:
    """The OCR readings of the real images with a bar, the metadata ones also as JPEG exports."""
    out = []
    tmp = Path(tempfile.mkdtemp())
    rows = [r for r in csv.DictReader(open(root / "MANIFEST.tsv"), delimiter="\t") if "bar=" in r["scale_truth"]]
    for r in rows:
        t = r["scale_truth"]
        bar = parse_length(t.split("bar=")[1].split(";")[0].replace("*", ""))
        px = float(t.split("px=")[1].split()[0]) if "px=" in t else None
        path = root / r["file"]
        variants = [("real", path, sidecar_for(path))]
        if px:
            gray = load_gray(path, 150_000_000)
            for q in (75, 90):
                jpg = tmp / f"q{q}_{path.stem}.jpg"
                cv2.imwrite(str(jpg), gray, [cv2.IMWRITE_JPEG_QUALITY, q])
                variants.append((f"real JPEG q{q}", jpg, None))
        for kind, p, side in variants:
            o = read_scale(p, sidecar=side).detail["ocr"]
            if o.get("scale_value") is None:
                continue
            label_ok = (o["scale_value"], o["scale_unit"]) == bar
            px_ok = px is None or (o.get("pixel_size_nm") is not None and abs(o["pixel_size_nm"] - px) / px <= 0.02)
            out.append({"name": r["file"], "kind": kind, "raw_confidence": o["raw_confidence"], "path": o.get("path"),
                        "correct": bool(label_ok and px_ok), "label_ok": label_ok, "claimed": True,
                        "bar_ok": bool(px_ok and px is not None)})
    return out


def composite_readings(n: int, seed: int, base_list: list) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = evaluate(panel_set(n, seed, base_list=base_list), Path(tmp))
        rows += evaluate(overlay_set(n, seed, base_list=base_list), Path(tmp))
    for r in rows:
        r["raw_confidence"] = r["raw_confidence"] if r["claimed"] else None
    return rows


def plain_readings() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = evaluate(plain_set(), Path(tmp))
    return [r | {"correct": False} for r in rows if r["claimed"]]


def ece(conf: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges, edges[1:]):
        sel = (conf >= lo) & ((conf < hi) | (hi == 1.0))
        if sel.any():
            total += sel.sum() * abs(right[sel].mean() - conf[sel].mean())
    return total / max(1, len(conf))


def reliability(conf: np.ndarray, right: np.ndarray, title: str) -> None:
    print(f"\n{title}: {len(conf)} readings, ECE {ece(conf, right):.3f}")
    print(f"  {'confidence':14s} {'n':>5s} {'mean conf':>9s} {'right':>7s}")
    edges = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0]
    for lo, hi in zip(edges, edges[1:]):
        sel = (conf >= lo) & ((conf < hi) | (hi == 1.0))
        if sel.any():
            print(f"  [{lo:.2f}, {hi:.2f}{']' if hi == 1.0 else ')'}   {sel.sum():5d} {conf[sel].mean():9.3f} "
                  f"{right[sel].mean():7.3f}")


def threshold(conf: np.ndarray, right: np.ndarray, target: float = 0.99) -> tuple[float, int, int]:
    """The lowest confidence from which on the readings at or above every higher threshold stay
    right >= target of the time (so that "confident" never gets less precise as it rises)."""
    ts = sorted(set(np.round(conf, 3)))
    ok = [t for t in ts if (conf >= t).sum() >= 20 and right[conf >= t].mean() >= target]
    for t in ts:
        if t in ok and all(u in ok or (conf >= u).sum() < 20 for u in ts if u >= t):
            sel = conf >= t
            return float(t), int(sel.sum()), int(right[sel].sum())
    return 0.99, 0, 0


def fit(raw: np.ndarray, right: np.ndarray) -> list[tuple[float, float]]:
    """Isotonic fit of right/wrong on the raw score, each distinct score's share of right
    readings taken as (right + 1) / (n + 2) (a uniform prior: three right of three is 0.8, not
    certainty), weighted by n + 2."""
    xs = np.unique(np.round(raw, 4))
    k = np.array([right[np.round(raw, 4) == x].sum() for x in xs])
    n = np.array([(np.round(raw, 4) == x).sum() for x in xs])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(xs, (k + 1) / (n + 2),
                                                                              sample_weight=n + 2)
    ys = iso.predict(xs)
    table: list[tuple[float, float]] = []
    for x, y in zip(xs, ys):
        if len(table) >= 2 and abs(table[-1][1] - y) < 1e-9 and abs(table[-2][1] - y) < 1e-9:
            table[-1] = (float(x), float(y))  # a flat run needs only its two ends
        else:
            table.append((float(x), float(y)))
    if table and table[0][0] > 0.0:
        table.insert(0, (0.0, 0.0))  # below the lowest score seen, nothing is known: fall to 0, not flat
    return [(round(x, 4), round(min(y, 0.99), 4)) for x, y in table]


def fit_tables(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    tables = {}
    for path in PATHS:
        sel = [r for r in rows if (r.get("path") or "data bar") == path]
        if len(sel) >= 10:
            tables[path] = fit(np.array([r["raw_confidence"] for r in sel]),
                               np.array([r["correct"] for r in sel], float))
    tables.setdefault("data bar", [(0.0, 0.0), (1.0, 1.0)])
    return tables


def apply(tables: dict, r: dict) -> float:
    table = tables.get(r.get("path") or "data bar") or tables["data bar"]
    return float(np.clip(np.interp(r["raw_confidence"], [p[0] for p in table], [p[1] for p in table]), 0, 0.99))


PATHS = ("data bar", "panel", "overlay")


def collect(n: int, seeds: tuple[int, int], cache: Path | None) -> dict:
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    base_list = bases()
    data = {"real": real_readings(), "plain": plain_readings(),
            "composites": {str(s): composite_readings(n, s, base_list) for s in seeds}}
    if cache is not None:
        cache.write_text(json.dumps(data, default=float))
    return data


def main(n: int, fit_seed: int, test_seed: int, write: bool, cache: Path | None) -> None:
    data = collect(n, (fit_seed, test_seed), cache)
    real, plain = data["real"], data["plain"]
    comp = {int(k): v for k, v in data["composites"].items()}
    claimed = {s: [r for r in rows if r["claimed"]] for s, rows in comp.items()}
    # two-fold: the tables fitted on one seed's composites (with the real readings and the false
    # positives) are judged on the other seed's; the tables kept are fitted on everything
    cv_conf, cv_right, cv_rows = [], [], []
    for a, b in ((fit_seed, test_seed), (test_seed, fit_seed)):
        tables_a = fit_tables(claimed[a] + real + plain)
        cv_conf += [apply(tables_a, r) for r in claimed[b]]
        cv_right += [float(r["correct"]) for r in claimed[b]]
        cv_rows += claimed[b]
    hc, hr = np.array(cv_conf), np.array(cv_right)
    hraw = np.array([r["raw_confidence"] for r in cv_rows])
    everything = claimed[fit_seed] + claimed[test_seed] + real + plain
    tables = fit_tables(everything)
    print(f"readings: {len(everything)} ({len(real)} real, {len(plain)} false positives on the plain images, "
          f"{len(claimed[fit_seed]) + len(claimed[test_seed])} composites of seeds {fit_seed} and {test_seed}; "
          f"{sum(len(v) for v in comp.values())} composites drawn)")
    for path, table in tables.items():
        print(f"  table '{path}': {table}")
    print("\nraw score against right, all readings, by path:")
    by: dict[tuple, list[float]] = defaultdict(list)
    for r in everything:
        by[(r.get("path"), round(r["raw_confidence"], 2))].append(r["correct"])
    for k in sorted(by, key=lambda k: (str(k[0]), k[1])):
        print(f"  {str(k[0]):9s} raw {k[1]:.2f}: {sum(by[k]):4.0f}/{len(by[k]):<4d} right")
    reliability(hraw, hr, "composites, each seed judged by the tables of the other (two-fold), raw score")
    reliability(hc, hr, "composites, each seed judged by the tables of the other (two-fold), calibrated")
    for path in PATHS:
        sel = [i for i, r in enumerate(cv_rows) if (r.get("path") or "data bar") == path]
        if sel:
            reliability(hc[sel], hr[sel], f"  of which path '{path}'")
    rc = np.array([apply(tables, r) for r in real])
    rr = np.array([r["correct"] for r in real], float)
    reliability(rc, rr, "real readings (in the fit), calibrated")
    t, k, ok = threshold(hc, hr)
    print(f"\nprecision >= 99% on the two-fold composites from calibrated confidence {t} ({ok}/{k} right)")
    above_real = rc >= t
    print(f"real readings at or above it: {int(rr[above_real].sum())}/{int(above_real.sum())} right")
    wrong_label = [r for r in everything if not r["label_ok"] and r.get("bar_ok") is not None]
    bar_right = [r["bar_ok"] for r in wrong_label]
    from_bar = round(float(np.mean(bar_right)), 3) if bar_right else 0.5
    print(f"bars measured right (±2%) when the label was wrong: {sum(bar_right)}/{len(bar_right)} = {from_bar}")
    ece_raw, ece_cal = ece(hraw, hr), ece(hc, hr)
    if write:
        block = (f"FIT = {{\"fitted\": True, \"readings\": {len(everything)}, \"two_fold\": {len(cv_rows)}, "
                 f"\"ece_raw\": {ece_raw:.3f}, \"ece\": {ece_cal:.3f}}}\n"
                 f"TABLES: dict[str, list[tuple[float, float]]] = {{\n"
                 + "".join(f"    {p!r}: [\n" + "".join(f"        {pt},\n" for pt in tables[p]) + "    ],\n"
                           for p in tables) +
                 f"}}\n"
                 f"CONFIDENT = {t}\n"
                 f"LABEL_FROM_BAR = {min(from_bar, 0.9)}  # share of bars measured right (±2%) when their label "
                 f"was misread or not read\n")
        src = CAL.read_text()
        src = re.sub(r"(# ---- fitted by bench/scale_calibrate.py \(do not edit by hand\) -+\n).*?(# ---- end)",
                     lambda m: m.group(1) + block + m.group(2), src, flags=re.S)
        CAL.write_text(src)
        print(f"written to {CAL}")


if __name__ == "__main__":
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cache_arg = next((a.split("=", 1)[1] for a in flags if a.startswith("--cache=")), None)
    main(int(args[0]) if args else 240, int(args[1]) if len(args) > 1 else 10, int(args[2]) if len(args) > 2 else 20,
         "--write" in flags, Path(cache_arg) if cache_arg else None)
