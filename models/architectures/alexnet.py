"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), single-tower, with batch normalisation in place of
local response normalisation (as common re-implementations do; it trains from scratch reliably).

``AlexNetBackbone`` returns the network up to the second 4096-unit fully connected layer (the
penultimate features); the classifier head is added by :func:`models.architectures.build`.
"""

from __future__ import annotations

import keras
from keras import layers


def AlexNetBackbone(input_shape: tuple[int, int, int] = (227, 227, 3), dropout: float = 0.5,  # noqa: N802
                    fc_units: int = 4096) -> keras.Model:
    if min(input_shape[:2]) < 32:
        raise ValueError(f"AlexNet needs inputs of at least 32×32, got {input_shape[:2]}")
    inp = keras.Input(input_shape, name="image")
    x = inp
    for i, (filters, kernel, stride, pool) in enumerate(
        [(96, 11, 4, True), (256, 5, 1, True), (384, 3, 1, False), (384, 3, 1, False), (256, 3, 1, True)], 1
    ):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = layers.Activation("relu", name=f"conv{i}_relu")(x)
        if pool:
            x = layers.MaxPooling2D(3, 2, padding="same", name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (6, 7):
        x = layers.Dense(fc_units, activation="relu", name=f"fc{i}")(x)
        if i == 6:
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inp, x, name="alexnet")
