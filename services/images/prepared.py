"""Prepared classifier inputs: a grey JPEG is decoded once, at ingest, for the inference worker.

The upload's check decodes a JPEG's data anyway (a truncated file must be refused), and the entropy
decoding that dominates a JPEG's cost is the same at every DCT scale. So that check decodes at the scale
the classifier needs (:func:`services.images.imaging.probe_keeping`) and the pixels are kept as a small
``.npy`` blob (``images.input_key``) until the image is classified; the inference worker then reads them
instead of decoding the JPEG a second time, and the decoding scales with the API's replicas instead of
the (GPU) inference workers'. The pixels are exactly what the worker's own decode would give
(:func:`~services.images.imaging.decode_gray` with ``min_side`` = ``SEMTAG_INFERENCE_INPUT_SIDE``).

Only grey JPEGs are prepared: a colour JPEG's colourfulness needs another decode, and the other formats'
checks do not decode the whole image. A missing or unreadable prepared input is not an error: the worker
decodes the original. After the prediction is stored the blob is erased (a reclassification decodes the
original), and an erased image takes its prepared input with it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from services.images.imaging import Decoded
from services.storage import BlobStore, writing

SUFFIX = ".input.npy"


def store(blobs: BlobStore, decoded: Decoded) -> str:
    """Write the decoded grey as a content-addressed ``.npy`` blob; its key."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(decoded.gray, np.uint8), allow_pickle=False)
    with writing(blobs) as writer:
        writer.write(buf.getvalue())
        return blobs.commit(writer, SUFFIX)


def load(path: Path | str) -> np.ndarray:
    """The prepared grey (2-D uint8); ``ValueError``/``OSError`` when the file is not one."""
    gray = np.load(path, allow_pickle=False)
    if gray.dtype != np.uint8 or gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"{path} is not a prepared input (a 2-D uint8 array)")
    return gray


def is_prepared(path: Path | str) -> bool:
    return str(path).endswith(SUFFIX)
