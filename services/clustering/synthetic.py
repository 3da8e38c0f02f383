"""Features with planted structure, for tests and the benchmark: nested Gaussian blobs.

``classes`` well-separated class centres, each with ``subclasses`` sub-centres around it, points
Gaussian around their sub-centre, all living in a ``latent_dim``-dimensional subspace embedded
(by a random orthonormal map) in ``dim`` dimensions, plus optional small isotropic noise.
"""

from __future__ import annotations

import numpy as np


def nested_blobs(n: int, dim: int = 20, latent_dim: int = 5, classes: int = 10, subclasses: int = 3,
                 class_spread: float = 30.0, sub_spread: float = 8.0, point_spread: float = 1.0,
                 noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X float32 (n, dim), class labels (n,), subclass labels (n,) numbered across classes)."""
    if latent_dim > dim:
        raise ValueError("latent_dim must not exceed dim")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, class_spread, (classes, latent_dim))
    subs = centres[:, None, :] + rng.normal(0, sub_spread, (classes, subclasses, latent_dim))
    sub = rng.integers(0, classes * subclasses, n)
    cls = sub // subclasses
    z = subs.reshape(-1, latent_dim)[sub] + rng.normal(0, point_spread, (n, latent_dim))
    basis, _ = np.linalg.qr(rng.normal(size=(dim, latent_dim)))
    X = z @ basis.T
    if noise:
        X = X + rng.normal(0, noise, X.shape)
    return X.astype(np.float32), cls, sub
