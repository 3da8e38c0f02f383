"""A dense autoencoder (Keras) that maps features to a ``code_dim``-dimensional code.

The paper reduces the fine-tuned Inception-v3's logits to 10 dimensions (about their intrinsic
dimension) before clustering. Inputs are standardised; training stops early on validation loss
and keeps the best weights. Reports the validation reconstruction loss.
"""

from __future__ import annotations

import numpy as np

from services.errors import BadInput


class Autoencoder:
    def __init__(self, code_dim: int = 10, hidden: tuple[int, ...] = (256, 64), epochs: int = 200,
                 batch_size: int = 256, patience: int = 10, validation_fraction: float = 0.1, lr: float = 1e-3,
                 seed: int = 0):
        if code_dim < 1:
            raise BadInput("code_dim must be at least 1", "bad_params")
        self.code_dim, self.hidden, self.epochs, self.batch_size = code_dim, tuple(hidden), epochs, batch_size
        self.patience, self.validation_fraction, self.lr, self.seed = patience, validation_fraction, lr, seed

    def fit(self, X: np.ndarray, y=None) -> Autoencoder:  # noqa: ANN001
        import keras
        from keras import layers

        from services.clustering.hierarchy import check_features

        X = check_features(X).astype(np.float32)
        if len(X) < 10:
            raise BadInput("the autoencoder needs at least 10 points", "bad_features")
        keras.utils.set_random_seed(self.seed)
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0) + 1e-6
        Z = (X - self.mean_) / self.scale_
        d = X.shape[1]
        inp = keras.Input((d,), name="features")
        h = inp
        for i, units in enumerate(self.hidden):
            h = layers.Dense(units, activation="relu", name=f"enc{i}")(h)
        code = layers.Dense(self.code_dim, name="code")(h)
        h = code
        for i, units in enumerate(reversed(self.hidden)):
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

    def transform(self, X: np.ndarray) -> np.ndarray:
        Z = ((np.asarray(X, np.float32) - self.mean_) / self.scale_).astype(np.float32)
        return np.asarray(self.encoder_.predict(Z, batch_size=4096, verbose=0), np.float32)

    def fit_transform(self, X: np.ndarray, y=None) -> np.ndarray:  # noqa: ANN001
        return self.fit(X).transform(X)
