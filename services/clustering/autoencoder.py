"""A dense autoencoder (Keras) that maps features to a ``code_dim``-dimensional code.

The paper reduces the fine-tuned Inception-v3's logits to 10 dimensions (about their intrinsic
dimension) before clustering. Inputs are standardised; training stops early on validation loss
and keeps the best weights. Reports the validation reconstruction loss.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from services.clustering.hierarchy import validate_features


class Autoencoder(TransformerMixin, BaseEstimator):
    """Dense autoencoder: :meth:`transform` maps standardised features to a ``code_dim``-D code.

    Parameters
    ----------
    code_dim : int, default=10
        Dimension of the code (the bottleneck layer); at least 1.
    hidden : tuple of int, default=(256, 64)
        Widths of the encoder's hidden ReLU layers (the decoder mirrors them).
    epochs : int, default=200
        Most training epochs.
    batch_size : int, default=256
        Mini-batch size.
    patience : int, default=10
        Epochs without a better validation loss before training stops (the best weights are kept).
    validation_fraction : float, default=0.1
        Share of the points held out for the validation loss (at least one point).
    lr : float, default=1e-3
        Adam's learning rate.
    seed : int, default=0
        Seed of Keras's initialisation and of the validation split.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in_,)
        Feature means used to standardise.
    scale_ : ndarray of shape (n_features_in_,)
        Feature standard deviations (plus 1e-6) used to standardise.
    model_ : keras.Model
        The whole autoencoder (standardised features → reconstruction).
    encoder_ : keras.Model
        Its encoder (standardised features → code).
    history_ : dict of str to list of float
        Keras's training history (``loss``, ``val_loss`` per epoch).
    epochs_run_ : int
        Epochs trained before early stopping.
    reconstruction_loss_ : float
        Best validation reconstruction loss (mean squared error on standardised features).
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when ``X`` had string column names.
    """

    mean_: np.ndarray
    scale_: np.ndarray
    encoder_: Any
    epochs_run_: int
    reconstruction_loss_: float

    def __init__(self, code_dim: int = 10, hidden: tuple[int, ...] = (256, 64), epochs: int = 200,
                 batch_size: int = 256, patience: int = 10, validation_fraction: float = 0.1, lr: float = 1e-3,
                 seed: int = 0) -> None:
        self.code_dim = code_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.lr = lr
        self.seed = seed

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # codes are float32 whatever the input
        return tags

    def fit(self, X: ArrayLike, y: object = None) -> Autoencoder:
        """Train on ``X`` (n_samples ≥ 10, n_features); ``y`` is ignored. Returns the fitted estimator."""
        import keras
        from keras import layers

        if isinstance(self.code_dim, bool) or not isinstance(self.code_dim, Integral) or self.code_dim < 1:
            raise ValueError(f"code_dim must be at least 1, got {self.code_dim!r}")
        X = validate_features(self, X, dtype=np.float32)
        if len(X) < 10:
            raise ValueError(f"the autoencoder needs at least 10 points (n_samples = {len(X)})")
        keras.utils.set_random_seed(self.seed)
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0) + 1e-6
        Z = (X - self.mean_) / self.scale_
        d = X.shape[1]
        inp = keras.Input((d,), name="features")
        h = inp
        for i, units in enumerate(tuple(self.hidden)):
            h = layers.Dense(units, activation="relu", name=f"enc{i}")(h)
        code = layers.Dense(self.code_dim, name="code")(h)
        h = code
        for i, units in enumerate(reversed(tuple(self.hidden))):
            h = layers.Dense(units, activation="relu", name=f"dec{i}")(h)
        out = layers.Dense(d, name="reconstruction")(h)
        model = keras.Model(inp, out)
        model.compile(optimizer=keras.optimizers.Adam(self.lr), loss="mse")
        rng = np.random.default_rng(self.seed)
        idx = rng.permutation(len(Z))
        nval = max(1, int(len(Z) * self.validation_fraction))
        val, tr = idx[:nval], idx[nval:]
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience, restore_best_weights=True)
        hist = model.fit(Z[tr], Z[tr], validation_data=(Z[val], Z[val]), epochs=self.epochs,
                         batch_size=self.batch_size, callbacks=[stop], verbose=0)
        self.model_ = model
        self.encoder_ = keras.Model(inp, code)
        self.history_ = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        self.epochs_run_ = len(hist.history["loss"])
        self.reconstruction_loss_ = float(min(hist.history["val_loss"]))
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        """The code (n_samples, code_dim), float32, of every row of ``X``."""
        check_is_fitted(self, "encoder_")
        X = validate_features(self, X, reset=False, dtype=np.float32)
        Z = ((X - self.mean_) / self.scale_).astype(np.float32)
        return np.asarray(self.encoder_.predict(Z, batch_size=4096, verbose=0), np.float32)
