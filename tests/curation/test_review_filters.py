"""The review queue's filters (category, model version, out of distribution, labelled or not) and what
each card carries (top-3 probabilities, the scale with its source)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from services.tables import Prediction
from tests.conftest import Client


def test_review_filters_and_cards(sqlite_settings, alexnet_onnx: Path) -> None:
    c = Client(sqlite_settings)
    try:
        version = c.activate_model(alexnet_onnx)
        ids = c.upload_synthetic(6, 128, seed=40)
        with c.rt.session() as s:  # a known split: two out of distribution, all needing review
            s.execute(update(Prediction).values(needs_review=True, ood_score=0.1))
            s.execute(update(Prediction).where(Prediction.image_id.in_(ids[:2])).values(ood_score=0.9))
        q = c.get("/v1/review", role="curator").json()
        assert q["total"] == 6 and q["model_version"] == version
        confs = [i["confidence"] for i in q["items"]]
        assert confs == sorted(confs)
        card = q["items"][0]
        assert len(card["top3"]) == 3 and card["top3"][0]["category"] == card["category"]
        probs = [t["probability"] for t in card["top3"]]
        assert probs == sorted(probs, reverse=True)
        assert card["scale"]["source"] in ("ocr", "metadata", "none")
        ood = c.get("/v1/review", role="curator", params={"ood": "true"}).json()
        assert sorted(i["image_id"] for i in ood["items"]) == sorted(ids[:2]) and all(i["ood"] for i in ood["items"])
        assert c.get("/v1/review", role="curator", params={"ood": "false"}).json()["total"] == 4
        cat = card["category"]
        by_cat = c.get("/v1/review", role="curator", params={"category": cat}).json()
        assert by_cat["total"] >= 1 and all(i["category"] == cat for i in by_cat["items"])
        # a label takes the image out of the queue, unless labelled ones are asked for
        c.http.put(f"/v1/images/{card['image_id']}/label", json={"category": 9}, headers=c.auth("curator"))
        assert c.get("/v1/review", role="curator").json()["total"] == 5
        every = c.get("/v1/review", role="curator", params={"unlabelled": "false"}).json()
        assert every["total"] == 6
        assert [i["labelled"] for i in every["items"] if i["image_id"] == card["image_id"]] == ["fibres"]
        assert c.get("/v1/review", role="curator", params={"model_version": version}).json()["total"] == 5
        unknown = c.get("/v1/review", role="curator", params={"model_version": "nope"})
        assert unknown.status_code == 404
        bad = c.get("/v1/review", role="curator", params={"category": "cheese"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_category"
    finally:
        c.close()
