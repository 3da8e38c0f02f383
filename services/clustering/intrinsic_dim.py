"""The 2-NN intrinsic dimension estimator (Facco, d'Errico, Rodriguez & Laio 2017).

For every point, μ = r₂ / r₁ (second over first nearest-neighbour distance) follows a Pareto law
with shape d. The estimate is the slope of the line through the origin fitting
−log(1 − F(μ)) against log μ, on the fraction of points with the smallest μ (the paper: 90%).
:func:`id_by_decimation` repeats it on random subsets of decreasing size (the paper's Figure 3):
a plateau across sizes is the dimension at that scale.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator
from sklearn.utils.validation import validate_data


def _check(X: ArrayLike) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D array (points × dimensions), got shape {X.shape}")
    if len(X) < 3:
        raise ValueError(f"the 2-NN estimate needs at least 3 points (n_samples = {len(X)})")
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or infinity")
    return X


def two_nearest(X: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(N, 2) distances to each point's first and second nearest neighbours (itself excluded).

    A k-d tree in low dimension; in high dimension (the 1,001 logits) k-d trees degrade to worse
    than brute force, so distances come from chunked matrix products (BLAS), O(chunk·N) memory.
    """
    if X.shape[1] <= 16:
        d, _ = cKDTree(X).query(X, k=3, workers=-1)
        return d[:, 1:3]
    Xf = X.astype(np.float32)
    sq = (Xf * Xf).sum(1)
    out = np.empty((len(X), 2))
    for a in range(0, len(X), chunk):
        b = min(a + chunk, len(X))
        d2 = sq[a:b, None] + sq[None, :] - 2.0 * (Xf[a:b] @ Xf.T)
        d2[np.arange(b - a), np.arange(a, b)] = np.inf  # not its own neighbour
        part = np.partition(d2, 1, axis=1)[:, :2]
        out[a:b] = np.sqrt(np.maximum(np.sort(part, axis=1), 0.0))
    return out


def two_nn_ratios(X: ArrayLike) -> np.ndarray:
    """μ = r₂/r₁ for every point with r₁ > 0 (exact duplicates carry no information and are dropped)."""
    X = _check(X)
    d = two_nearest(X)
    r1, r2 = d[:, 0], d[:, 1]
    ok = r1 > 0
    return r2[ok] / r1[ok]


class TwoNN(BaseEstimator):
    """The 2-NN intrinsic dimension of a point cloud (see the module's description).

    An estimator, not a transformer: fitting yields one number, :attr:`dimension_`.

    Parameters
    ----------
    fraction : float, default=0.9
        Share of the points (those with the smallest μ = r₂/r₁) used in the linear fit, in (0, 1].

    Attributes
    ----------
    dimension_ : float
        The intrinsic dimension estimate.
    x_ : ndarray of shape (n_fit,)
        log μ of the points in the fit (sorted).
    y_ : ndarray of shape (n_fit,)
        −log(1 − F(μ)) of the same points; ``dimension_`` is the slope of ``y_`` against ``x_``.
    n_points_ : int
        Number of points with a distinct nearest neighbour (exact duplicates are left out).
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` had string column names.
    """

    dimension_: float

    def __init__(self, fraction: float = 0.9) -> None:
        self.fraction = fraction

    def fit(self, X: ArrayLike, y: object = None) -> TwoNN:
        """Estimate the intrinsic dimension of ``X`` (n_samples, n_features); ``y`` is ignored.
        Returns the fitted estimator (the estimate is :attr:`dimension_`)."""
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, Real) or not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False, ensure_min_samples=0)
        mu = np.sort(two_nn_ratios(X))
        n = len(mu)
        if n < 3:
            raise ValueError("fewer than 3 distinct points: no intrinsic dimension")
        f = np.arange(1, n + 1) / n  # empirical CDF, as in Facco et al.
        keep = int(np.floor(n * self.fraction))
        keep = min(max(keep, 2), n - 1)  # F = 1 at the last point: −log(0) is excluded
        x = np.log(mu[:keep])
        yv = -np.log(1.0 - f[:keep])
        self.dimension_ = float((x @ yv) / (x @ x))
        self.x_, self.y_, self.n_points_ = x, yv, n
        return self


def subsample(X: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` rows, drawn at random: the 2-NN cost grows as N² in high dimension,
    and the estimate of the first decimation level already uses a subset."""
    if len(X) <= max_points:
        return X
    return X[np.sort(np.random.default_rng(seed).choice(len(X), max_points, replace=False))]


def id_by_decimation(X: ArrayLike, fractions: tuple[float, ...] = (0.9, 0.7, 0.5), min_points: int = 20,
                     repeats: int = 5, seed: int = 0) -> list[dict]:
    """ID against sample size: N, N/2, N/4, … (≥ ``min_points``), mean and std over ``repeats`` subsets."""
    X = _check(X)
    rng = np.random.default_rng(seed)
    out = []
    n = len(X)
    while n >= max(min_points, 3):
        row: dict = {"n": n}
        for frac in fractions:
            vals = []
            for _ in range(repeats if n < len(X) else 1):
                idx = rng.choice(len(X), n, replace=False) if n < len(X) else np.arange(n)
                vals.append(TwoNN(frac).fit(X[idx]).dimension_)
            row[f"id_{int(frac * 100)}"] = float(np.mean(vals))
            row[f"std_{int(frac * 100)}"] = float(np.std(vals))
        out.append(row)
        n //= 2
    return out
