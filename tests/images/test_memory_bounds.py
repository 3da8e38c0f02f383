"""Memory is bounded by configuration, not by what the client sends (issue 12, point 1).

Decode budgets count bytes per pixel and channels; decoding narrows the page to 8-bit grey in its own
buffer (no float32 copy of the whole image); the probe at upload decodes nothing whole; concurrent
decodes share one budget per process; very large images are read for their scale at reduced size.
The peak RSS of real processes on the worst allowed images is a benchmark (bench/memory.py).
"""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from sqlalchemy import func, select

from services.images import imaging
from services.tables import Image


def _peak_alloc(fn) -> tuple[object, int]:
    """(result, peak bytes NumPy and Python allocated while ``fn`` ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _rgba_png(side: int) -> bytes:
    """A flat RGBA PNG: a few KB that decode to 4 × side² bytes."""
    arr = np.full((side, side, 4), 128, np.uint8)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


def test_decode_budget_counts_samples_and_depth_not_only_pixels(tmp_path: Path) -> None:
    p = tmp_path / "rgba.png"
    p.write_bytes(_rgba_png(2048))  # 4 Mpx, well under the pixel limit, 16 MiB decoded
    assert p.stat().st_size < 100_000
    need = 4 * 2048 * 2048 + p.stat().st_size  # libpng decodes from the file's bytes in memory
    info = imaging.probe(p, max_pixels=10**9, max_decoded=need)
    assert (info.samples, info.decoded_bytes) == (4, need)
    with pytest.raises(imaging.DecodeTooLarge, match="SEMTAG_MAX_DECODED_BYTES") as exc:
        imaging.probe(p, max_pixels=10**9, max_decoded=need - 1)
    assert (exc.value.status, exc.value.code) == (413, "decode_too_large")
    t = tmp_path / "g16.tif"
    tifffile.imwrite(t, np.zeros((1000, 1000), np.uint16), compression="zlib")
    assert imaging.probe(t, 10**9).decoded_bytes == 2 * 1000 * 1000


def test_progressive_jpeg_counts_its_coefficients(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    p = tmp_path / "p.jpg"
    PILImage.fromarray(np.zeros((600, 800), np.uint8)).save(p, progressive=True)
    assert imaging.probe(p, 10**9).decoded_bytes == 2 * 600 * 800
    PILImage.fromarray(np.zeros((600, 800), np.uint8)).save(p)
    assert imaging.probe(p, 10**9).decoded_bytes == 600 * 800


def test_upload_over_the_decode_budget_is_refused_and_nothing_is_kept(sqlite_client) -> None:
    sqlite_client.settings.max_decoded_bytes = 8 * 2**20
    r = sqlite_client.upload(("huge.png", _rgba_png(2048)))
    assert r.status_code == 413, r.text
    err = r.json()["items"][0]["error"] if "items" in r.json() else r.json()["error"]
    assert err["code"] == "decode_too_large" and "8388608" in err["message"]
    with sqlite_client.rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 0
    assert list((sqlite_client.settings.blob_dir / "tmp").iterdir()) == []


def test_probe_checks_png_data_without_decoding_it(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    p.write_bytes(_rgba_png(3000))  # 36 MB decoded
    _, peak = _peak_alloc(lambda: imaging.probe(p, 10**9))
    assert peak < 4 * 2**20, peak
    # damaged data inside the IDAT stream (CRCs are not what catches it) and a cut stream are both refused
    data = bytearray(p.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 40: idat + 60] = b"\xff" * 20
    p.write_bytes(bytes(data))
    with pytest.raises(imaging.ImageRejected):
        imaging.probe(p, 10**9)
    ok = _rgba_png(300)
    cut = ok[: len(ok) // 2]
    p.write_bytes(cut)
    with pytest.raises(imaging.TruncatedImage):
        imaging.probe(p, 10**9)


def _old_to_uint8(arr: np.ndarray) -> np.ndarray:
    """The stretch as it was, with float32 copies of the whole image: the reference for the values."""
    a = arr.astype(np.float32)
    lo, hi = np.percentile(a, [0.01, 99.99])
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def test_sixteen_bit_decode_keeps_the_stretch_without_float_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arr = (rng.normal(20000, 3000, (3000, 4000)).clip(0, 65535)).astype(np.uint16)
    p = tmp_path / "g16.tif"
    tifffile.imwrite(p, arr)
    decoded, peak = _peak_alloc(lambda: imaging.decode_gray(p, 10**9))
    native = arr.nbytes
    # the stored page once plus one block of temporaries (a few MB whatever the size); the old path held
    # three float32 copies of the whole image (6 × native)
    assert peak < native + 12 * 2**20, (peak, native)
    assert decoded.gray.dtype == np.uint8 and decoded.gray.shape == arr.shape and decoded.factor == 1
    assert np.abs(decoded.gray.astype(int) - _old_to_uint8(arr).astype(int)).max() <= 1


def test_colour_and_float_pages_narrow_to_the_same_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    expected = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "c.bmp"), rgb[..., ::-1])
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    for name in ("c.png", "c.bmp", "c.tif"):
        d = imaging.decode_gray(tmp_path / name, 10**9)
        assert np.abs(d.gray.astype(int) - expected.astype(int)).max() <= 1, name
        assert d.colourfulness > 40, name  # random colour noise is colourful
    f = rng.normal(0, 1, (300, 400)).astype(np.float32)
    f[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", f)
    g = imaging.decode_gray(tmp_path / "f.tif", 10**9).gray
    assert g.dtype == np.uint8 and g.min() == 0 and g.max() == 255
    grey = imaging.decode_gray(tmp_path / "c.png", 10**9, min_side=100)
    assert grey.factor == 3 and grey.gray.shape == (100, 133)


def test_concurrent_decodes_share_one_budget() -> None:
    budget = imaging.DecodeBudget(100)
    inside, order = threading.Event(), []
    release = threading.Event()

    def big(name: str) -> None:
        with budget.hold(80):
            order.append(name)
            inside.set()
            release.wait(10)

    a = threading.Thread(target=big, args=("a",))
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=big, args=("b",))
    b.start()
    with budget.hold(20):  # a small decode still fits beside the big one
        order.append("small")
    b.join(0.3)
    assert b.is_alive() and order == ["a", "small"]  # the second big decode waits for the first
    release.set()
    a.join(10)
    b.join(10)
    assert order == ["a", "small", "b"] and budget.held == 0
    with budget.hold(10**9):  # more than the capacity is capped at it, not refused forever
        assert budget.held == 100


def test_scale_of_a_very_large_image_is_read_at_reduced_size(tmp_path: Path) -> None:
    from services.scale import reader
    from services.scale.render import render_databar

    w = 8400
    base = np.full((5600, w), 90, np.uint8)
    base[::37] = 140
    img, truth = render_databar(base, "zeiss", 20, "µm", 1680)
    p = tmp_path / "big.png"
    cv2.imwrite(str(p), img)
    assert img.size > reader.WORK_PIXELS
    decoded = reader.decode_for_scale(p, 10**9)
    assert decoded.factor == 2 and decoded.gray.size <= reader.WORK_PIXELS
    res = reader.read_scale(p, decoded=decoded)
    assert (res.source, res.scale_value, res.scale_unit) == ("ocr", 20, "µm"), res
    assert abs(res.bar_px - truth.bar_px) <= 2 * decoded.factor  # in the stored image's pixels
    assert abs(res.pixel_size_nm - 20_000 / truth.bar_px) / (20_000 / truth.bar_px) < 0.005
    assert res.databar_box[3] > 5600  # the box too, in stored pixels
    assert res.detail["ocr"]["read_at_reduction"] == 2


def test_freed_pages_go_back_once_no_batch_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inference worker trims the heap once its batches stop, not after each one (a trim between
    batches made the next run fault all its pages in again): never while a batch is in flight, in any
    thread, and once after the last one, also when it failed."""
    trims: list[int] = []
    trimmed = threading.Event()

    def trim(pad: int) -> int:
        trims.append(pad)
        trimmed.set()
        return 1

    monkeypatch.setattr(imaging, "_trim", trim)
    with imaging.memory_held(5.0):
        pass
    with imaging.memory_held(0.3):  # the next batch starts before the delay: the trim due is cancelled
        other_done = threading.Event()
        release = threading.Event()

        def other_batch() -> None:  # an embedded service classifies in threads
            with imaging.memory_held(0.3):
                other_done.set()
                release.wait(10)

        t = threading.Thread(target=other_batch)
        t.start()
        assert other_done.wait(10)
    assert not trimmed.wait(1.0)  # the other thread's batch is still in flight
    assert trims == []
    with pytest.raises(RuntimeError):
        with imaging.memory_held(0.3):
            release.set()
            t.join(10)
            raise RuntimeError("the batch failed")
    assert trimmed.wait(10)  # after the last batch, failed or not
    trimmed.clear()
    assert not trimmed.wait(1.0)  # and once
    assert trims == [0]
