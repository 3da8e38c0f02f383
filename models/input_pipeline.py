"""tf.data input pipeline: parallel decode (OpenCV, data bar cut) → cache → shuffle → augment → batch → prefetch.

Decoding and resizing are :mod:`services.images.preprocess`'s — the same code serving uses — and the
cache holds uint8 (S, S) images, so an epoch after the first costs no decoding. Augmentations
(training only): flips, 90° rotations, random crops resized back, brightness/contrast, noise.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from services.images.imaging import load_gray
from services.images.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, resize_gray


def _augment(x: tf.Tensor, size: int) -> tf.Tensor:
    """x: float32 (S, S, 1) in 0–255."""
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, tf.random.uniform((), 0, 4, dtype=tf.int32))
    frac = tf.random.uniform((), 0.8, 1.0)
    crop = tf.cast(tf.round(frac * size), tf.int32)
    x = tf.image.random_crop(x, tf.stack([crop, crop, 1]))
    x = tf.image.resize(x, (size, size), method="bilinear")
    x = tf.image.random_brightness(x, 0.08 * 255)
    x = tf.image.random_contrast(x, 0.8, 1.2)
    x = x + tf.random.normal(tf.shape(x), stddev=tf.random.uniform((), 0.0, 6.0))
    return tf.clip_by_value(x, 0.0, 255.0)


def make_dataset(paths: list[str], labels: list[int], pp: Preprocessing, batch_size: int, training: bool,
                 augment: bool = True, seed: int = 0, cache: bool | str = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.data.Dataset:
    """Batches of (normalised float32 (B, S, S, C), int32 labels)."""
    if len(paths) != len(labels):
        raise ValueError("paths and labels differ in length")
    if not paths:
        raise ValueError("no images for the dataset")
    size = pp.input_size

    def _load(path: bytes) -> np.ndarray:
        return resize_gray(load_gray(path.decode(), max_pixels, min_side=pp.input_size), pp)

    def _decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(img, (size, size)), label

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=object).astype(str),
                                             np.asarray(labels, np.int32)))
    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")
    if training:
        ds = ds.shuffle(min(len(paths), 20_000), seed=seed, reshuffle_each_iteration=True)

    def _finish(img: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(img, tf.float32)[:, :, None]
        if training and augment:
            x = _augment(x, size)
        x = x * pp.scale + pp.offset
        if pp.channels > 1:
            x = tf.repeat(x, pp.channels, axis=-1)
        return x, label

    ds = ds.map(_finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def images_array(paths: list[str], pp: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Preprocessed inputs (N, S, S, C) for a short list (export parity, calibration)."""
    from services.images.preprocess import prepare

    return np.stack([prepare(p, pp, max_pixels) for p in paths]).astype(np.float32)
