"""The inference engine, batched classification into the store, curation, and the classify CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from semtag.cli import main
from services import migrate
from services.classify import inference, registry
from services.data.categories import SLUGS
from services.data.datasets import labelled_from_db
from services.data.synth import make_image
from services.images import pipeline
from services.images.ingest import ingest_file
from services.runtime import NullQueue, Runtime
from services.storage import writing
from services.tables import Image, Prediction


def _png(category: int, seed: int) -> bytes:
    img, _ = make_image(category, 128, 128, seed=seed)
    return cv2.imencode(".png", img)[1].tobytes()


def _colour_photo() -> bytes:
    rng = np.random.default_rng(0)
    img = np.zeros((128, 128, 3), np.uint8)
    img[:64, :, 2] = 230  # red sky, green field, blue blobs: nothing like a micrograph
    img[64:, :, 1] = 200
    for _ in range(10):
        cv2.circle(img, (int(rng.integers(0, 128)), int(rng.integers(0, 128))), 10, (255, 60, 0), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _stored(rt: Runtime, data: bytes, name: str) -> int:
    with writing(rt.store) as w:
        w.write(data)
        return ingest_file(rt, w, name).image_id


def _register(rt: Runtime, onnx_path: Path, activate: bool = True) -> str:
    with rt.session() as s:
        row = registry.register(s, onnx_path, rt.settings.data_dir / "models")
        version = row.version
    if activate:
        pipeline.activate_model(rt, version)
    return version


def _renamed_copy(onnx_path: Path, run_name: str, folder: Path) -> Path:
    """Another model file: the same weights under another run name (so another sha and version)."""
    import onnx

    m = onnx.load(str(onnx_path))
    meta = json.loads(m.metadata_props[0].value)
    meta["run_name"] = run_name
    m.metadata_props[0].value = json.dumps(meta)
    out = folder / f"{run_name}.onnx"
    onnx.save(m, str(out))
    return out


def test_engine_reads_its_preprocessing_and_classifies(alexnet_onnx: Path, tmp_path: Path) -> None:
    eng = inference.Engine(alexnet_onnx, warmup=(1, 4))
    assert eng.pp.input_size == 64 and eng.classes == SLUGS and "CPUExecutionProvider" in eng.providers
    good = tmp_path / "a.png"
    good.write_bytes(_png(2, 1))
    broken = tmp_path / "b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_colour_photo())
    out = list(eng.classify_paths([good, broken, photo, good], batch_size=3))
    assert [p for p, _, _ in out] == [good, broken, photo, good]  # order kept across batches
    (_, r1, e1), (_, r2, e2), (_, r3, _), (_, r4, _) = out
    assert e1 is None and r2 is None and "decode" in e2.lower() or "cannot" in e2.lower()
    assert len(r1.probabilities) == 10 and abs(sum(r1.probabilities) - 1) < 1e-4
    assert r1.category == SLUGS[r1.category_index] and r1.confidence == max(r1.probabilities)
    assert r1.margin >= 0 and r1.probabilities == r4.probabilities  # deterministic
    assert r3.ood_score >= 0.5 and r3.needs_review  # a colour photo is flagged as not an SEM image
    assert r1.ood_score < 0.5 or r1.needs_review
    strict = inference.Engine(alexnet_onnx, review_threshold=1.01)
    assert strict.classify_arrays(np.zeros((2, 64, 64, 3), np.float32))[0].needs_review


def test_engine_refuses_files_that_are_not_semtag_models(tmp_path: Path) -> None:
    from services.errors import BadInput

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(BadInput, match="ONNX Runtime"):
        inference.Engine(tmp_path / "x.onnx")
    with pytest.raises(BadInput, match="does not exist"):
        inference.Engine(tmp_path / "missing.onnx")


def test_providers_prefer_gpu_when_present() -> None:
    import onnxruntime as ort

    chosen = inference.choose_providers()
    assert chosen[-1] == "CPUExecutionProvider" or "CUDAExecutionProvider" in chosen
    assert all(p in ort.get_available_providers() for p in chosen)


def test_waiting_images_are_classified_when_a_model_is_activated(settings, alexnet_onnx: Path) -> None:
    migrate.upgrade(settings.effective_database_url)
    rt = Runtime(settings, queue=NullQueue())
    ids = [_stored(rt, _png(c, 10 + c), f"{c}.png") for c in range(4)]
    assert pipeline.classify_batch(rt, ids) == {i: "no_model" for i in ids}
    version = _register(rt, alexnet_onnx)
    queued = [args[0] for task, args in rt.queue.sent if task == "semtag.classify"]
    assert sorted(queued[-4:]) == sorted(ids)
    out = pipeline.classify_batch(rt, ids)
    assert set(out.values()) <= set(SLUGS)
    assert pipeline.classify_batch(rt, ids) == {i: "skipped" for i in ids}  # redelivered batch: nothing twice
    with rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 4
        p = s.scalar(select(Prediction).where(Prediction.image_id == ids[0]))
        assert p.model_version == version and len(p.probabilities) == 10
        img = s.get(Image, ids[0])
        assert img.category == p.category and img.category_source == "model" and img.inference_state == "done"


def test_a_corrupt_image_fails_alone(sqlite_settings, alexnet_onnx: Path) -> None:
    migrate.upgrade(sqlite_settings.effective_database_url)
    rt = Runtime(sqlite_settings, queue=NullQueue())
    _register(rt, alexnet_onnx)
    ids = [_stored(rt, _png(c, 30 + c), f"{c}.png") for c in range(3)]
    with rt.session() as s:
        rt.store.local_path(s.get(Image, ids[1]).storage_key).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = pipeline.classify_batch(rt, ids)
    assert out[ids[1]] == "failed" and out[ids[0]] in SLUGS and out[ids[2]] in SLUGS
    with rt.session() as s:
        bad = s.get(Image, ids[1])
        assert bad.status == "failed" and "decode" in bad.error


def test_new_model_adds_rows_and_history_stays(sqlite_settings, alexnet_onnx: Path, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_settings.effective_database_url)
    rt = Runtime(sqlite_settings, queue=NullQueue())
    v1 = _register(rt, alexnet_onnx)
    ids = [_stored(rt, _png(c, 50 + c), f"{c}.png") for c in range(2)]
    pipeline.classify_batch(rt, ids)
    v2 = _register(rt, _renamed_copy(alexnet_onnx, "second", tmp_path), activate=False)
    info = pipeline.activate_model(rt, v2, reclassify=True)
    assert info.queued_images == 2
    pipeline.classify_batch(rt, ids)
    from services.curation.service import predictions_of
    from services.images.queries import image_detail

    with rt.session() as s:
        history = predictions_of(s, ids[0])
        assert [h.model_version for h in history] == [v2, v1]
        assert image_detail(s, ids[0]).prediction.model_version == v2


def test_labels_review_queue_and_predictions_api(sqlite_settings, alexnet_onnx: Path) -> None:
    from tests.conftest import Client

    sqlite_settings.review_confidence_threshold = 1.01  # every prediction needs review
    c = Client(sqlite_settings)
    try:
        ids = [c.upload((f"{k}.png", _png(k, 70 + k))).json()["items"][0]["id"] for k in range(3)]
        c.wait()
        assert c.get(f"/v1/images/{ids[0]}").json()["steps"]["classification"] == "no_model"
        _register(c.rt, alexnet_onnx, activate=False)
        version = c.http.get("/v1/admin/models", headers=c.auth("admin")).json()["models"][0]["version"]
        r = c.http.post(f"/v1/admin/models/{version}/activate", headers=c.auth("admin"))
        assert r.status_code == 200 and r.json()["queued_images"] == 3 and r.json()["active"]
        c.wait()
        detail = c.get(f"/v1/images/{ids[0]}").json()
        assert detail["classification"]["model_version"] == version
        assert set(detail["classification"]["probabilities"]) == set(SLUGS)
        review = c.get("/v1/review", role="curator").json()
        assert review["total"] == 3
        confs = [i["confidence"] for i in review["items"]]
        assert confs == sorted(confs)
        assert c.get("/v1/review", role="read").status_code == 403
        r = c.http.put(f"/v1/images/{ids[1]}/label", json={"category": "Porous_Sponge"}, headers=c.auth("curator"))
        assert r.status_code == 200 and r.json()["category"] == "porous_sponges"
        detail = c.get(f"/v1/images/{ids[1]}").json()
        assert detail["category"] == "porous_sponges" and detail["category_source"] == "human"
        assert detail["human_label"]["category"] == "porous_sponges"
        assert c.get("/v1/review", role="curator").json()["total"] == 2  # labelled images leave the queue
        bad = c.http.put(f"/v1/images/{ids[1]}/label", json={"category": "kittens"}, headers=c.auth("curator"))
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_category"
        assert c.http.put("/v1/images/999999/label", json={"category": 1},
                          headers=c.auth("curator")).status_code == 404
        assert c.http.put(f"/v1/images/{ids[1]}/label", json={"category": 1},
                          headers=c.auth("read")).status_code == 403
        hist = c.get(f"/v1/images/{ids[0]}/predictions").json()["predictions"]
        assert len(hist) == 1 and hist[0]["model_version"] == version
        with c.rt.session() as s:  # human labels feed the training loader
            items = labelled_from_db(s, c.rt.store)
        assert [(i.image_id, SLUGS[i.label]) for i in items] == [(ids[1], "porous_sponges")]
        assert Path(items[0].path).is_file()
    finally:
        c.close()


def test_classify_cli(alexnet_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture) -> None:
    from semtag.settings import get_settings

    monkeypatch.setenv("SEMTAG_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("SEMTAG_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        folder = tmp_path / "imgs"
        (folder / "sub").mkdir(parents=True)
        for k in range(3):
            (folder / "sub" / f"{k}.png").write_bytes(_png(k, 90 + k))
        assert main(["classify", str(folder), "--model", str(alexnet_onnx), "--json", "--batch-size", "2"]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert len(rows) == 3
        assert {"file", "category", "category_index", "probabilities", "confidence", "needs_review"} <= set(rows[0])
        assert set(rows[0]["probabilities"]) == set(SLUGS)
        (folder / "broken.png").write_bytes(b"garbage")
        assert main(["classify", str(folder), "--model", str(alexnet_onnx), "--json"]) == 1
        cap = capsys.readouterr()
        assert len(cap.out.splitlines()) == 3 and "broken.png" in cap.err
        assert main(["classify", str(folder)]) == 2  # no active model, no --model
        assert "no active model" in capsys.readouterr().err
        shutil.rmtree(folder)
    finally:
        get_settings.cache_clear()


def test_activation_during_a_batch_does_not_mix_versions(sqlite_settings, alexnet_onnx: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate.upgrade(sqlite_settings.effective_database_url)
    rt = Runtime(sqlite_settings, queue=NullQueue())
    v1 = _register(rt, alexnet_onnx)
    v2 = _register(rt, _renamed_copy(alexnet_onnx, "newer", tmp_path), activate=False)
    ids = [_stored(rt, _png(c, 110 + c), f"{c}.png") for c in range(4)]
    real = inference.Engine.classify_paths

    def activating_midway(self, paths, batch_size=32, threads=None):
        for n, item in enumerate(real(self, paths, batch_size=1)):
            if n == 1:
                pipeline.activate_model(rt, v2)  # an admin activates another model mid-batch
            yield item

    monkeypatch.setattr(inference.Engine, "classify_paths", activating_midway)
    out = pipeline.classify_batch(rt, ids[:3])
    assert all(v in SLUGS for v in out.values())
    pipeline.classify_batch(rt, ids[3:])
    with rt.session() as s:
        versions = {p.image_id: p.model_version for p in s.scalars(select(Prediction))}
    assert [versions[i] for i in ids[:3]] == [v1, v1, v1]  # the batch kept the model it started with
    assert versions[ids[3]] == v2  # the next batch uses the newly active one


def test_a_batch_keeps_its_pages_for_the_next_and_gives_them_back_when_idle(
        sqlite_settings, alexnet_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No malloc_trim right after a batch (the next one would fault its pages in again), one once the
    worker has been idle for a while."""
    import threading

    from services.images import imaging

    migrate.upgrade(sqlite_settings.effective_database_url)
    rt = Runtime(sqlite_settings, queue=NullQueue())
    _register(rt, alexnet_onnx)
    ids = [_stored(rt, _png(c, 120 + c), f"{c}.png") for c in range(2)]
    pipeline.classify_batch(rt, ids[:1])  # the engine loaded (loading trims once, on its own)
    trims: list[int] = []
    trimmed = threading.Event()
    monkeypatch.setattr(imaging, "_trim", lambda pad: trims.append(pad) or trimmed.set() or 1)
    out = pipeline.classify_batch(rt, ids[1:])
    assert all(v in SLUGS for v in out.values())
    assert trims == []  # kept for a batch that would follow
    assert trimmed.wait(15) and trims == [0]


