"""The reprocess job (and semtag reprocess): each filter selects what it says, a re-read replaces the machine's
reading, reclassifying adds the active model's prediction, human labels stay, progress and cancellation,
a resumed run skips what it did, and the queued path (a broker) waits for the workers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest
from sqlalchemy import func, select

from services.data.synth import make_image
from services.images import reprocess as rp
from services.images.schemas import ReprocessParams
from services.jobs.service import JobCancelled, JobContext, cancel_job, create_job
from services.tables import HumanLabel, Image, ImageStatus, Prediction, ScaleReading, StepState
from tests.conftest import Client


def _png(k: int, seed: int) -> bytes:
    img, _ = make_image(k % 10, 160, 128, seed=seed)
    return cv2.imencode(".png", img)[1].tobytes()


def _seed(c: Client, per_record: int = 3) -> tuple[list[int], list[int]]:
    """Images of rec-a and rec-b, read and classified by the active model."""
    a = [it["id"] for it in c.upload(*[(f"a{k}.png", _png(k, 500 + k)) for k in range(per_record)],
                                     record_id="rec-a").json()["items"]]
    b = [it["id"] for it in c.upload(*[(f"b{k}.png", _png(k + 3, 600 + k)) for k in range(per_record)],
                                     record_id="rec-b", record_version="v1").json()["items"]]
    c.wait()
    with c.rt.session() as s:
        assert all(s.get(Image, i).status == "done" for i in a + b)
    return a, b


def _job(c: Client, params: dict, expect: str = "succeeded") -> dict:
    r = c.http.post("/v1/admin/jobs", json={"kind": "reprocess", "params": params}, headers=c.auth("admin"))
    assert r.status_code == 202, r.text
    c.wait()
    job = c.get(f"/v1/admin/jobs/{r.json()['id']}", role="admin").json()
    assert job["status"] == expect, job
    return job


@pytest.fixture
def seeded(client: Client, alexnet_onnx: Path):
    version = client.activate_model(alexnet_onnx)
    a, b = _seed(client)
    return client, version, a, b


def test_each_filter_selects_what_it_says(seeded) -> None:
    c, version, a, b = seeded
    with c.rt.session() as s:
        for iid in a[:2]:  # uploaded long ago
            s.get(Image, iid).created_at = datetime(2025, 3, 1, 12, tzinfo=UTC)
        s.get(Image, b[0]).status = ImageStatus.failed.value
        s.scalar(select(ScaleReading).where(ScaleReading.image_id == a[2])).source = "metadata"
        s.delete(s.scalar(select(ScaleReading).where(ScaleReading.image_id == b[1])))
        s.add(Prediction(image_id=b[2], model_version="old-model", category="tips", category_index=5,
                         probabilities=[0.1] * 10, confidence=0.5))
        sources = dict(s.execute(select(ScaleReading.image_id, ScaleReading.source)).all())

    def selected(**params) -> int:
        return _job(c, {**params, "dry_run": True})["result"]["selected"]

    assert selected() == 6
    assert selected(record_id="rec-a") == 3
    assert selected(record_id="rec-b", record_version="v1") == 3
    assert selected(record_id="rec-b", record_version="v2") == 0
    assert selected(uploaded_before="2025-06-01") == 2
    assert selected(uploaded_from="2025-03-01T12:00:00Z", uploaded_before="2025-03-01T12:00:01Z") == 2
    assert selected(uploaded_from="2025-06-01T00:00:00+02:00") == 4
    assert selected(status=["failed"]) == 1
    assert selected(status=["done", "failed"]) == 6
    assert selected(scale_source=["metadata"]) == 1
    assert selected(scale_source=["unread"]) == 1
    ocr_or_none = sum(1 for v in sources.values() if v in ("ocr", "none"))
    assert selected(scale_source=["ocr", "none"]) == ocr_or_none == 4
    assert selected(model_version="old-model") == 1
    assert selected(model_version=version) == 6
    assert selected(record_id="rec-a", uploaded_before="2025-06-01", status=["done"]) == 2
    # a dry run changes nothing
    with c.rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Image).where(Image.status == "done")) == 5


@pytest.mark.parametrize("params,word", [
    ({"steps": ["ocr"]}, "steps"),
    ({"steps": []}, "steps"),
    ({"steps": ["scale", "scale"]}, "twice"),
    ({"record_version": "v1"}, "record_version needs record_id"),
    ({"uploaded_from": 1700000000}, "as text"),
    ({"uploaded_from": "yesterday"}, "uploaded_from"),
    ({"uploaded_from": "2026-02-01", "uploaded_before": "2026-01-01"}, "not before"),
    ({"status": ["sleeping"]}, "status"),
    ({"scale_source": ["guess"]}, "scale_source"),
    ({"dry_run": "yes"}, "dry_run"),
    ({"record": "rec-a"}, "unknown param 'record'"),
])
def test_bad_params_are_one_clear_error(sqlite_client: Client, params: dict, word: str) -> None:
    r = sqlite_client.http.post("/v1/admin/jobs", json={"kind": "reprocess", "params": params},
                                headers=sqlite_client.auth("admin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_params", r.text
    assert word in r.json()["error"]["message"]


def test_a_reread_replaces_the_machine_reading(seeded) -> None:
    c, _version, a, b = seeded
    with c.rt.session() as s:
        before = {r.image_id: (r.source, r.scale_value, r.scale_unit, r.pixel_size_nm, r.created_at)
                  for r in s.scalars(select(ScaleReading))}
        for iid in a:  # a reading gone wrong (an older reader, say)
            r = s.scalar(select(ScaleReading).where(ScaleReading.image_id == iid))
            r.source, r.scale_value, r.scale_unit, r.pixel_size_nm = "none", 999.0, "mm", None
            s.get(Image, iid).pixel_size_nm = None
    job = _job(c, {"steps": ["scale"], "scale_source": ["none"]})
    res = job["result"]
    assert res["selected"] >= 3 and res["scale_queued"] == res["selected"] and res["classify_queued"] == 0
    assert job["progress"] == 1.0 and job["message"] == f"{res['selected']}/{res['selected']} images done"
    with c.rt.session() as s:
        assert s.scalar(select(func.count()).select_from(ScaleReading)) == 6  # one row per image, still
        for iid in a:
            r = s.scalar(select(ScaleReading).where(ScaleReading.image_id == iid))
            assert (r.source, r.scale_value, r.scale_unit, r.pixel_size_nm) == before[iid][:4]
            assert r.detail["previous"]["scale_value"] == 999.0 and r.detail["previous"]["source"] == "none"
            img = s.get(Image, iid)
            assert img.pixel_size_nm == before[iid][3] and img.status == "done"
            assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.image_id == iid)) == 1
        for iid in b:
            if before[iid][0] != "none":  # not selected: untouched
                r = s.scalar(select(ScaleReading).where(ScaleReading.image_id == iid))
                assert r.created_at == before[iid][4] and "previous" not in r.detail


def test_reclassifying_adds_the_active_models_prediction_and_keeps_human_labels(seeded) -> None:
    c, version, a, b = seeded
    cur = c.auth("curator")
    assert c.http.put(f"/v1/images/{a[1]}/label", json={"category": "fibres"}, headers=cur).status_code == 200
    with c.rt.session() as s:  # rec-a was classified by an older model, not by the active one
        for iid in a:
            s.delete(s.scalar(select(Prediction).where(Prediction.image_id == iid)))
            s.add(Prediction(image_id=iid, model_version="old-model", category="tips", category_index=5,
                             probabilities=[0.1] * 10, confidence=0.5))
            img = s.get(Image, iid)
            if img.category_source != "human":
                img.category, img.confidence = "tips", 0.5
        labels_before = s.scalar(select(func.count()).select_from(HumanLabel))
    job = _job(c, {"steps": ["classify"], "model_version": "old-model"})
    res = job["result"]
    assert (res["selected"], res["classify_queued"], res["scale_queued"], res["human_labels_kept"]) == (3, 3, 0, 1)
    assert res["model_version"] == version
    with c.rt.session() as s:
        for iid in a:
            versions = set(s.scalars(select(Prediction.model_version).where(Prediction.image_id == iid)))
            assert versions == {"old-model", version}  # the old one stays as history
        labelled = s.get(Image, a[1])
        assert (labelled.category, labelled.category_source) == ("fibres", "human")
        assert s.scalar(select(func.count()).select_from(HumanLabel)) == labels_before
        active = {iid: s.scalar(select(Prediction.category).where(Prediction.image_id == iid,
                                                                  Prediction.model_version == version))
                  for iid in (a[0], a[2])}
        for iid, cat in active.items():
            assert s.get(Image, iid).category == cat and s.get(Image, iid).category_source == "model"
    assert c.get(f"/v1/images/{a[1]}").json()["human_label"]["category"] == "fibres"
    # what the active model classified already is skipped, not classified twice
    again = _job(c, {"steps": ["classify"], "record_id": "rec-b"})["result"]
    assert again["classify_queued"] == 0 and again["skipped"]["classified_by_active_model"] == 3


def test_failed_images_run_their_failed_steps_again(seeded) -> None:
    c, _version, a, _b = seeded
    with c.rt.session() as s:
        img = s.get(Image, a[0])
        img.status, img.error, img.scale_state = ImageStatus.failed.value, "decode failed: disk error", "failed"
    job = _job(c, {"steps": ["classify"], "status": ["failed"]})
    assert job["result"]["scale_queued"] == 1  # the failed step too, though only classify was asked
    detail = c.get(f"/v1/images/{a[0]}").json()
    assert detail["status"] == "done" and detail["error"] is None and detail["steps"]["scale"] == "done"


def test_reclassifying_without_an_active_model_fails_clearly(sqlite_client: Client) -> None:
    job = _job(sqlite_client, {"steps": ["classify"]}, expect="failed")
    assert job["error"].startswith("reclassifying needs an active model")
    assert _job(sqlite_client, {"steps": ["scale"]})["result"]["selected"] == 0


def test_progress_cancellation_and_a_resumed_run(seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    c, _version, a, b = seeded
    monkeypatch.setattr(rp, "CHUNK", 2)
    c.rt.queue.join()
    job = create_job(c.rt.__class__(c.settings, queue=_Null()), "reprocess", {"steps": ["scale"]})
    seen: list[float] = []
    ctx = JobContext(c.rt, job.id, job.params)

    def progress(fraction: float, message: str) -> None:
        seen.append(fraction)
        if len(seen) == 2:  # after the first chunk: an admin cancels; the next report stops the run
            cancel_job(c.rt, job.id)
        ctx.progress(fraction, message)

    params = ReprocessParams.model_validate(job.params)
    with pytest.raises(JobCancelled):
        rp.reprocess(c.rt, params, progress, created_before=job.created_at)
    with c.rt.session() as s:
        reread = {r.image_id for r in s.scalars(select(ScaleReading)) if "previous" in r.detail}
    assert reread == set(sorted(a + b)[:2])  # the first chunk only; what it did stays

    # the job run again (its worker died, say): what was re-read since it was created is skipped
    seen.clear()
    res = rp.reprocess(c.rt, params, lambda f, m: seen.append(f), created_before=job.created_at)
    assert res["skipped"]["scale_read_since_job_created"] == 2 and res["scale_queued"] == 4
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) >= 4
    again = rp.reprocess(c.rt, params, lambda f, m: None, created_before=job.created_at)
    assert again["scale_queued"] == 0 and again["skipped"]["scale_read_since_job_created"] == 6


class _Null:
    def enqueue(self, task: str, *args: int) -> None:
        pass


def test_with_a_broker_the_steps_go_to_the_queues_and_the_job_waits(pg_url: str, tmp_path: Path, alexnet_onnx: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The queued path: enqueue_processing to workers (here the same Celery tasks on two threads, on
    PostgreSQL as a deployment with a broker has it), at most WINDOW images in flight, progress as they finish."""
    import workers.context
    from semtag.settings import Settings
    from services.runtime import Runtime
    from tests.conftest import _reset_pg
    from workers.queues import InlineQueue

    _reset_pg(pg_url)
    settings = Settings(data_dir=tmp_path / "var", database_url=pg_url)
    c = Client(settings)
    try:
        version = c.activate_model(alexnet_onnx)
        a, b = _seed(c)
        workers_rt = Runtime(settings.model_copy(update={"broker_url": "redis://broker.invalid:6379/0"}),
                             queue=InlineQueue(threads=2))
        assert not workers_rt.settings.embedded_tasks
        monkeypatch.setattr(workers.context, "_runtime", workers_rt)
        monkeypatch.setattr(rp, "CHUNK", 2)
        monkeypatch.setattr(rp, "WINDOW", 3)
        monkeypatch.setattr(rp, "POLL_S", 0.05)
        sent: list[tuple[str, int]] = []
        real_enqueue = workers_rt.queue.enqueue

        def enqueue(task: str, *args: int) -> None:
            sent.append((task, args[0]))
            real_enqueue(task, *args)

        monkeypatch.setattr(workers_rt.queue, "enqueue", enqueue)
        with c.rt.session() as s:
            for iid in a + b:
                s.delete(s.scalar(select(Prediction).where(Prediction.image_id == iid)))
        seen: list[str] = []
        res = rp.reprocess(workers_rt, ReprocessParams(), lambda f, m: seen.append(m))
        assert res["finished"] == 6 and res["failed"] == 0 and res["model_version"] == version
        assert sorted(sent) == sorted([("semtag.read_scale", i) for i in a + b] + [("semtag.classify", i)
                                                                                   for i in a + b])
        assert seen[-1] == "6/6 images done"
        with c.rt.session() as s:
            n = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.model_version == version))
            assert n == 6
            states = [(s.get(Image, i).status, s.get(Image, i).scale_state, s.get(Image, i).inference_state)
                      for i in a + b]
            assert states == [("done", "done", StepState.done.value)] * 6
        workers_rt.queue.shutdown()
    finally:
        c.close()


