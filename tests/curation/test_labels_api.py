"""Curators undo labels (DELETE) and filter the review queue by needs_review."""

from __future__ import annotations

from pathlib import Path

import cv2

from services.data.synth import make_image
from tests.conftest import Client


def _png(category: int, seed: int) -> bytes:
    img, _ = make_image(category, 128, 128, seed=seed)
    return cv2.imencode(".png", img)[1].tobytes()


def test_delete_label_falls_back_and_review_filter(sqlite_settings, alexnet_onnx: Path) -> None:
    c = Client(sqlite_settings)
    try:
        c.activate_model(alexnet_onnx)
        ids = [c.upload((f"{k}.png", _png(k, 300 + k))).json()["items"][0]["id"] for k in range(4)]
        c.wait()
        cur = c.auth("curator")
        model_category = c.get(f"/v1/images/{ids[0]}").json()["classification"]["category"]
        assert c.http.put(f"/v1/images/{ids[0]}/label", json={"category": "fibres"}, headers=cur).status_code == 200
        assert c.http.put(f"/v1/images/{ids[0]}/label", json={"category": "tips"}, headers=cur).status_code == 200
        r = c.http.delete(f"/v1/images/{ids[0]}/label", headers=cur)  # the earlier label takes over
        assert r.status_code == 200, r.text
        assert r.json()["removed"]["category"] == "tips" and r.json()["category"] == "fibres"
        assert c.get(f"/v1/images/{ids[0]}").json()["human_label"]["category"] == "fibres"
        r = c.http.delete(f"/v1/images/{ids[0]}/label", headers=cur)  # then the model's prediction
        assert r.json()["category"] == model_category and r.json()["category_source"] == "model"
        detail = c.get(f"/v1/images/{ids[0]}").json()
        assert detail["human_label"] is None and detail["category_source"] == "model"
        gone = c.http.delete(f"/v1/images/{ids[0]}/label", headers=cur)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "no_label"
        assert c.http.delete(f"/v1/images/{ids[1]}/label", headers=c.auth("read")).status_code == 403
        # needs_review splits the unlabelled predictions in two; nothing is silently ignored
        flagged = c.get("/v1/review", role="curator", params={"needs_review": "true"}).json()
        confident = c.get("/v1/review", role="curator", params={"needs_review": "false"}).json()
        assert flagged["total"] + confident["total"] == 4
        threshold = sqlite_settings.review_confidence_threshold
        assert all(i["confidence"] >= threshold for i in confident["items"])
        assert c.get("/v1/review", role="curator", params={"needs_review": "maybe"}).status_code == 422
    finally:
        c.close()
