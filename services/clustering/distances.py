"""Distance heatmaps of a labelled sample (the paper's Figures 4–5) and their correlation index.

The discrete distance is 0 between images of the same category and 1 otherwise; a feature space
is good for clustering when its Euclidean distances correlate with it. The correlation index is
Pearson's r between the two distance matrices' upper triangles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist, squareform

from services.plotting import png_figure


def labelled_sample(labels: np.ndarray, size: int = 400, seed: int = 0) -> np.ndarray:
    """Indices of up to ``size`` labelled points (label ≥ 0), sorted by category."""
    labels = np.asarray(labels)
    idx = np.flatnonzero(labels >= 0)
    if len(idx) > size:
        idx = np.random.default_rng(seed).choice(idx, size, replace=False)
    return idx[np.argsort(labels[idx], kind="stable")]


def discrete_distance(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return (labels[:, None] != labels[None, :]).astype(np.float32)


def correlation_index(X: np.ndarray, labels: np.ndarray) -> float:
    e = pdist(np.asarray(X, np.float64))
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(labels), k=1)  # pdist's order
    disc = (labels[i] != labels[j]).astype(np.float64)
    if e.std() == 0 or disc.std() == 0:
        return 0.0
    return float(np.corrcoef(e, disc)[0, 1])


def heatmap_png(matrix: np.ndarray, path: Path | str, title: str, labels: np.ndarray | None = None,
                value_label: str = "distance") -> None:
    """``matrix`` (images × images) as a heatmap PNG; with ``labels`` (the rows' labels, sorted),
    white lines mark where the label changes. ``value_label`` names the colour bar."""
    axis_label = "image (sorted by label)" if labels is not None else "image"
    with png_figure(path, (5, 4.5)) as (fig, ax):
        im = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
        if labels is not None:
            edges = np.flatnonzero(np.diff(labels)) + 0.5
            for e in edges:
                ax.axhline(e, color="white", lw=0.4)
                ax.axvline(e, color="white", lw=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(axis_label, fontsize=8)
        ax.set_ylabel(axis_label, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046).set_label(value_label, fontsize=8)


def euclidean_matrix(X: np.ndarray) -> np.ndarray:
    return squareform(pdist(np.asarray(X, np.float64)))
