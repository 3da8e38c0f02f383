"""Hierarchical density peaks: Rodriguez & Laio (2014) density peaks, merged through saddle densities.

1. Density: k-nearest-neighbour estimate in the data's intrinsic dimension d,
   log ρᵢ = log k − log N − d·log rₖ(i) (constant volume factors dropped: only order matters).
2. Peaks: points denser than all of their k neighbours. Every other point follows its nearest
   neighbour of higher density (the decision-graph δ of Rodriguez & Laio) up to a peak: that
   assigns every point to one peak's cluster.
3. Saddles (as in the Advanced Density Peaks method, d'Errico et al. 2021): two clusters touch
   where a point of one has a point of the other among its k neighbours; the border density of
   such a pair is the smaller of the two, and the saddle of two clusters is the densest border.
4. Hierarchy: the least prominent peak merges first into its neighbour across their saddle
   (prominence = weaker peak's log density − saddle's, the quantity ADP tests for significance);
   merged clusters keep the higher peak and the densest saddle to each neighbour. Written as a
   SciPy linkage matrix (heights: running maximum prominence), so the hierarchy can be cut at any
   k up to the number of peaks. Clusters that never touch merge last.

Vectorised with NumPy and SciPy's cKDTree; memory O(N·k).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike
from scipy.cluster.hierarchy import fcluster
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from services.clustering.hierarchy import check_n_clusters, validate_features


class DensityPeaks(ClusterMixin, BaseEstimator):
    """Hierarchical density-peaks clustering (see the module's description).

    Parameters
    ----------
    k : int, default=30
        Neighbours of the k-nearest-neighbour density estimate, and of the search for saddles;
        at least 2. A smaller k finds more (and less significant) peaks.
    intrinsic_dim : float or None, default=None
        Intrinsic dimension d in the density estimate ρ ∝ 1 / r_k^d. None: the 2-NN estimate of
        the data (:class:`~services.clustering.intrinsic_dim.TwoNN` on 90% of the points).
    n_clusters : int or None, default=None
        Number of clusters of :attr:`labels_` (the cut made by :meth:`fit`); at most the number of
        density peaks found. None: one cluster per density peak. :meth:`labels_at` cuts the same
        fitted hierarchy at any other k up to :attr:`n_peaks_`.

    Attributes
    ----------
    intrinsic_dim_ : float
        The intrinsic dimension used in the density estimate.
    log_density_ : ndarray of shape (n_samples,)
        Log density of every point (up to a constant).
    peaks_ : ndarray of shape (n_peaks_,)
        Indices of the density peaks, densest first.
    n_peaks_ : int
        Number of density peaks: the most clusters the hierarchy can be cut into.
    max_k_ : int
        Same as ``n_peaks_`` (the name :class:`~services.clustering.hierarchy.Hierarchical` shares).
    cluster_of_point_ : ndarray of shape (n_samples,)
        For every point, the peak (position in ``peaks_``) whose cluster it belongs to.
    cluster_sizes_ : ndarray of shape (n_peaks_,)
        Number of points in every peak's cluster.
    saddles_ : dict of (int, int) to float
        Log density of the saddle between every pair of touching peak clusters (i < j).
    linkage_ : ndarray of shape (n_peaks_ - 1, 4)
        The hierarchy over the peaks, in SciPy's linkage format.
    labels_ : ndarray of shape (n_samples,)
        Cluster of every point: the hierarchy cut at ``n_clusters`` (all peaks when None).
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` had string column names.
    """

    n_peaks_: int
    max_k_: int
    cluster_of_point_: np.ndarray
    linkage_: np.ndarray

    def __init__(self, k: int = 30, *, intrinsic_dim: float | None = None, n_clusters: int | None = None) -> None:
        self.k = k
        self.intrinsic_dim = intrinsic_dim
        self.n_clusters = n_clusters

    def fit(self, X: ArrayLike, y: object = None) -> DensityPeaks:
        """Find the density peaks of ``X`` (n_samples, n_features), their clusters and hierarchy,
        and cut it at ``n_clusters``. ``y`` is ignored. Returns the fitted estimator."""
        if isinstance(self.k, bool) or not isinstance(self.k, Integral) or self.k < 2:
            raise ValueError(f"density peaks need k ≥ 2 neighbours, got k = {self.k!r}")
        if self.intrinsic_dim is not None and (
                isinstance(self.intrinsic_dim, bool) or not isinstance(self.intrinsic_dim, Real)
                or not np.isfinite(self.intrinsic_dim) or self.intrinsic_dim <= 0):
            raise ValueError(f"intrinsic_dim must be a positive number or None, got {self.intrinsic_dim!r}")
        n_clusters = None if self.n_clusters is None else check_n_clusters(self.n_clusters)
        X = validate_features(self, X)
        n = len(X)
        if n <= self.k:
            raise ValueError(f"density peaks with k = {self.k} need more than {self.k} points (n_samples = {n})")
        d = self.intrinsic_dim
        if d is None:
            from services.clustering.intrinsic_dim import TwoNN

            d = TwoNN(0.9).fit(X).dimension_
        self.intrinsic_dim_ = float(d)
        dist, nn = cKDTree(X).query(X, k=self.k + 1, workers=-1)
        dist, nn = dist[:, 1:], nn[:, 1:]
        rk = np.maximum(dist[:, -1], 1e-12)
        logrho = np.log(self.k) - np.log(n) - self.intrinsic_dim_ * np.log(rk)
        self.log_density_ = logrho
        # parent: nearest neighbour (among the k) of higher density; peaks have none
        higher = logrho[nn] > logrho[:, None]
        has = higher.any(axis=1)
        first = np.argmax(higher, axis=1)
        parent = np.where(has, nn[np.arange(n), first], -1)
        # points whose denser neighbour lies beyond k: nearest denser point overall (few of them)
        peaks = np.flatnonzero(~has)
        order = np.argsort(-logrho, kind="stable")
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        # A true peak is a local maximum; also fold peaks whose density is tied: keep them all.
        root = parent.copy()
        root[peaks] = peaks
        # follow parents (pointer jumping) to the peak
        for _ in range(64):
            nxt = root[root]
            if np.array_equal(nxt, root):
                break
            root = nxt
        peak_index = {p: i for i, p in enumerate(peaks[np.argsort(rank[peaks])])}  # densest peak first
        self.peaks_ = np.array(sorted(peak_index, key=peak_index.get))
        self.n_peaks_ = self.max_k_ = len(self.peaks_)
        labels = np.array([peak_index[r] for r in root])
        self.cluster_of_point_ = labels
        m = len(self.peaks_)
        # saddles between touching clusters
        a = np.repeat(np.arange(n), self.k)
        b = nn.ravel()
        la, lb = labels[a], labels[b]
        cross = la != lb
        border = np.minimum(logrho[a], logrho[b])[cross]
        pa, pb = np.minimum(la, lb)[cross], np.maximum(la, lb)[cross]
        saddle: dict[tuple[int, int], float] = {}
        if len(pa):
            key = pa.astype(np.int64) * m + pb
            uniq, inv = np.unique(key, return_inverse=True)
            best = np.full(len(uniq), -np.inf)
            np.maximum.at(best, inv, border)
            saddle = {(int(u // m), int(u % m)): float(v) for u, v in zip(uniq, best)}
        self.saddles_ = saddle
        self.cluster_sizes_ = np.bincount(labels, minlength=m)
        centroids = np.zeros((m, X.shape[1]))
        np.add.at(centroids, labels, X)
        centroids /= np.maximum(self.cluster_sizes_, 1)[:, None]
        self.linkage_ = self._linkage(logrho[self.peaks_], saddle, centroids, self.cluster_sizes_)
        if n_clusters is not None and n_clusters > m:
            raise ValueError(f"n_clusters = {n_clusters}, but density peaks with k = {self.k} found only {m} "
                             f"peak{'s' if m != 1 else ''} (lower k for more, or leave n_clusters None)")
        self.labels_ = self.labels_at(m if n_clusters is None else n_clusters)
        return self

    @staticmethod
    def _linkage(peak_density: np.ndarray, saddle: dict, centroids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Merge the least prominent peak first (prominence = weaker peak − saddle, as ADP's test of
        significance orders them) → SciPy linkage over peaks; heights are the running maximum."""
        import heapq

        m = len(peak_density)
        if m == 1:
            return np.zeros((0, 4))
        peak = [float(v) for v in peak_density]
        adj: list[dict[int, float]] = [dict() for _ in range(m)]
        for (i, j), sv in saddle.items():
            adj[i][j] = adj[j][i] = sv
        node, size, ver = list(range(m)), [1] * m, [0] * m
        cen = [c.astype(np.float64) for c in centroids]
        wt = [float(w) for w in weights]
        alive = [True] * m
        heap = [(min(peak[i], peak[j]) - sv, i, j, 0, 0) for (i, j), sv in saddle.items()]
        heapq.heapify(heap)
        rows: list[list[float]] = []
        h_prev = 0.0

        def merge(i: int, j: int, h: float) -> int:
            keep, gone = (i, j) if peak[i] >= peak[j] else (j, i)
            rows.append([node[keep], node[gone], h, size[keep] + size[gone]])
            size[keep] += size[gone]
            node[keep] = m + len(rows) - 1
            cen[keep] = (cen[keep] * wt[keep] + cen[gone] * wt[gone]) / (wt[keep] + wt[gone])
            wt[keep] += wt[gone]
            alive[gone] = False
            for nb, sv in adj[gone].items():
                if nb == keep:
                    continue
                adj[nb].pop(gone, None)
                best = max(sv, adj[keep].get(nb, -np.inf))
                adj[keep][nb] = adj[nb][keep] = best
            adj[keep].pop(gone, None)
            adj[gone] = {}
            ver[keep] += 1
            ver[gone] += 1
            for nb, sv in adj[keep].items():
                heapq.heappush(heap, (min(peak[keep], peak[nb]) - sv, keep, nb, ver[keep], ver[nb]))
            return keep

        while heap:
            prom, i, j, vi, vj = heapq.heappop(heap)
            if not (alive[i] and alive[j]) or vi != ver[i] or vj != ver[j]:
                continue
            h_prev = max(h_prev, prom)
            merge(i, j, h_prev)
        # Clusters that never touch (no saddle within k neighbours) join above all density merges,
        # by centroid linkage of their point centroids.
        roots = [i for i in range(m) if alive[i]]
        if len(roots) > 1:
            import fastcluster

            sub = fastcluster.linkage_vector(np.stack([cen[r] for r in roots]), method="centroid")
            ids = list(roots)
            for a, b, dist, _ in sub:
                keep = merge(ids[int(a)], ids[int(b)], h_prev + 1.0 + float(dist))
                ids.append(keep)
        return np.array(rows, dtype=np.float64)

    def labels_at(self, k: int) -> np.ndarray:
        """Point labels (0..k-1) with the hierarchy cut at ``k`` clusters (1 ≤ k ≤ :attr:`n_peaks_`);
        raises :class:`ValueError` outside that range."""
        check_is_fitted(self, "linkage_")
        m = self.n_peaks_
        if not 1 <= k <= m:
            raise ValueError(f"k = {k} is outside 1..{m}: this density-peaks hierarchy has {m} peaks "
                             "(lower the neighbourhood k for more)")
        if m == 1:
            return np.zeros(len(self.cluster_of_point_), np.int64)
        peak_labels = fcluster(self.linkage_, k, criterion="maxclust") - 1
        return peak_labels[self.cluster_of_point_]

    def labels(self, k: int) -> np.ndarray:
        """Same as :meth:`labels_at` (the name earlier callers use)."""
        return self.labels_at(k)
