"""Errors carry their own status and code; the API answers with them, without a lookup table."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import BadInput, NotFound, PayloadTooLarge, SemtagError
from services.images.imaging import NotAnImage, TooManyPixels, UnsupportedFormat, sniff_format
from services.storage import BlobTooLarge


def test_classes_carry_status_and_code() -> None:
    assert (BadInput("x").status, BadInput("x").code) == (422, "bad_input")
    assert BadInput("x", "bad_filter").code == "bad_filter" and BadInput("x", "bad_filter").status == 422
    assert (NotFound("x").status, TooManyPixels("x").status, UnsupportedFormat("x").status) == (404, 413, 415)
    big = BlobTooLarge(10)
    assert isinstance(big, PayloadTooLarge) and isinstance(big, SemtagError)
    assert (big.status, big.code, big.limit) == (413, "file_too_large", 10)


def test_sniffing_raises_the_class_of_the_rejection() -> None:
    with pytest.raises(NotAnImage) as e:
        sniff_format(b"hello world, not an image")
    assert (e.value.status, e.value.code) == (415, "not_an_image")
    with pytest.raises(UnsupportedFormat):
        sniff_format(b"GIF89a....")


def test_missing_model_file_is_not_found(tmp_path: Path) -> None:
    from services.classify.registry import read_meta

    with pytest.raises(NotFound) as e:
        read_meta(tmp_path / "nowhere.onnx")
    assert e.value.status == 404 and e.value.code == "not_found"
