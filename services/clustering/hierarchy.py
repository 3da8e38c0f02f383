"""Agglomerative hierarchical clustering (single, complete, centroid, Ward) with fastcluster.

Single, centroid and Ward use fastcluster's ``linkage_vector``: O(N·D) memory, so the paper's
52,682 points (and the lab's 150,000) fit. Complete linkage has no such path: it needs the N²/2
pairwise distances, so it refuses with a clear message when they exceed ``memory_budget_bytes``,
or runs on a random ``sample_size`` subset and assigns every other point to the cluster of its
nearest sampled point. The fitted ``linkage_`` (SciPy format) can be cut at any k.

Bad input raises :class:`ValueError`, as scikit-learn's estimators do; the callers that face
users (the analysis, the subcategory job) turn it into their own error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from scipy.cluster.hierarchy import fcluster
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, validate_data

METHODS = ("single", "complete", "centroid", "ward")
VECTOR_METHODS = {"single", "centroid", "ward"}
DEFAULT_BUDGET = 2 * 1024**3


def check_features(X: ArrayLike, dtype: DTypeLike = np.float64) -> np.ndarray:
    """``X`` as a non-empty 2-D array of finite values, or a :class:`ValueError` saying what is wrong."""
    X = np.asarray(X, dtype=dtype)
    if X.ndim != 2 or X.size == 0:
        raise ValueError(f"features must be a non-empty 2-D array, got shape {X.shape}")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise ValueError(f"{bad} feature vector(s) contain NaN or infinity")
    return X


def validate_features(estimator: BaseEstimator, X: Any, *, reset: bool = True,
                      dtype: DTypeLike = np.float64) -> np.ndarray:
    """scikit-learn's :func:`~sklearn.utils.validation.validate_data` (dense only, no complex
    numbers; records ``n_features_in_``/``feature_names_in_`` when ``reset``, checks them otherwise),
    then :func:`check_features`, whose messages say how many vectors hold NaN or infinity."""
    X = validate_data(estimator, X, reset=reset, dtype=dtype, ensure_all_finite=False, ensure_min_samples=0)
    return check_features(X, dtype)


def check_n_clusters(n_clusters: Any, name: str = "n_clusters") -> int:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"{name} must be a positive integer, got {n_clusters!r}")
    return int(n_clusters)


def pairwise_bytes(n: int) -> int:
    return n * (n - 1) // 2 * 8


def cut(linkage: np.ndarray, k: int) -> np.ndarray:
    """Labels 0..k-1 of the hierarchy cut into (at most) ``k`` clusters."""
    n = len(linkage) + 1
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} is outside 1..{n} (the number of points)")
    return fcluster(linkage, k, criterion="maxclust") - 1


class Hierarchical(ClusterMixin, BaseEstimator):
    """Agglomerative hierarchical clustering whose fitted hierarchy can be cut at any k.

    Parameters
    ----------
    method : {"single", "complete", "centroid", "ward"}, default="ward"
        Linkage criterion.
    n_clusters : int, default=2
        Number of clusters of :attr:`labels_` (the cut made by :meth:`fit`); :meth:`labels_at`
        cuts the same fitted hierarchy at any other k without refitting.
    memory_budget_bytes : int, default=2 GiB
        Complete linkage only: the most memory its N²/2 pairwise distances (float64) may take;
        above it :meth:`fit` raises :class:`ValueError` unless ``sample_size`` brings it under.
    sample_size : int or None, default=None
        Complete linkage only: build the hierarchy on this many randomly drawn points and give
        every other point the cluster of its nearest sampled point. None: all points.
    seed : int, default=0
        Seed of the random sample (``sample_size``).

    Attributes
    ----------
    linkage_ : ndarray of shape (n_leaves - 1, 4)
        The hierarchy, in SciPy's linkage format (leaves: the points, or the sampled points).
    labels_ : ndarray of shape (n_samples,)
        Cluster of every point, 0..n_clusters-1: the hierarchy cut at ``n_clusters``.
    max_k_ : int
        The most clusters the hierarchy can be cut into (its number of leaves).
    sample_index_ : ndarray of shape (sample_size,) or None
        Indices of the sampled points the hierarchy was built on; None when built on all.
    nearest_sample_ : ndarray of shape (n_samples,) or None
        For every point, the position (in ``sample_index_``) of its nearest sampled point;
        None when the hierarchy was built on all points.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` had string column names.
    """

    linkage_: np.ndarray
    max_k_: int

    def __init__(self, method: str = "ward", *, n_clusters: int = 2, memory_budget_bytes: int = DEFAULT_BUDGET,
                 sample_size: int | None = None, seed: int = 0) -> None:
        self.method = method
        self.n_clusters = n_clusters
        self.memory_budget_bytes = memory_budget_bytes
        self.sample_size = sample_size
        self.seed = seed

    def fit(self, X: ArrayLike, y: object = None) -> Hierarchical:
        """Build the hierarchy of ``X`` (n_samples, n_features) and cut it at ``n_clusters``.

        ``y`` is ignored (present for the scikit-learn API). Returns the fitted estimator.
        """
        import fastcluster

        if self.method not in METHODS:
            raise ValueError(f"unknown linkage {self.method!r}; choose from {', '.join(METHODS)}")
        n_clusters = check_n_clusters(self.n_clusters)
        X = validate_features(self, X)
        n = len(X)
        if n < 2:
            raise ValueError(f"clustering needs at least 2 points (n_samples = {n})")
        self.sample_index_ = None
        self.nearest_sample_ = None
        if self.method in VECTOR_METHODS:
            self.linkage_ = fastcluster.linkage_vector(X, method=self.method)
        else:
            m = min(self.sample_size, n) if self.sample_size else n
            if pairwise_bytes(m) > self.memory_budget_bytes:
                raise ValueError(
                    f"complete linkage of {m:,} points needs {pairwise_bytes(m) / 1024**3:.1f} GiB of pairwise "
                    f"distances, over the {self.memory_budget_bytes / 1024**3:.1f} GiB budget; run it on a sample "
                    f"(at most {int((2 * self.memory_budget_bytes / 8) ** 0.5):,} points) or raise the budget")
            if m < n:
                idx = np.sort(np.random.default_rng(self.seed).choice(n, m, replace=False))
                sample = X[idx]
                self.sample_index_ = idx
                self.nearest_sample_ = cKDTree(sample).query(X, k=1, workers=-1)[1]
                self.linkage_ = fastcluster.linkage(sample, method="complete", metric="euclidean")
            else:
                self.linkage_ = fastcluster.linkage(X, method="complete", metric="euclidean")
        self.max_k_ = len(self.linkage_) + 1
        if n_clusters > self.max_k_:
            raise ValueError(f"n_clusters = {n_clusters} exceeds the {self.max_k_} leaves of the hierarchy")
        self.labels_ = self.labels_at(n_clusters)
        return self

    def labels_at(self, k: int) -> np.ndarray:
        """Cluster labels (0..k-1) of all fitted points, the hierarchy cut at ``k`` clusters
        (1 ≤ k ≤ :attr:`max_k_`); raises :class:`ValueError` outside that range."""
        check_is_fitted(self, "linkage_")
        if not 1 <= k <= self.max_k_:
            leaves = "sampled points" if self.sample_index_ is not None else "number of points"
            raise ValueError(f"k = {k} is outside 1..{self.max_k_} (the {leaves})")
        labels = cut(self.linkage_, k)
        return labels if self.nearest_sample_ is None else labels[self.nearest_sample_]

    def labels(self, k: int) -> np.ndarray:
        """Same as :meth:`labels_at` (the name earlier callers use)."""
        return self.labels_at(k)
