"""Scale reading on the real SEM images in ../shared/data/sem-real (MANIFEST.tsv truth).

Reports, per vendor style and overall: exact value + unit of the bar label, pixel-size error
(metadata; and the OCR reading alone, bar length × label, computed here), share of images with
a reading, confidently wrong answers (at or above services.scale.calibration.CONFIDENT), how
many exact readings came through the glyph-by-glyph path, and accuracy per confidence band.
The images with metadata are also read as JPEG exports would be: re-encoded at quality 75 and
90 (no tags, no sidecar), so that only the data bar can give the scale.

Time per image is CPU time of this process (one thread: Tesseract's OpenMP is limited to one,
the process is pinned to one core), which other load on a shared machine barely changes; the
wall-clock time is given beside it. Usage: python bench/scale_real.py [DATA_DIR] [REPEATS]
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says

import cv2

from services.images.imaging import load_gray
from services.scale.calibration import BANDS, CONFIDENT
from services.scale.reader import read_scale, sidecar_for
from services.scale.units import parse_length


def group_of(row: dict) -> str:
    src = row["source_repo"].lower() + " " + row["notes"].lower() + " " + row["file"].lower()
    for key, name in (("zeiss", "Zeiss"), ("fei", "FEI/Thermo"), ("helios", "FEI/Thermo"), ("tescan", "TESCAN"),
                      ("hitachi", "Hitachi"), ("oharamika", "Hitachi"), ("baiyubaiyu", "JEOL-style"),
                      ("sahilsonii", "mixed JPEG (Zeiss/JEOL-style)")):
        if key in src:
            return name
    return "plain (no bar)" if row["kind"] == "plain" else "other"


def truth_of(row: dict) -> tuple[tuple[float, str] | None, float | None]:
    t = row["scale_truth"]
    bar = parse_length(t.split("bar=")[1].split(";")[0].replace("*", "")) if "bar=" in t else None
    px = float(t.split("px=")[1].split()[0]) if "px=" in t else None
    return bar, px


def timed(path: Path, sidecar: Path | None, repeats: int) -> tuple[object, float, float]:
    """The reading, and its CPU and wall time in ms (the fastest of ``repeats`` runs)."""
    best_cpu = best_wall = float("inf")
    res = None
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        res = read_scale(path, sidecar=sidecar)
        best_cpu = min(best_cpu, (time.process_time() - c) * 1000)
        best_wall = min(best_wall, (time.perf_counter() - t) * 1000)
    return res, best_cpu, best_wall


def band_of(conf: float) -> str:
    for lo, hi in zip(BANDS, BANDS[1:]):
        if lo <= conf < hi:
            return f"[{lo:.2f}, {hi:.2f})"
    return f"[{BANDS[-1]:.2f}, 1]"


def main(root: Path, repeats: int) -> None:
    rows = [r for r in csv.DictReader(open(root / "MANIFEST.tsv"), delimiter="\t") if not r["file"].endswith(".txt")]
    stats: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    bands: dict[str, list[bool]] = defaultdict(list)
    slow: list[tuple[float, str]] = []
    read_scale(root / rows[0]["file"])  # load Tesseract's model once, outside the timings
    tmp = Path(tempfile.mkdtemp())
    for r in rows:
        path = root / r["file"]
        res, cpu, wall = timed(path, sidecar_for(path), repeats)
        slow.append((cpu, r["file"]))
        bar, px = truth_of(r)
        o = res.detail.get("ocr", {})
        for g in (group_of(r), "ALL"):
            s = stats[g]
            s["cpu"].append(cpu)
            s["wall"].append(wall)
            s["read"].append(res.source != "none")
            if bar:
                exact = (res.scale_value, res.scale_unit) == bar
                s["exact"].append(exact)
                s["glyphs"].append(exact and o.get("label") == "read glyph by glyph"
                                   and res.source == "ocr")
                if not exact and res.scale_value is not None and (res.confidence or 0) >= CONFIDENT:
                    s["confident_wrong"].append(r["file"])
                if g == "ALL" and res.scale_value is not None:
                    bands[band_of(res.confidence or 0)].append(exact)
                    s["confident_right"].append(exact and (res.confidence or 0) >= CONFIDENT)
            if px and res.pixel_size_nm:
                s["px_err"].append(abs(res.pixel_size_nm - px) / px)
            if bar and px:  # metadata images: the data bar alone, as a JPEG export would be read
                s["ocr_only"].append((o.get("scale_value"), o.get("scale_unit")) == bar)
                if o.get("pixel_size_nm"):
                    s["ocr_px_err"].append(abs(o["pixel_size_nm"] - px) / px)
                gray = load_gray(path, 150_000_000)
                for q in (75, 90):
                    jpg = tmp / f"q{q}_{path.stem}.jpg"
                    cv2.imwrite(str(jpg), gray, [cv2.IMWRITE_JPEG_QUALITY, q])
                    rj = read_scale(jpg)
                    jexact = (rj.scale_value, rj.scale_unit) == bar
                    s[f"jpeg{q}"].append(jexact)
                    if rj.pixel_size_nm:
                        s[f"jpeg{q}_px_err"].append(abs(rj.pixel_size_nm - px) / px)
                    if not jexact and rj.scale_value is not None and (rj.confidence or 0) >= CONFIDENT:
                        s["confident_wrong"].append(f"{r['file']} (JPEG q{q})")
                    jpg.unlink()

    def frac(v: list) -> str:
        return f"{sum(v)}/{len(v)}" if v else "-"

    def pct_max(v: list) -> str:
        return f"{100 * max(v):.2f}%" if v else "-"

    print(f"{'group':30s} {'n':>3s} {'exact':>7s} {'glyph':>5s} {'px err':>7s} {'OCR alone':>9s} {'OCR px':>7s} "
          f"{'JPEG q75':>8s} {'q90':>6s} {'JPEG px':>7s} {'read':>5s} {'c.wrong':>7s} {'cpu ms':>6s} {'max':>5s} "
          f"{'wall':>5s}")
    for g in sorted(stats, key=lambda k: (k == "ALL", k)):
        s = stats[g]
        n = len(s["cpu"])
        jpx = s["jpeg75_px_err"] + s["jpeg90_px_err"]
        print(f"{g:30s} {n:3d} {frac(s['exact']):>7s} {sum(s['glyphs']) if s['exact'] else '-':>5} "
              f"{pct_max(s['px_err']):>7s} {frac(s['ocr_only']):>9s} {pct_max(s['ocr_px_err']):>7s} "
              f"{frac(s['jpeg75']):>8s} {frac(s['jpeg90']):>6s} {pct_max(jpx):>7s} "
              f"{100 * sum(s['read']) / n:4.0f}% {len(s['confident_wrong']):7d} "
              f"{sum(s['cpu']) / n:6.0f} {max(s['cpu']):5.0f} {sum(s['wall']) / n:5.0f}")
    a = stats["ALL"]
    print(f"\nexact value+unit: {frac(a['exact'])} ({sum(a['glyphs'])} of the exact OCR readings via the glyph path); "
          f"the metadata images from their data bar alone: {frac(a['ocr_only'])}, as JPEG q75 {frac(a['jpeg75'])}, "
          f"q90 {frac(a['jpeg90'])}; confidently wrong (>= {CONFIDENT}): {a['confident_wrong']}")
    print(f"exact and confident (>= {CONFIDENT}): {sum(a['confident_right'])}/{len(a['exact'])}")
    print("readings per confidence band (images with a readable bar):")
    for b in sorted(bands):
        print(f"  {b:14s} {sum(bands[b]):3d}/{len(bands[b]):<3d} exact")
    slow.sort(reverse=True)
    print("slowest (cpu ms):", ", ".join(f"{Path(f).name} {ms:.0f}" for ms, f in slow[:4]))


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sem-real"
    args = sys.argv[1:]
    main(Path(args[0]) if args and not args[0].isdigit() else default,
         int(args[-1]) if args and args[-1].isdigit() else 1)