def test_cli_reprocess_runs_in_this_process_in_embedded_mode(cli_env: Path, tmp_path: Path, capsys) -> None:
    from semtag.cli import main

    folder = tmp_path / "arch" / "rec-cli"
    folder.mkdir(parents=True)
    for k in range(3):
        (folder / f"c{k}.png").write_bytes(_png(k, 700 + k))
    assert main(["ingest", str(tmp_path / "arch"), "--record-id-from", "dirname"]) == 0
    capsys.readouterr()
    assert main(["reprocess", "--steps", "scale", "--record-id", "rec-cli", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dry["status"] == "succeeded" and dry["result"]["selected"] == 3 and dry["result"]["dry_run"]
    assert main(["reprocess", "--steps", "scale", "--record-id", "rec-cli"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["result"]["scale_queued"] == 3 and out["result"]["finished"] == 3
    from semtag.settings import get_settings
    from services.db import session_scope

    with session_scope(get_settings().effective_database_url) as s:
        states = set(s.scalars(select(Image.scale_state)))
        assert states == {"done"} and s.scalar(select(func.count()).select_from(ScaleReading)) == 3
    assert main(["reprocess", "--steps", "classify"]) == 1  # no active model: the job fails, and says why
    assert "needs an active model" in capsys.readouterr().out
    assert main(["reprocess", "--status", "sleeping"]) == 2
    assert "status" in capsys.readouterr().err


def test_a_curators_scale_reading_stays_the_images_scale(sqlite_client: Client) -> None:
    """A curator's reading (the console's scale_labels) is kept as the current value by a re-read."""
    from services import tables

    c = sqlite_client
    if not hasattr(tables, "HumanScale"):
        pytest.skip("curators' scale readings (PUT /v1/images/{id}/scale) come with the console branch (issue 14)")
    iid = c.upload(("h.png", _png(1, 800))).json()["items"][0]["id"]
    c.wait()
    r = c.http.put(f"/v1/images/{iid}/scale", json={"scale_value": 3.0, "scale_unit": "µm", "bar_px": 60},
                   headers=c.auth("curator"))
    assert r.status_code == 200, r.text
    human_px = c.get(f"/v1/images/{iid}").json()["pixel_size_nm"]
    _job(c, {"steps": ["scale"]})
    detail = c.get(f"/v1/images/{iid}").json()
    assert detail["pixel_size_nm"] == human_px == pytest.approx(50.0)
