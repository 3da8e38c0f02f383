"""Scoring clusterings against hand labels: NMI (and ARI) over k, with the paper's two references.

* "good" scenario: start from the true labels (k = number of classes) and repeatedly split the
  largest cluster evenly in two: the best a clustering that refines the labels can do.
* "uniform" scenario: k labels drawn uniformly at random: what chance gives at that k.

Bad input (k out of range, nothing labelled) raises :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def k_grid(n: int, start: int = 10, points: int = 12, stop: int | None = None) -> list[int]:
    """k from ``start`` to ``stop`` (default N) on a log scale, unique integers."""
    stop = min(stop or n, n)
    if start > stop:
        raise ValueError(f"k from {start} exceeds the number of points {stop}")
    return sorted({int(round(v)) for v in np.geomspace(start, stop, points)})


def good_scenario(labels: np.ndarray, k: int) -> np.ndarray:
    labels = np.asarray(labels)
    out = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    c = out.max() + 1
    if k < c:
        raise ValueError(f"the good scenario starts at the {c} labels; k = {k} is fewer")
    if k > len(labels):
        raise ValueError(f"k = {k} exceeds the number of points {len(labels)}")
    sizes = np.bincount(out).tolist()
    while c < k:
        big = int(np.argmax(sizes))
        members = np.flatnonzero(out == big)
        half = members[len(members) // 2:]
        out[half] = c
        sizes[big] = len(members) - len(half)
        sizes.append(len(half))
        c += 1
    return out


def uniform_scenario(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def size_stats(labels: np.ndarray) -> dict:
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    return {"clusters": int(len(sizes)), "min": int(sizes.min()), "median": float(np.median(sizes)),
            "max": int(sizes.max()), "singletons": int((sizes == 1).sum())}


def score_curve(cut: Callable[[int], np.ndarray], truth: np.ndarray, ks: list[int],
                labelled: np.ndarray | None = None) -> list[dict]:
    """NMI/ARI of ``cut(k)`` against ``truth`` (on ``labelled`` points only) for every k."""
    truth = np.asarray(truth)
    mask = np.ones(len(truth), bool) if labelled is None else np.asarray(labelled, bool)
    if not mask.any():
        raise ValueError("no labelled points to score against")
    rows = []
    for k in ks:
        lab = cut(k)
        rows.append({"k": k, "nmi": float(normalized_mutual_info_score(truth[mask], lab[mask])),
                     "ari": float(adjusted_rand_score(truth[mask], lab[mask])), **size_stats(lab)})
    return rows


def reference_curves(truth: np.ndarray, ks: list[int], seed: int = 0) -> dict[str, list[dict]]:
    truth = np.asarray(truth)
    c = len(np.unique(truth))
    good = [{"k": k, "nmi": float(normalized_mutual_info_score(truth, good_scenario(truth, k)))}
            for k in ks if k >= c]
    uniform = [{"k": k, "nmi": float(normalized_mutual_info_score(truth, uniform_scenario(len(truth), k, seed)))}
               for k in ks]
    return {"good": good, "uniform": uniform}
