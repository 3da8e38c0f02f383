"""Subscriptions and deliveries through the admin API, and each event type from the change that makes it, end
to end in embedded mode (the API's own dispatcher thread, woken after each commit)."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy import select, update

from services.events import service
from services.events.schemas import EventType
from services.tables import EventDelivery, utcnow
from tests import imagegen
from tests.conftest import Client
from tests.events.conftest import Receiver, event_settings

KIT_SEM = json.loads((Path(__file__).resolve().parents[2] / "services/export/resources/SEM_schema.json").read_text())


@pytest.fixture
def ec(settings, receivers):
    c = Client(event_settings(settings))
    yield c
    c.close()


def _subscribe(c: Client, rec: Receiver, types=None, fmt="kit-sem") -> dict:
    r = c.http.post("/v1/admin/subscriptions", headers=c.auth("admin"), json={
        "url": rec.url, "event_types": types or [t.value for t in EventType], "metadata_format": fmt})
    assert r.status_code == 201, r.text
    rec.secret = r.json()["secret"]
    return r.json()


def _wait_for(rec: Receiver, n: int, timeout: float = 120) -> None:
    """Until ``rec`` verified ``n`` requests: the API's dispatcher sends on its own (a bound for a hung
    dispatcher, not a speed expectation; it also runs every SEMTAG_EVENTS_DISPATCH_EVERY_S)."""
    deadline = time.monotonic() + timeout
    while len(rec.received) < n:
        assert time.monotonic() < deadline, (rec.received, rec.rejected)
        time.sleep(0.05)


def _of_type(rec: Receiver, type_: str) -> list[dict]:
    return [p for _, p in rec.received if p["type"] == type_]


def _tiny_onnx(path: Path) -> Path:
    """A registrable ONNX file (identity graph with semtag's metadata): enough to activate, never run."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    helper.set_model_props(model, {"semtag": json.dumps({"classes": list(range(10)), "preprocessing": {},
                                                         "outputs": ["y"], "arch": "alexnet", "run_name": "tiny"})})
    onnx.save(model, str(path))
    return path


