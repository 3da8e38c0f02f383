"""Records as the repository has them: many records per image, record reads, takedowns and their audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, NullQueue
from services.tables import Deletion, HumanLabel, Image, ImageRecord, Prediction, ScaleReading
from tests import imagegen
from tests.conftest import Client
from workers.queues import InlineQueue


def _blobs(c: Client) -> set[str]:
    root = c.settings.data_dir / "blobs"
    rel = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return {str(p) for p in rel if p.parts[0] != "tmp"}


def _counts(c: Client, image_id: int) -> dict[str, int]:
    with c.rt.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t).where(
            (t.id if t is Image else t.image_id) == image_id)) for t in (Image, ScaleReading, Prediction,
                                                                          HumanLabel, ImageRecord)}


def test_an_image_in_many_records_and_a_record_of_many_images(client: Client) -> None:
    a, b = imagegen.png(seed=301), imagegen.png(seed=302)
    up = client.upload(("a.png", a), ("b.png", b), record_id="10.5281/zenodo.77", record_version="v1").json()
    assert [i["record_added"] for i in up["items"]] == [True, True]
    again = client.upload(("a.png", a), record_id="10.5281/zenodo.77", record_version="v2").json()["items"][0]
    assert again["duplicate"] is True and again["record_added"] is True and again["id"] == up["items"][0]["id"]
    same = client.upload(("a.png", a), record_id="10.5281/zenodo.77", record_version="v2").json()["items"][0]
    assert same["record_added"] is False
    client.wait()
    rec = client.get("/v1/records/10.5281/zenodo.77")
    assert rec.status_code == 200, rec.text
    body = rec.json()
    assert body["versions"] == ["v1", "v2"] and body["image_count"] == 2
    assert [i["filename"] for i in body["images"]] == ["a.png", "b.png"]
    assert body["images"][0]["status"] == "done" and "steps" in body["images"][0]  # the full ImageRead
    v2 = client.get("/v1/records/10.5281/zenodo.77", params={"record_version": "v2"}).json()
    assert [i["filename"] for i in v2["images"]] == ["a.png"]
    page = client.get("/v1/records/10.5281/zenodo.77", params={"limit": 1}).json()
    rest = client.get("/v1/records/10.5281/zenodo.77", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [i["filename"] for i in page["images"] + rest["images"]] == ["a.png", "b.png"] and not rest["next_cursor"]
    missing = client.get("/v1/records/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/v1/records/10.5281/zenodo.77", params={"record_version": "v9"}).status_code == 404
    bad = client.upload(("c.png", imagegen.png(seed=303)), record_version="v1")  # a version needs its record
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_record_version"


def test_record_takedown_erases_only_what_no_record_holds(client: Client) -> None:
    shared, own = imagegen.png(seed=311), imagegen.tiff(seed=312)
    first = client.upload(("shared.png", shared), ("own.tif", own), record_id="rec-X").json()["items"]
    client.upload(("shared.png", shared), record_id="rec-Y")
    client.wait()
    with client.rt.session() as s:
        s.add(HumanLabel(image_id=first[1]["id"], category="fibres", labelled_by="t"))
    shared_id, own_id = first[0]["id"], first[1]["id"]
    before = _blobs(client)
    assert len(before) == 2
    assert client.http.delete("/v1/records/rec-X", headers=client.auth("read")).status_code == 403
    r = client.http.delete("/v1/records/rec-X", headers=client.auth("admin"))
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["kind"], d["target"], d["images_erased"], d["images_kept"]) == ("record", "rec-X", [own_id], [shared_id])
    assert d["links_removed"] == 2 and d["blobs_erased"] == 1 and d["deleted_by"]
    assert client.get(f"/v1/images/{own_id}").status_code == 404
    assert set(_counts(client, own_id).values()) == {0}
    kept = client.get(f"/v1/images/{shared_id}").json()
    assert [x["record_id"] for x in kept["records"]] == ["rec-Y"]
    assert len(_blobs(client)) == 1 and _blobs(client) < before
    assert client.get("/v1/records/rec-X").status_code == 404
    assert client.http.delete("/v1/records/rec-X", headers=client.auth("admin")).status_code == 404
    # the last record goes: the shared image goes with it
    d2 = client.http.delete("/v1/records/rec-Y", headers=client.auth("admin")).json()
    assert d2["images_erased"] == [shared_id] and _blobs(client) == set()
    trail = client.get("/v1/admin/deletions", role="admin").json()["items"]
    assert [(t["kind"], t["target"]) for t in trail] == [("record", "rec-Y"), ("record", "rec-X")]
    with client.rt.session() as s:
        row = s.scalars(select(Deletion).where(Deletion.target == "rec-X")).one()
        assert row.detail["images_erased"][0]["sha256"] == first[1]["sha256"] and row.deleted_at is not None
    assert client.get("/v1/admin/deletions", role="read").status_code == 403


def test_image_takedown_removes_it_from_every_record(client: Client) -> None:
    data = imagegen.png(seed=321)
    iid = client.upload(("t.png", data), record_id="r1").json()["items"][0]["id"]
    client.upload(("t.png", data), record_id="r2", record_version="3")
    client.wait()
    assert client.http.delete(f"/v1/images/{iid}", headers=client.auth("curator")).status_code == 403
    r = client.http.delete(f"/v1/images/{iid}", headers=client.auth("admin"))
    assert r.status_code == 200 and r.json()["images_erased"] == [iid] and r.json()["links_removed"] == 2
    assert client.get("/v1/records/r1").status_code == 404 and client.get("/v1/records/r2").status_code == 404
    assert _blobs(client) == set()
    [audit] = client.get("/v1/admin/deletions", role="admin").json()["items"]
    assert (audit["kind"], audit["target"], audit["images_erased"]) == ("image", str(iid), [iid])
    assert audit["deleted_by"] and audit["deleted_at"]
    assert client.http.delete(f"/v1/images/{iid}", headers=client.auth("admin")).status_code == 404
    # the same bytes uploaded again later are a new image with a new id: ids are never reused
    again = client.upload(("t.png", data), record_id="r1").json()["items"][0]
    assert again["duplicate"] is False and again["id"] > iid


def test_what_was_erased_stays_erased_when_the_queue_is_replayed(client: Client) -> None:
    """Tasks still in the broker (or restored from a backup) for an erased image do nothing."""
    client.rt.queue = NullQueue()  # hold the tasks back, as a broker would
    up = client.upload(("q.tif", imagegen.tiff(seed=331)), ("keep.png", imagegen.png(seed=332)),
                       record_id="rec-Q").json()["items"]
    gone, keep = up[0]["id"], up[1]["id"]
    sent = list(client.rt.queue.sent)
    assert (TASK_READ_SCALE, (gone,)) in sent and (TASK_CLASSIFY, (gone,)) in sent
    r = client.http.delete(f"/v1/images/{gone}", headers=client.auth("admin"))
    assert r.status_code == 200
    blobs = _blobs(client)
    replay = InlineQueue()
    try:
        for _round in range(2):  # delivered, and delivered again
            for task, args in sent:
                replay.enqueue(task, *args)
            replay.join(timeout=60)
    finally:
        replay.shutdown()
    assert set(_counts(client, gone).values()) == {0}
    assert _blobs(client) == blobs
    assert client.get(f"/v1/images/{gone}").status_code == 404
    assert client.get(f"/v1/images/{keep}").json()["steps"]["scale"] == "done"  # the other image was processed
    from services.images import pipeline

    client.rt.queue = NullQueue()
    pipeline.reconcile(client.rt, older_than_s=0)  # the reconciler does not bring it back either
    assert not [t for t in client.rt.queue.sent if t[1] == (gone,)]


def test_a_takedown_during_the_scale_step_leaves_nothing_behind(sqlite_client: Client, monkeypatch) -> None:
    """The image is erased while its scale is being read: the reading is not stored, the blob not recreated."""
    import services.scale as scale_pkg
    from services.images import pipeline
    from services.records.service import delete_image

    c = sqlite_client
    c.rt.queue = NullQueue()
    iid = c.upload(("race.tif", imagegen.tiff(seed=341))).json()["items"][0]["id"]
    real = scale_pkg.read_scale

    def read_then_erase(path: Path, **kw):
        result = real(path, **kw)
        delete_image(c.rt, iid, "test")
        return result

    monkeypatch.setattr(scale_pkg, "read_scale", read_then_erase)
    assert pipeline.read_scale(c.rt, iid) == "skipped"
    assert pipeline.classify(c.rt, iid) == "skipped"
    assert set(_counts(c, iid).values()) == {0} and _blobs(c) == set()


@pytest.mark.parametrize("bad", ["", " " * 3])
def test_bad_record_ids_are_clear_errors(sqlite_client: Client, bad: str) -> None:
    r = sqlite_client.http.delete(f"/v1/records/{bad}", headers=sqlite_client.auth("admin"))
    assert r.status_code in (404, 405, 422) and "error" in r.json()
    assert sqlite_client.get("/v1/images", params={"record_version": "v1"}).json()["error"]["code"] == "bad_filter"
