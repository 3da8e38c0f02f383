"""Agglomerative hierarchical clustering (single, complete, centroid, Ward) with fastcluster.

Single, centroid and Ward use fastcluster's ``linkage_vector``: O(N·D) memory, so the paper's
52,682 points (and the lab's 150,000) fit. Complete linkage has no such path: it needs the N²/2
pairwise distances, so it refuses with a clear message when they exceed ``memory_budget_bytes``,
or runs on a random ``sample_size`` subset and assigns every other point to the cluster of its
nearest sampled point. The fitted ``linkage_`` (SciPy format) can be cut at any k.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.spatial import cKDTree

from services.errors import BadInput

METHODS = ("single", "complete", "centroid", "ward")
VECTOR_METHODS = {"single", "centroid", "ward"}
DEFAULT_BUDGET = 2 * 1024**3


def check_features(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise BadInput(f"features must be a non-empty 2-D array, got shape {X.shape}", "bad_features")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise BadInput(f"{bad} feature vector(s) contain NaN or infinity", "bad_features")
    return X


def pairwise_bytes(n: int) -> int:
    return n * (n - 1) // 2 * 8


def cut(linkage: np.ndarray, k: int) -> np.ndarray:
    """Labels 0..k-1 of the hierarchy cut into (at most) ``k`` clusters."""
    n = len(linkage) + 1
    if not 1 <= k <= n:
        raise BadInput(f"k = {k} is outside 1..{n} (the number of points)", "bad_k")
    return fcluster(linkage, k, criterion="maxclust") - 1


class Hierarchical:
    def __init__(self, method: str = "ward", memory_budget_bytes: int = DEFAULT_BUDGET,
                 sample_size: int | None = None, seed: int = 0):
        if method not in METHODS:
            raise BadInput(f"unknown linkage {method!r}; choose from {', '.join(METHODS)}", "bad_params")
        self.method, self.memory_budget_bytes, self.sample_size, self.seed = (
            method, memory_budget_bytes, sample_size, seed)

    def fit(self, X: np.ndarray, y=None) -> Hierarchical:  # noqa: ANN001
        import fastcluster

        X = check_features(X)
        n = len(X)
        if n < 2:
            raise BadInput("clustering needs at least 2 points", "bad_features")
        self.n_ = n
        self.sample_index_ = None
        if self.method in VECTOR_METHODS:
            self.linkage_ = fastcluster.linkage_vector(X, method=self.method)
            return self
        m = min(self.sample_size, n) if self.sample_size else n
        if pairwise_bytes(m) > self.memory_budget_bytes:
            raise BadInput(
                f"complete linkage of {m:,} points needs {pairwise_bytes(m) / 1024**3:.1f} GiB of pairwise distances, "
                f"over the {self.memory_budget_bytes / 1024**3:.1f} GiB budget; run it on a sample "
                f"(at most {int((2 * self.memory_budget_bytes / 8) ** 0.5):,} points) or raise the budget",
                "memory_budget")
        if m < n:
            idx = np.sort(np.random.default_rng(self.seed).choice(n, m, replace=False))
            self.sample_index_ = idx
            self._sample = X[idx]
            self._rest_nn = cKDTree(self._sample).query(X, k=1, workers=-1)[1]
            self.linkage_ = fastcluster.linkage(self._sample, method="complete", metric="euclidean")
        else:
            self.linkage_ = fastcluster.linkage(X, method="complete", metric="euclidean")
        return self

    def labels(self, k: int) -> np.ndarray:
        """Cluster labels of all N points at ``k`` clusters."""
        if self.sample_index_ is None:
            if not 1 <= k <= self.n_:
                raise BadInput(f"k = {k} is outside 1..{self.n_} (the number of points)", "bad_k")
            return cut(self.linkage_, k)
        return cut(self.linkage_, k)[self._rest_nn]

    def fit_predict(self, X: np.ndarray, k: int) -> np.ndarray:
        return self.fit(X).labels(k)