def test_every_event_type_from_the_change_that_makes_it(ec, receivers, tmp_path):
    rec = Receiver()
    receivers.append(rec)
    sub = _subscribe(ec, rec)
    # image.processed: no model yet, so an image is done once its scale is read; kit-sem metadata inside
    image_id = ec.upload(("sem.tif", imagegen.tiff(seed=12)), record_id="rec-1").json()["items"][0]["id"]
    more = [ec.upload((f"p{k}.png", imagegen.png(seed=40 + k))).json()["items"][0]["id"] for k in range(4)]
    ec.wait()
    _wait_for(rec, 5)
    processed = _of_type(rec, "image.processed")
    assert sorted(p["data"]["image_id"] for p in processed) == sorted([image_id, *more])
    data = next(p["data"] for p in processed if p["data"]["image_id"] == image_id)
    assert data["image_id"] == image_id and data["status"] == "done" and data["metadata_format"] == "kit-sem"
    assert data["records"][0]["record_id"] == "rec-1"
    errors = list(jsonschema.Draft201909Validator(KIT_SEM).iter_errors(data["metadata"]))  # a KIT SEM document:
    assert all(e.validator == "required" for e in errors), errors  # only what the file does not record is missing
    assert data["metadata"]["semtag"]["image"]["id"] == image_id and "entry" in data["metadata"]
    # image.labelled: set, then undone
    cur = ec.auth("curator")
    assert ec.http.put(f"/v1/images/{image_id}/label", json={"category": "fibres"}, headers=cur).status_code == 200
    assert ec.http.delete(f"/v1/images/{image_id}/label", headers=cur).status_code == 200
    _wait_for(rec, 7)
    # sent concurrently when one dispatcher round finds both: no order between them (the timestamps tell it)
    labelled = {p["data"]["action"]: p for p in _of_type(rec, "image.labelled")}
    assert sorted(labelled) == ["removed", "set"] and {p["data"]["label"] for p in labelled.values()} == {"fibres"}
    assert labelled["set"]["data"]["labelled_by"] and labelled["removed"]["data"]["category"] is None
    when = {a: datetime.fromisoformat(p["timestamp"]) for a, p in labelled.items()}
    assert when["set"] < when["removed"]
    # image.scale_corrected: a curator's reading, then its undo
    r = ec.http.put(f"/v1/images/{image_id}/scale", json={"scale_value": 2, "scale_unit": "µm", "bar_px": 40},
                    headers=cur)
    assert r.status_code == 200, r.text
    assert ec.http.delete(f"/v1/images/{image_id}/scale", headers=cur).status_code == 200
    _wait_for(rec, 9)
    corrected = {p["data"]["action"]: p["data"] for p in _of_type(rec, "image.scale_corrected")}
    assert sorted(corrected) == ["corrected", "removed"]
    assert corrected["corrected"]["pixel_size_nm"] == 50.0 and corrected["corrected"]["scale_unit"] == "µm"
    assert corrected["corrected"]["corrected_by"] and corrected["removed"]["corrected_by"]
    assert corrected["removed"]["pixel_size_nm"] != 50.0  # the machine's reading is the scale again
    # model.activated (as `semtag models activate` does it)
    from services.classify import registry

    with ec.rt.session() as s:
        version = registry.register(s, _tiny_onnx(tmp_path / "m.onnx"), ec.settings.data_dir / "models").version
        registry.activate(s, version)
    with ec.rt.session() as s:
        registry.activate(s, version)  # already active: no event
    _wait_for(rec, 10)
    (activated,) = _of_type(rec, "model.activated")
    assert activated["data"]["version"] == version and activated["data"]["previous_version"] is None
    # subcategories.updated: a clustering run's tree
    import numpy as np

    from services.clustering.subcategories import analysis_config, clustering_params, write_tree

    p = clustering_params({"k": 2, "within": "all", "method": "ward", "scale_min_nm": None, "scale_max_nm": None})
    ids = [image_id, *more]
    tree = write_tree(ec.rt, np.random.default_rng(0).normal(size=(5, 3)), ids, dict.fromkeys(ids), p, None,
                      analysis_config(p), None)
    _wait_for(rec, 11)
    (updated,) = _of_type(rec, "subcategories.updated")
    assert [s["id"] for s in updated["data"]["subcategories"]] == [t["id"] for t in tree]
    assert updated["data"]["images"] == 5 and updated["data"]["method"] == "ward"
    # record.deleted: a takedown of the record erases the image it alone holds
    r = ec.http.delete("/v1/records/rec-1", headers=ec.auth("admin"))
    assert r.status_code == 200, r.text
    _wait_for(rec, 12)
    (deleted,) = _of_type(rec, "record.deleted")
    assert deleted["data"]["kind"] == "record" and deleted["data"]["target"] == "rec-1"
    assert [i["id"] for i in deleted["data"]["images_erased"]] == [image_id]
    assert deleted["data"]["deletion_id"] == r.json()["id"]
    # every request verified; one id per event; what admins see
    assert not rec.rejected and len(rec.ids()) == len(rec.received) == 12
    page = ec.get("/v1/admin/event-deliveries", role="admin", params={"subscription_id": sub["id"]}).json()
    assert len(page["items"]) == 12 and {d["status"] for d in page["items"]} == {"delivered"}
    assert all(d["attempts"] == 1 and d["last_status_code"] == 200 and d["next_attempt_at"] is None
               for d in page["items"])
    one = ec.get(f"/v1/admin/event-deliveries/{page['items'][-1]['id']}", role="admin").json()
    assert one["body"]["id"] == one["event_id"] and one["body"]["type"] == "image.processed"
    assert ec.get(f"/v1/admin/subscriptions/{sub['id']}", role="admin").json()["deliveries"]["delivered"] == 12


