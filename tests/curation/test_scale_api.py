"""Curators confirm or correct scale readings (PUT /v1/images/{id}/scale): stored with who and when,
it becomes the image's scale, undone like labels, never overwritten by the machine."""

from __future__ import annotations

import cv2
import pytest
from sqlalchemy import delete, select

from services.data.synth import make_image
from services.images import pipeline
from services.tables import HumanScale, Image, ScaleReading, StepState
from tests import imagegen
from tests.conftest import Client


def _bar_image(c: Client, seed: int = 5) -> tuple[int, dict]:
    img, _ = make_image(2, 800, 600, seed=seed, style="zeiss")
    iid = c.upload((f"s{seed}.png", cv2.imencode(".png", img)[1].tobytes())).json()["items"][0]["id"]
    c.wait()
    return iid, c.get(f"/v1/images/{iid}").json()


def test_confirm_correct_search_history_and_undo(client: Client) -> None:
    c = client
    iid, before = _bar_image(c)
    machine = before["scale"]
    assert machine["source"] == "ocr" and machine["bar_px"] and before["scale_source"] == "ocr"
    cur = c.auth("curator")
    # confirming the machine's label keeps its pixel size
    r = c.http.put(f"/v1/images/{iid}/scale", json={"scale_value": machine["scale_value"],
                                                    "scale_unit": machine["scale_unit"]}, headers=cur)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["action"] == "confirmed" and body["pixel_size_nm"] == pytest.approx(machine["pixel_size_nm"])
    assert body["labelled_by"] == "curator key"
    assert body["created_at"].endswith(("Z", "+00:00"))
    # correcting it: twice the label over the same measured bar is twice the pixel size ("um" is µm)
    value = machine["scale_value"] * 2
    unit = "um" if machine["scale_unit"] == "µm" else machine["scale_unit"]
    r = c.http.put(f"/v1/images/{iid}/scale", json={"scale_value": value, "scale_unit": unit}, headers=cur)
    assert r.json()["action"] == "corrected"
    assert r.json()["pixel_size_nm"] == pytest.approx(2 * machine["pixel_size_nm"], rel=1e-4)
    detail = c.get(f"/v1/images/{iid}").json()
    assert detail["scale_source"] == "human" and detail["human_scale"]["action"] == "corrected"
    assert detail["pixel_size_nm"] == pytest.approx(2 * machine["pixel_size_nm"], rel=1e-4)
    assert detail["scale_nm"] == pytest.approx(2 * before["scale_nm"])
    assert detail["scale"]["pixel_size_nm"] == machine["pixel_size_nm"]  # the machine's reading stays beside it
    # the image's scale is what search filters on
    px = detail["pixel_size_nm"]
    found = c.get("/v1/images", params={"pixel_size_min_nm": px * 0.999, "pixel_size_max_nm": px * 1.001}).json()
    assert [i["id"] for i in found["items"]] == [iid]
    # audited: who and when, newest first
    hist = c.get(f"/v1/images/{iid}/curation").json()
    assert [s["action"] for s in hist["scales"]] == ["corrected", "confirmed"]
    assert all(s["labelled_by"] == "curator key" for s in hist["scales"]) and hist["labels"] == []
    # undo: the earlier reading, then the machine's, take over; then nothing is left to undo
    r = c.http.delete(f"/v1/images/{iid}/scale", headers=cur)
    assert r.status_code == 200 and r.json()["scale_source"] == "human"
    assert r.json()["pixel_size_nm"] == pytest.approx(machine["pixel_size_nm"])
    r = c.http.delete(f"/v1/images/{iid}/scale", headers=cur)
    assert r.json()["scale_source"] == "ocr" and r.json()["scale_nm"] == pytest.approx(before["scale_nm"])
    assert c.get(f"/v1/images/{iid}").json()["human_scale"] is None
    gone = c.http.delete(f"/v1/images/{iid}/scale", headers=cur)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "no_scale_label"


def test_bad_scale_readings_are_refused_with_a_code(sqlite_client: Client) -> None:
    c = sqlite_client
    iid, before = _bar_image(c, seed=7)
    noise = c.upload(("noise.png", imagegen.png(64, 64))).json()["items"][0]["id"]
    c.wait()
    cur = c.auth("curator")

    def put(image_id: int, body: dict, headers: dict = cur):
        return c.http.put(f"/v1/images/{image_id}/scale", json=body, headers=headers)

    cases = [
        ({"scale_value": 2, "scale_unit": "furlong"}, "bad_unit"),
        ({"scale_value": -1, "scale_unit": "nm"}, "invalid_request"),
        ({"scale_value": "2", "scale_unit": "nm", "x": 1}, "invalid_request"),
        ({"scale_value": 2, "scale_unit": "nm", "bar_px": 5000}, "bad_scale"),
        ({"scale_value": 1, "scale_unit": "µm", "bar_px": 100, "pixel_size_nm": 50}, "inconsistent_scale"),
    ]
    for body, code in cases:
        r = put(iid, body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (body, r.text)
    # no bar was measured on a noise image: the curator must say how long the bar is
    r = put(noise, {"scale_value": 1, "scale_unit": "µm"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bar_unknown"
    ok = put(noise, {"scale_value": 1, "scale_unit": "µm", "bar_px": 20})
    assert ok.status_code == 200 and ok.json()["pixel_size_nm"] == pytest.approx(50.0)
    assert put(noise, {"scale_value": 1, "scale_unit": "nm", "pixel_size_nm": 0.25}).json()["pixel_size_nm"] == 0.25
    assert put(iid, {"scale_value": 1, "scale_unit": "nm"}, c.auth("read")).status_code == 403
    assert put(999, {"scale_value": 1, "scale_unit": "nm"}).status_code == 404
    # nothing refused was stored
    assert c.get(f"/v1/images/{iid}").json()["human_scale"] is None


def test_a_late_machine_reading_does_not_replace_the_curators(sqlite_client: Client) -> None:
    c = sqlite_client
    iid, before = _bar_image(c, seed=9)
    r = c.http.put(f"/v1/images/{iid}/scale", json={"scale_value": 3, "scale_unit": "mm"}, headers=c.auth("curator"))
    human_px = r.json()["pixel_size_nm"]
    with c.rt.session() as s:  # the scale step runs again (a redelivered task after a reset)
        s.execute(delete(ScaleReading).where(ScaleReading.image_id == iid))
        s.get(Image, iid).scale_state = StepState.pending.value
    assert pipeline.read_scale(c.rt, iid) == "ocr"
    with c.rt.session() as s:
        img = s.get(Image, iid)
        assert img.pixel_size_nm == human_px and img.scale_nm == 3e6
        assert len(s.scalars(select(HumanScale).where(HumanScale.image_id == iid)).all()) == 1
