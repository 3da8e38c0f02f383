"""Scale reading on composites of real micrographs (bench/scale_sets.py): data panels drawn inside
the frame in six vendor styles, bars drawn straight over the image, and the false-positive rate
on every plain real image.

These are composite figures (a real micrograph under a drawn panel or bar), not real accuracy.
"exact" is value + unit of the label; "correct" adds the pixel size within 2%. "confidently
wrong" counts readings that are not correct at or above the confidence the package calls
confident (services.scale.calibration.CONFIDENT). The process is pinned to one core.
Usage: python bench/scale_composite.py [N_PANELS] [N_OVERLAYS] [SEED]
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.scale_sets import bases, evaluate, overlay_set, panel_set, plain_set, plain_variants
from services.scale.calibration import CONFIDENT


def table(rows: list[dict], key: str) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[str(r[key])].append(r)
        groups["ALL"].append(r)
    print(f"  {key:14s} {'n':>4s} {'exact':>9s} {'correct':>9s} {'conf.wrong':>10s} {'ms/img':>7s}")
    for g in sorted(groups, key=lambda k: (k == "ALL", k)):
        rs = groups[g]
        n = len(rs)
        ex = sum(r["label_ok"] for r in rs)
        ok = sum(r["correct"] for r in rs)
        cw = sum((not r["correct"]) and r["claimed"] and r["confidence"] >= CONFIDENT for r in rs)
        print(f"  {g:14s} {n:4d} {ex:4d} {100 * ex / n:3.0f}% {ok:4d} {100 * ok / n:3.0f}% {cw:10d} "
              f"{np.mean([r['ms'] for r in rs]):7.0f}")


def main(n_panels: int, n_overlays: int, seed: int) -> None:
    base_list = bases()
    with tempfile.TemporaryDirectory() as tmp:
        panels = evaluate(panel_set(n_panels, seed, base_list=base_list), Path(tmp))
        overlays = evaluate(overlay_set(n_overlays, seed, base_list=base_list), Path(tmp))
        plain = evaluate(plain_set(), Path(tmp))
        variants = evaluate(plain_variants(n_overlays, seed), Path(tmp))
    print(f"Panels inside the frame ({len(panels)}, seed {seed}; composite, not real accuracy)")
    table(panels, "kind")
    table(panels, "where")
    print(f"\nBars over the image ({len(overlays)}, seed {seed}; composite, not real accuracy)")
    table(overlays, "halo")
    table(overlays, "fg")
    fp = [r for r in plain if r["claimed"]]
    fpc = [r for r in fp if r["confidence"] >= CONFIDENT]
    print(f"\nFalse positives on the {len(plain)} real images without a bar: {len(fp)} claim a scale "
          f"({100 * len(fp) / len(plain):.1f}%), {len(fpc)} of them confidently: {[r['name'] for r in fp]}")
    fpv = [r for r in variants if r["claimed"]]
    print(f"False positives on {len(variants)} resized/flipped/JPEG versions of them: {len(fpv)} "
          f"({100 * len(fpv) / max(1, len(variants)):.1f}%), "
          f"{sum(r['confidence'] >= CONFIDENT for r in fpv)} confidently")
    cpu = [r["ms"] for r in panels + overlays + plain + variants]
    print(f"CPU ms per image over all of these: mean {np.mean(cpu):.0f}, max {max(cpu):.0f}")
    bad = [r for r in panels + overlays if not r["correct"]]
    for r in bad[:40]:
        print("  miss", r["name"], r["kind"], r.get("where", ""), r.get("halo", ""), r["jpeg"], r["truth"], r["read"],
              round(r["confidence"], 2))


if __name__ == "__main__":
    a = [int(x) for x in sys.argv[1:]]
    main(a[0] if a else 120, a[1] if len(a) > 1 else 120, a[2] if len(a) > 2 else 0)
