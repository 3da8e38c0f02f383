"""The paper's four classifiers as Keras models with one shape: ``backbone → dropout → logits``.

Each model has a nested ``backbone`` model (its output: the pooled penultimate features) and a
``logits`` Dense layer (no softmax: training uses logits, export adds calibrated probabilities).
Keeping the backbone a separate model makes checkpoints portable: ImageNet weights files load
into the backbone, and a fine-tuning run copies the backbone of an earlier run by weight order.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from models.architectures.alexnet import AlexNetBackbone
from models.architectures.inception_v4 import InceptionV4Backbone
from services.classify.schemas import DEFAULT_IMAGE_SIZE as DEFAULT_SIZE
from services.classify.schemas import MIN_IMAGE_SIZE as MIN_SIZE


def _inception_v3(shape: tuple[int, int, int]) -> keras.Model:
    return keras.applications.InceptionV3(include_top=False, weights=None, input_shape=shape, pooling="avg")


def _inception_resnet_v2(shape: tuple[int, int, int]) -> keras.Model:
    return keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=shape, pooling="avg")


BACKBONES: dict[str, Callable[[tuple[int, int, int]], keras.Model]] = {
    "alexnet": AlexNetBackbone,
    "inception_v3": _inception_v3,
    "inception_v4": InceptionV4Backbone,
    "inception_resnet_v2": _inception_resnet_v2,
}


def build(arch: str, image_size: int | None = None, classes: int = 10, channels: int = 3,
          dropout: float = 0.2) -> keras.Model:
    """A fresh, randomly initialised classifier ``arch`` for ``image_size``² inputs."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(BACKBONES)}")
    size = image_size or DEFAULT_SIZE[arch]
    if size < MIN_SIZE[arch]:
        raise ValueError(f"{arch} needs an image size of at least {MIN_SIZE[arch]}, got {size}")
    if classes < 2:
        raise ValueError("a classifier needs at least 2 classes")
    backbone = BACKBONES[arch]((size, size, channels))
    backbone.name = "backbone"
    inp = keras.Input((size, size, channels), name="image")
    feats = backbone(inp)
    x = layers.Dropout(dropout, name="head_dropout")(feats)
    logits = layers.Dense(classes, name="logits", dtype="float32")(x)  # float32 even under mixed precision
    return keras.Model(inp, logits, name=arch)


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer("backbone")
