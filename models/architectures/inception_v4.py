"""Inception-v4 (Szegedy, Ioffe, Vanhoucke, Alemi 2017, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning", figures 3–9). Keras has no Inception-v4; this follows the paper's
blocks with TF-slim's conventions (convolutions without bias, batch norm without scale, ReLU).

``InceptionV4Backbone`` returns the network up to global average pooling (1536 features);
the classifier head is added by :func:`models.architectures.build`.
"""

from __future__ import annotations

import keras
from keras import layers


def _conv(x, filters: int, kernel: tuple[int, int], strides: int = 1, padding: str = "same", name: str = ""):  # noqa: ANN001, ANN202
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(axis=-1, scale=False, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _stem(x):  # noqa: ANN001, ANN202 — figure 3
    x = _conv(x, 32, (3, 3), 2, "valid", "stem_1")
    x = _conv(x, 32, (3, 3), 1, "valid", "stem_2")
    x = _conv(x, 64, (3, 3), 1, "same", "stem_3")
    a = layers.MaxPooling2D(3, 2, "valid", name="stem_4a_pool")(x)
    b = _conv(x, 96, (3, 3), 2, "valid", "stem_4b")
    x = layers.Concatenate(name="stem_4")([a, b])
    a = _conv(x, 64, (1, 1), name="stem_5a_1")
    a = _conv(a, 96, (3, 3), 1, "valid", "stem_5a_2")
    b = _conv(x, 64, (1, 1), name="stem_5b_1")
    b = _conv(b, 64, (7, 1), name="stem_5b_2")
    b = _conv(b, 64, (1, 7), name="stem_5b_3")
    b = _conv(b, 96, (3, 3), 1, "valid", "stem_5b_4")
    x = layers.Concatenate(name="stem_5")([a, b])
    a = _conv(x, 192, (3, 3), 2, "valid", "stem_6a")
    b = layers.MaxPooling2D(3, 2, "valid", name="stem_6b_pool")(x)
    return layers.Concatenate(name="stem_6")([a, b])


def _block_a(x, n: str):  # noqa: ANN001, ANN202 — figure 4
    a = layers.AveragePooling2D(3, 1, "same", name=f"{n}_a_pool")(x)
    a = _conv(a, 96, (1, 1), name=f"{n}_a")
    b = _conv(x, 96, (1, 1), name=f"{n}_b")
    c = _conv(x, 64, (1, 1), name=f"{n}_c1")
    c = _conv(c, 96, (3, 3), name=f"{n}_c2")
    d = _conv(x, 64, (1, 1), name=f"{n}_d1")
    d = _conv(d, 96, (3, 3), name=f"{n}_d2")
    d = _conv(d, 96, (3, 3), name=f"{n}_d3")
    return layers.Concatenate(name=n)([a, b, c, d])


def _reduction_a(x, k: int = 192, l: int = 224, m: int = 256, n: int = 384):  # noqa: ANN001, ANN202, E741 — figure 7
    a = layers.MaxPooling2D(3, 2, "valid", name="reduction_a_pool")(x)
    b = _conv(x, n, (3, 3), 2, "valid", "reduction_a_b")
    c = _conv(x, k, (1, 1), name="reduction_a_c1")
    c = _conv(c, l, (3, 3), name="reduction_a_c2")
    c = _conv(c, m, (3, 3), 2, "valid", "reduction_a_c3")
    return layers.Concatenate(name="reduction_a")([a, b, c])


def _block_b(x, n: str):  # noqa: ANN001, ANN202 — figure 5
    a = layers.AveragePooling2D(3, 1, "same", name=f"{n}_a_pool")(x)
    a = _conv(a, 128, (1, 1), name=f"{n}_a")
    b = _conv(x, 384, (1, 1), name=f"{n}_b")
    c = _conv(x, 192, (1, 1), name=f"{n}_c1")
    c = _conv(c, 224, (1, 7), name=f"{n}_c2")
    c = _conv(c, 256, (7, 1), name=f"{n}_c3")
    d = _conv(x, 192, (1, 1), name=f"{n}_d1")
    d = _conv(d, 192, (1, 7), name=f"{n}_d2")
    d = _conv(d, 224, (7, 1), name=f"{n}_d3")
    d = _conv(d, 224, (1, 7), name=f"{n}_d4")
    d = _conv(d, 256, (7, 1), name=f"{n}_d5")
    return layers.Concatenate(name=n)([a, b, c, d])


def _reduction_b(x):  # noqa: ANN001, ANN202 — figure 8
    a = layers.MaxPooling2D(3, 2, "valid", name="reduction_b_pool")(x)
    b = _conv(x, 192, (1, 1), name="reduction_b_b1")
    b = _conv(b, 192, (3, 3), 2, "valid", "reduction_b_b2")
    c = _conv(x, 256, (1, 1), name="reduction_b_c1")
    c = _conv(c, 256, (1, 7), name="reduction_b_c2")
    c = _conv(c, 320, (7, 1), name="reduction_b_c3")
    c = _conv(c, 320, (3, 3), 2, "valid", "reduction_b_c4")
    return layers.Concatenate(name="reduction_b")([a, b, c])


def _block_c(x, n: str):  # noqa: ANN001, ANN202 — figure 6
    a = layers.AveragePooling2D(3, 1, "same", name=f"{n}_a_pool")(x)
    a = _conv(a, 256, (1, 1), name=f"{n}_a")
    b = _conv(x, 256, (1, 1), name=f"{n}_b")
    c = _conv(x, 384, (1, 1), name=f"{n}_c1")
    c = layers.Concatenate(name=f"{n}_c")([_conv(c, 256, (1, 3), name=f"{n}_c2a"),
                                           _conv(c, 256, (3, 1), name=f"{n}_c2b")])
    d = _conv(x, 384, (1, 1), name=f"{n}_d1")
    d = _conv(d, 448, (1, 3), name=f"{n}_d2")
    d = _conv(d, 512, (3, 1), name=f"{n}_d3")
    d = layers.Concatenate(name=f"{n}_d")([_conv(d, 256, (1, 3), name=f"{n}_d4a"),
                                           _conv(d, 256, (3, 1), name=f"{n}_d4b")])
    return layers.Concatenate(name=n)([a, b, c, d])


def InceptionV4Backbone(input_shape: tuple[int, int, int] = (299, 299, 3)) -> keras.Model:  # noqa: N802
    """Inception-v4 without its classifier; input at least 75×75, output the 1536 pooled features."""
    if min(input_shape[:2]) < 75:
        raise ValueError(f"Inception-v4 needs inputs of at least 75×75, got {input_shape[:2]}")
    inp = keras.Input(input_shape, name="image")
    x = _stem(inp)
    for i in range(4):
        x = _block_a(x, f"inception_a{i + 1}")
    x = _reduction_a(x)
    for i in range(7):
        x = _block_b(x, f"inception_b{i + 1}")
    x = _reduction_b(x)
    for i in range(3):
        x = _block_c(x, f"inception_c{i + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inp, x, name="inception_v4")