def test_subscriptions_secret_shown_once_roles_and_errors(ec, receivers):
    rec = Receiver()
    receivers.append(rec)
    admin = ec.auth("admin")
    made = _subscribe(ec, rec, ["record.deleted"], "jsonld")
    assert made["secret"].startswith("whsec_") and made["metadata_format"] == "jsonld"
    listed = ec.get("/v1/admin/subscriptions", role="admin").json()["items"]
    one = ec.get(f"/v1/admin/subscriptions/{made['id']}", role="admin")
    assert "secret" not in listed[0] and "secret" not in one.json() and made["secret"] not in one.text
    rotated = ec.http.patch(f"/v1/admin/subscriptions/{made['id']}", json={"rotate_secret": True}, headers=admin)
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (None, made["secret"])
    plain = ec.http.patch(f"/v1/admin/subscriptions/{made['id']}", json={"event_types": ["image.labelled"]},
                          headers=admin).json()
    assert "secret" not in plain and plain["event_types"] == ["image.labelled"]
    given = "whsec_" + "A" * 40
    r = ec.http.post("/v1/admin/subscriptions", headers=admin,
                     json={"url": rec.url, "event_types": ["image.labelled"], "secret": given})
    assert r.status_code == 201 and r.json()["secret"] == given
    for body, code in [({"url": rec.url, "event_types": ["image.exploded"]}, "invalid_request"),
                       ({"url": rec.url, "event_types": []}, "invalid_request"),
                       ({"url": rec.url, "event_types": ["image.labelled"], "secret": "hunter2"}, "bad_secret"),
                       ({"url": "http://192.168.1.9/x", "event_types": ["image.labelled"]}, "url_not_allowed"),
                       ({"url": rec.url, "event_types": ["image.labelled"], "colour": "red"}, "invalid_request")]:
        r = ec.http.post("/v1/admin/subscriptions", headers=admin, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (body, r.text)
        assert "hunter2" not in r.text
    for role in ("read", "curator", "ingest"):
        assert ec.http.get("/v1/admin/subscriptions", headers=ec.auth(role)).status_code == 403
        assert ec.http.post("/v1/admin/subscriptions", headers=ec.auth(role),
                            json={"url": rec.url, "event_types": ["image.labelled"]}).status_code == 403
    missing = ec.get("/v1/admin/subscriptions/999", role="admin")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "subscription_not_found"
    assert ec.get("/v1/admin/event-deliveries", role="admin", params={"status": "lost"}).status_code == 422
    types = ec.get("/v1/admin/event-types", role="admin").json()["items"]
    assert {t["type"] for t in types} == {t.value for t in EventType}
    gone = ec.http.delete(f"/v1/admin/subscriptions/{made['id']}", headers=admin)
    assert gone.status_code == 200 and ec.get(f"/v1/admin/subscriptions/{made['id']}", role="admin").status_code == 404


def test_dead_letters_listed_and_redelivered(ec, receivers):
    rec = Receiver(status=500)
    receivers.append(rec)
    admin = ec.auth("admin")
    sub = _subscribe(ec, rec, ["image.labelled"])
    image_id = ec.upload(("a.png", imagegen.png(seed=8))).json()["items"][0]["id"]
    ec.wait()
    assert ec.http.put(f"/v1/images/{image_id}/label", json={"category": "tips"}, headers=ec.auth("curator")) \
        .status_code == 200
    _wait_for(rec, 1)  # the first attempt, by the API's own dispatcher
    t = utcnow()
    for _ in range(60):  # the retries, driven by the clock until the window is over
        t += timedelta(hours=1)
        service.dispatch(ec.rt, now=t, rng=random.Random(0))
    dead = ec.get("/v1/admin/dead-letters", role="admin").json()["items"]
    assert len(dead) == 1 and dead[0]["status"] == "dead" and dead[0]["last_status_code"] == 500
    assert dead[0]["attempts"] == rec.requests > 5 and dead[0]["last_error"] == "HTTP 500"
    assert ec.get("/v1/admin/dead-letters", role="admin", params={"subscription_id": sub["id"] + 1}).json()[
        "items"] == []
    # in flight: a redelivery waits for the attempt's outcome
    with ec.rt.session() as s:
        s.execute(update(EventDelivery).values(status="sending", lease_until=utcnow() + timedelta(minutes=5)))
    busy = ec.http.post(f"/v1/admin/event-deliveries/{dead[0]['id']}/redeliver", headers=admin)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "delivery_in_flight"
    with ec.rt.session() as s:
        s.execute(update(EventDelivery).values(status="dead", lease_until=None))
    rec.status = 200
    again = ec.http.post(f"/v1/admin/event-deliveries/{dead[0]['id']}/redeliver", headers=admin)
    assert again.status_code == 200 and again.json()["status"] in ("pending", "sending", "delivered")
    deadline = time.monotonic() + 120
    while ec.get(f"/v1/admin/event-deliveries/{dead[0]['id']}", role="admin").json()["status"] != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rec.ids() == {dead[0]["event_id"]}  # every attempt, the last included, under one id
    assert ec.http.post("/v1/admin/event-deliveries/424242/redeliver", headers=admin).status_code == 404
    assert ec.http.post("/v1/admin/dead-letters/redeliver", headers=admin).json() == {"redelivered": 0}


def test_nothing_is_written_without_subscribers(ec):
    image_id = ec.upload(("a.png", imagegen.png(seed=9))).json()["items"][0]["id"]
    ec.wait()
    ec.http.put(f"/v1/images/{image_id}/label", json={"category": "tips"}, headers=ec.auth("curator"))
    from services.tables import EventOutbox

    with ec.rt.session() as s:
        assert s.scalars(select(EventOutbox)).all() == []


def test_the_celery_door_queues_a_dispatch_after_a_commit_and_on_the_beat(redis_url, sqlite_settings, monkeypatch):
    import redis as redis_lib

    from semtag.bootstrap import build_runtime
    from services import migrate
    from services.events import outbox
    from workers.app import app
    from workers.queues import CeleryQueue

    monkeypatch.setattr("services.runtime.NUDGE_INTERVAL_S", 3600.0)  # whatever the machine's load
    rt = build_runtime(sqlite_settings.model_copy(update={"broker_url": redis_url}), queue=CeleryQueue(redis_url))
    migrate.upgrade(rt.db_url)
    client = redis_lib.Redis.from_url(redis_url)

    def ours() -> list[bytes]:  # the shared Redis may hold other tests' messages: count only dispatches
        return [m for m in client.lrange("maintenance", 0, -1)
                if json.loads(m)["headers"]["task"] == "semtag.dispatch_events"]

    for m in ours():
        client.lrem("maintenance", 0, m)
    with rt.session() as s:
        outbox.emit(s, EventType.model_activated, "model/x", {"n": 1})
    assert len(ours()) == 1
    with rt.session() as s:  # a second commit within the nudge interval adds no message
        outbox.emit(s, EventType.model_activated, "model/y", {"n": 2})
    assert len(ours()) == 1
    for m in ours():
        client.lrem("maintenance", 0, m)
    beat = app.conf.beat_schedule["dispatch-events"]
    assert beat["task"] == "semtag.dispatch_events" and beat["schedule"] == float(rt.settings.events_dispatch_every_s)
    assert app.conf.task_routes["semtag.dispatch_events"] == {"queue": "maintenance"}


def test_an_outage_of_the_broker_does_not_undo_the_commit(sqlite_settings, receivers):
    from semtag.bootstrap import build_runtime
    from services import migrate
    from services.events import outbox
    from services.tables import EventOutbox
    from workers.queues import CeleryQueue

    rt = build_runtime(event_settings(sqlite_settings), queue=CeleryQueue("redis://127.0.0.1:1/0", timeout_s=0.5))
    migrate.upgrade(rt.db_url)
    with rt.session() as s:
        outbox.emit(s, EventType.model_activated, "model/x", {"n": 1})  # the nudge fails, quietly
    with rt.session() as s:
        assert len(s.scalars(select(EventOutbox)).all()) == 1