def test_idle_inference_threads_sleep_unless_spinning_is_asked_for(alexnet_onnx: Path) -> None:
    """Busy-waiting ONNX Runtime threads took CPU from the ocr workers on shared cores (bench/backfill.py)."""
    from services.classify.inference import Engine

    key = "session.intra_op.allow_spinning"
    assert Engine(alexnet_onnx, threads=2).session.get_session_options().get_session_config_entry(key) == "0"
    assert Engine(alexnet_onnx, threads=2, spin=True).session.get_session_options().get_session_config_entry(key) == "1"



_PRIORITIES = r"""
import json, os, sys, threading
from pathlib import Path
from services.classify import inference

def nice():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

model, paths = sys.argv[1], [Path(p) for p in sys.argv[2:]]
seen = {"base": nice()}

def batch_thread():  # as an inference worker's task thread: it yields, then asks for the engine
    inference.yield_to_model(5)
    seen["caller"] = nice()
    before = set(os.listdir("/proc/self/task"))
    eng = inference.Engine(model, threads=2)
    seen["engine_threads"] = [os.getpriority(os.PRIO_PROCESS, int(t))
                              for t in set(os.listdir("/proc/self/task")) - before]
    real_run, real_decode = eng.session.run, eng.decode
    runs, decodes = [], []

    def run(*a):
        runs.append([threading.current_thread().name, nice()])
        return real_run(*a)

    def decode(p):
        decodes.append(nice())
        return real_decode(p)

    eng.session.run, eng.decode = run, decode
    seen["results"] = [r.category for _, r, _ in eng.classify_paths(paths, batch_size=2)]
    seen["runs"], seen["decodes"] = runs, decodes

t = threading.Thread(target=batch_thread)
t.start()
t.join()
inference.yield_to_model(0)  # 0: nothing changes
seen["main_after"] = nice()
print(json.dumps(seen))
"""


