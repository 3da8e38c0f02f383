"""Scale reading on the real SEM images in ../shared/data/sem-real (MANIFEST.tsv truth).

Reports per vendor group and overall: exact value + unit of the bar label, pixel-size relative
error, share of images with a reading, confident wrong answers (confidence >= 0.7), ms per image
(the process pinned to one core, Tesseract to one thread); and, for images with metadata, whether
the data bar alone (OCR, as in a JPEG export of the same image) gives the exact label.
Usage: python bench/scale_real.py [DATA_DIR]
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says

from services.scale.reader import read_scale, sidecar_for
from services.scale.units import parse_length

CONFIDENT = 0.7


def group_of(row: dict) -> str:
    src = row["source_repo"].lower() + " " + row["notes"].lower() + " " + row["file"].lower()
    for key, name in (("zeiss", "Zeiss"), ("fei", "FEI/Thermo"), ("helios", "FEI/Thermo"), ("tescan", "TESCAN"),
                      ("hitachi", "Hitachi"), ("oharamika", "Hitachi"), ("baiyubaiyu", "JEOL-style"),
                      ("sahilsonii", "mixed JPEG (Zeiss/JEOL-style)")):
        if key in src:
            return name
    return "plain (no bar)" if row["kind"] == "plain" else "other"


def main(root: Path) -> None:
    rows = [r for r in csv.DictReader(open(root / "MANIFEST.tsv"), delimiter="\t") if not r["file"].endswith(".txt")]
    stats: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    read_scale(root / rows[0]["file"])  # load Tesseract's model once, outside the timings
    for r in rows:
        path = root / r["file"]
        t = time.perf_counter()
        res = read_scale(path, sidecar=sidecar_for(path))
        ms = (time.perf_counter() - t) * 1000
        truth = r["scale_truth"]
        bar = parse_length(truth.split("bar=")[1].split(";")[0].replace("*", "")) if "bar=" in truth else None
        px = float(truth.split("px=")[1].split()[0]) if "px=" in truth else None
        for g in (group_of(r), "ALL"):
            s = stats[g]
            s["ms"].append(ms)
            s["read"].append(res.source != "none")
            if bar:
                exact = (res.scale_value, res.scale_unit) == bar
                s["exact"].append(exact)
                if not exact and res.scale_value is not None and (res.confidence or 0) >= CONFIDENT:
                    s["confident_wrong"].append(r["file"])
                if "tiff_metadata" in r["kind"] or "sidecar" in r["kind"]:
                    s["exact_meta"].append(exact)
                    o = res.detail.get("ocr", {})  # the same image as a JPEG export would be read
                    s["ocr_only"].append((o.get("scale_value"), o.get("scale_unit")) == bar)
            if px and res.pixel_size_nm:
                s["px_err"].append(abs(res.pixel_size_nm - px) / px)
            elif px:
                s["px_missing"].append(r["file"])
    print(f"{'group':32s} {'n':>3s} {'exact':>9s} {'exact(meta)':>11s} {'OCR alone':>9s} {'px err max':>10s} "
          f"{'read':>6s} {'conf.wrong':>10s} {'ms/img':>7s} {'max ms':>7s}")
    for g in sorted(stats, key=lambda k: (k == "ALL", k)):
        s = stats[g]
        n = len(s["ms"])
        ex = f"{sum(s['exact'])}/{len(s['exact'])}" if s["exact"] else "-"
        em = f"{sum(s['exact_meta'])}/{len(s['exact_meta'])}" if s["exact_meta"] else "-"
        pe = f"{100 * max(s['px_err']):.2f}%" if s["px_err"] else "-"
        rd = f"{100 * sum(s['read']) / n:.0f}%"
        cw = str(len(s["confident_wrong"]))
        oo = f"{sum(s['ocr_only'])}/{len(s['ocr_only'])}" if s["ocr_only"] else "-"
        ms = sum(s["ms"]) / n
        print(f"{g:32s} {n:3d} {ex:>9s} {em:>11s} {oo:>9s} {pe:>10s} {rd:>6s} {cw:>10s} {ms:7.0f} {max(s['ms']):7.0f}")
    allc = stats["ALL"]
    print(f"\nexact value+unit: {sum(allc['exact'])}/{len(allc['exact'])}; with metadata: "
          f"{sum(allc['exact_meta'])}/{len(allc['exact_meta'])}; confident wrong: {allc['confident_wrong']}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sem-real"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
