"""Issue 6's benchmark: the subcategory job at the paper's size and at the lab's whole archive.

Features: synthetic nested blobs (10 classes × 20 planted subclasses) in a 9-dimensional
subspace of 1,001 dimensions (the paper's logits count), N = 52,682 (the paper) and then 150,000.
Per step: seconds and peak resident memory growth (RSS, measured in a fresh child process per
step, so one step's allocations do not hide another's). Side by side: SciPy's
``scipy.cluster.hierarchy.linkage`` on the same 10-D codes (time and memory ratios) at a size it
can handle. Complete linkage at N > its budget reports how it degrades (refusal, then a sample).

Usage: python bench/clustering_scale.py [--n 52682] [--big 150000] [--scipy-n 20000] [--skip-big]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step(name: str, n: int, q) -> None:
    from services.clustering.synthetic import nested_blobs

    X, cls, sub = nested_blobs(n, dim=1001 if name in ("id", "autoencoder") else 10, latent_dim=9, classes=10,
                               subclasses=20, seed=0)
    base = _rss_mb()
    t = time.perf_counter()
    extra: dict = {}
    if name == "id":
        from services.clustering.analysis import AnalysisConfig
        from services.clustering.intrinsic_dim import TwoNN, subsample

        Xs = subsample(X, AnalysisConfig().id_max_points)  # what the job does: at most 50,000 points
        extra["id"] = TwoNN(0.9).fit(Xs).dimension_
        extra["points_used"] = len(Xs)
    elif name == "autoencoder":
        from services.clustering.autoencoder import Autoencoder

        ae = Autoencoder(code_dim=10, epochs=10, patience=3).fit(X)
        extra["loss"] = ae.reconstruction_loss_
    elif name.startswith("scipy_"):
        from scipy.cluster.hierarchy import linkage

        linkage(X.astype(np.float64), method=name[6:])
    elif name == "density_peaks":
        from services.clustering.density_peaks import DensityPeaks

        dp = DensityPeaks(k=30).fit(X)
        extra["peaks"] = dp.n_peaks_
    elif name.startswith("complete"):
        from services.clustering.hierarchy import Hierarchical

        sample = int(name.split(":")[1]) if ":" in name else None
        try:
            Hierarchical("complete", memory_budget_bytes=4 * 2**30, sample_size=sample).fit(X).labels(10)
        except ValueError as exc:
            extra["refused"] = str(exc)
    else:
        from sklearn.metrics import normalized_mutual_info_score as nmi

        from services.clustering.hierarchy import Hierarchical

        h = Hierarchical(name).fit(X)
        extra["nmi_planted_200"] = float(nmi(sub, h.labels(200)))
    q.put({"step": name, "n": n, "seconds": round(time.perf_counter() - t, 2),
           "peak_rss_growth_mb": round(_rss_mb() - base, 1), **extra})


def run(name: str, n: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_step, args=(name, n, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        return {"step": name, "n": n, "died": f"exit code {p.exitcode} (likely out of memory)"}
    r = q.get()
    print(json.dumps(r), flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=52_682)
    ap.add_argument("--big", type=int, default=150_000)
    ap.add_argument("--scipy-n", type=int, default=20_000)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--only-big", action="store_true")
    args = ap.parse_args()
    if args.only_big:
        print(f"== lab archive: {args.big} points")
        for step in ("id", "single", "centroid", "ward", "density_peaks", "complete", "complete:20000"):
            run(step, args.big)
        return
    print(f"== paper size: {args.n} points (1,001-D features, 10-D codes for clustering)")
    for step in ("id", "autoencoder", "single", "centroid", "ward", "density_peaks", "complete", "complete:20000"):
        run(step, args.n)
    print(f"== side by side with SciPy at {args.scipy_n} points (centroid, 10-D)")
    ours = run("centroid", args.scipy_n)
    theirs = run("scipy_centroid", args.scipy_n)
    if "seconds" in theirs:
        print(f"fastcluster linkage_vector vs SciPy linkage: {theirs['seconds'] / max(ours['seconds'], 1e-3):.1f}x "
              f"faster, {theirs['peak_rss_growth_mb'] / max(ours['peak_rss_growth_mb'], 1):.0f}x less memory")
    if not args.skip_big:
        print(f"== lab archive: {args.big} points")
        for step in ("id", "single", "centroid", "ward", "density_peaks", "complete", "complete:20000"):
            run(step, args.big)


if __name__ == "__main__":
    main()