def test_the_model_runs_on_its_own_thread_above_the_work_around_it(alexnet_onnx: Path, tmp_path: Path) -> None:
    """In a fresh process, a thread that yielded to the model (an inference worker's task thread) builds and runs
    an engine: the session's threads and every run keep the process's priority, on the engine's model thread;
    the caller and the decoding threads it starts stay below it."""
    import subprocess
    import sys

    paths = []
    for c in range(3):
        p = tmp_path / f"{c}.png"
        p.write_bytes(_png(c, 300 + c))
        paths.append(str(p))
    out = subprocess.run([sys.executable, "-c", _PRIORITIES, str(alexnet_onnx), *paths], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=300)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    base, below = seen["base"], min(19, seen["base"] + 5)
    assert below > base  # the check means something (the suite is not already at the lowest priority)
    assert seen["caller"] == below
    # the engine's model thread and ONNX Runtime's intra-op thread, started after the caller yielded
    assert len(seen["engine_threads"]) >= 2 and set(seen["engine_threads"]) == {base}
    assert seen["results"] and all(c in SLUGS for c in seen["results"])
    assert len(seen["runs"]) == 2 and all(name.startswith("semtag-model") and n == base for name, n in seen["runs"])
    assert len(seen["decodes"]) == 3 and set(seen["decodes"]) == {below}
    assert seen["main_after"] == base
