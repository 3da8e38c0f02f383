"""A grey JPEG is decoded once, at ingest, for the classifier (services.images.prepared)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from services import migrate
from services.classify import registry
from services.data.synth import make_image
from services.images import pipeline, prepared
from services.images.imaging import decode_gray
from services.images.ingest import ingest_file
from services.records import service as records
from services.runtime import NullQueue, Runtime
from services.storage import writing
from services.tables import Image, Prediction


def _jpeg(seed: int, colour: bool = False, w: int = 640, h: int = 480) -> bytes:
    img, _ = make_image(seed % 10, w, h, seed=seed)
    if colour:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        img[:, :, 2] = 255 - img[:, :, 2]
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _ingest(rt: Runtime, data: bytes, name: str, record: str | None = None) -> int:
    with writing(rt.store) as w:
        w.write(data)
        return ingest_file(rt, w, name, record).image_id


def _row(rt: Runtime, image_id: int) -> Image:
    with rt.session() as s:
        img = s.get(Image, image_id)
        s.expunge(img)
        return img


@pytest.fixture
def rt(sqlite_settings) -> Runtime:
    sqlite_settings.inference_input_side = 64  # the test model's input side: the prepared pixels are exact
    migrate.upgrade(sqlite_settings.effective_database_url)
    return Runtime(sqlite_settings, queue=NullQueue())


def _activate(rt: Runtime, onnx: Path) -> None:
    with rt.session() as s:
        version = registry.register(s, onnx, rt.settings.data_dir / "models").version
    pipeline.activate_model(rt, version)


def test_grey_jpeg_is_kept_at_the_classifiers_scale_and_only_grey_jpegs(rt: Runtime) -> None:
    iid = _ingest(rt, _jpeg(1), "a.jpg")
    img = _row(rt, iid)
    assert img.input_key and img.input_key.endswith(prepared.SUFFIX)
    kept = prepared.load(rt.store.local_path(img.input_key))
    direct = decode_gray(rt.store.local_path(img.storage_key), rt.settings.max_pixels, min_side=64)
    assert kept.shape == direct.gray.shape == (120, 160) and np.array_equal(kept, direct.gray)  # 1/4 by DCT
    # a colour JPEG (its colourfulness needs another decode), a PNG and a TIFF are decoded by the worker
    png = cv2.imencode(".png", make_image(2, 320, 240, seed=3)[0])[1].tobytes()
    tif = cv2.imencode(".tiff", make_image(3, 320, 240, seed=4)[0])[1].tobytes()
    for data, name in ((_jpeg(2, colour=True), "c.jpg"), (png, "p.png"), (tif, "t.tif")):
        assert _row(rt, _ingest(rt, data, name)).input_key is None, name


def test_setting_zero_keeps_nothing(rt: Runtime) -> None:
    rt.settings.inference_input_side = 0
    assert _row(rt, _ingest(rt, _jpeg(5), "z.jpg")).input_key is None


def test_worker_classifies_from_the_prepared_input_as_from_the_original_then_erases_it(
        rt: Runtime, alexnet_onnx: Path) -> None:
    from services.classify.inference import Engine

    _activate(rt, alexnet_onnx)
    iid = _ingest(rt, _jpeg(7), "x.jpg")
    img = _row(rt, iid)
    assert img.input_key and rt.store.exists(img.input_key)
    original = rt.store.local_path(img.storage_key)
    (_, ref, err), = list(Engine(alexnet_onnx).classify_paths([original]))  # decoded from the JPEG itself
    assert err is None
    data = original.read_bytes()
    original.write_bytes(b"\xff\xd8 no longer a JPEG")  # so only the prepared input can classify it
    out = pipeline.classify_batch(rt, [iid])
    original.write_bytes(data)
    assert out[iid] == ref.category
    done = _row(rt, iid)
    assert done.inference_state == "done" and done.input_key is None and not rt.store.exists(img.input_key)
    with rt.session() as s:
        stored = s.scalar(select(Prediction).where(Prediction.image_id == iid)).probabilities
    assert np.allclose(stored, ref.probabilities, atol=1e-6)


def test_a_missing_prepared_input_falls_back_to_the_original(rt: Runtime, alexnet_onnx: Path) -> None:
    _activate(rt, alexnet_onnx)
    ids = [_ingest(rt, _jpeg(20 + k), f"{k}.jpg") for k in range(3)]
    gone, broken = _row(rt, ids[0]).input_key, _row(rt, ids[1]).input_key
    rt.store.delete(gone)
    rt.store.local_path(broken).write_bytes(b"not an array")
    out = pipeline.classify_batch(rt, ids)
    assert all(out[i] not in ("failed", "skipped") for i in ids), out
    for i in ids:
        img = _row(rt, i)
        assert img.inference_state == "done" and img.status != "failed" and img.input_key is None


def test_erasing_an_unclassified_image_erases_its_prepared_input(rt: Runtime) -> None:
    iid = _ingest(rt, _jpeg(9), "r.jpg", record="rec-1")
    img = _row(rt, iid)
    assert rt.store.exists(img.input_key)
    audit = records.delete_record(rt, "rec-1", actor="curator@test")
    assert img.input_key in audit.detail["blobs_erased"]
    assert not rt.store.exists(img.input_key) and not rt.store.exists(img.storage_key)


def test_a_failed_image_gives_up_its_prepared_input(rt: Runtime) -> None:
    iid = _ingest(rt, _jpeg(11), "f.jpg")
    key = _row(rt, iid).input_key
    pipeline.fail_image(rt, iid, "scale reading failed: test")
    assert _row(rt, iid).input_key is None and not rt.store.exists(key)
