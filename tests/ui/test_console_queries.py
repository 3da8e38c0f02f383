"""The console's aggregates on both databases: dashboard counts and plots, scale-triage lists."""

from __future__ import annotations

from sqlalchemy import select

from services.curation import console
from services.tables import HumanLabel, Image, ModelVersion, Prediction, ScaleReading, utcnow
from tests import imagegen
from tests.conftest import Client


def test_dashboard_and_triage(client: Client) -> None:
    c = client
    ids = [c.upload((f"n{k}.png", imagegen.png(48, 64, seed=k))).json()["items"][0]["id"] for k in range(4)]
    c.wait()
    with c.rt.session() as s:
        model = ModelVersion(version="m1", architecture="x", file_path="-", file_sha256="0" * 64, active=True,
                             metrics={})
        s.add(model)
        s.flush()
        for n, iid in enumerate(ids):
            conf = [0.15, 0.55, 0.95, 1.0][n]
            s.add(Prediction(image_id=iid, model_id=model.id, model_version="m1", category="tips", category_index=5,
                             probabilities=[0.0] * 10, confidence=conf, needs_review=conf < 0.6, ood_score=0.0))
            img = s.get(Image, iid)
            img.category, img.scale_nm = "tips", [1500.0, 1500.0, 300.0, None][n]
            r = s.scalar(select(ScaleReading).where(ScaleReading.image_id == iid))
            r.source, r.confidence = ["ocr", "metadata", "ocr", "none"][n], [0.9, 0.99, 0.3, None][n]
            r.detail = {"disagree": n == 1}
        s.add(HumanLabel(image_id=ids[0], category="tips", labelled_by="x", created_at=utcnow()))
    with c.rt.session() as s:
        d = console.dashboard(s)
        assert d.total == 4 and d.by_status["done"] == 4
        assert dict((slug, n) for slug, _, n in d.by_category)["tips"] == 4
        assert d.by_scale_bin == [("200 nm–500 nm", 1), ("1 µm–2 µm", 2), ("no scale", 1)]
        assert d.confidence == {"m1": [0, 1, 0, 0, 0, 1, 0, 0, 0, 2]}
        assert d.review_backlog == 1  # 0.15 is labelled, 0.55 needs review
        assert d.labels_per_day[-1][1] == 1 and len(d.labels_per_day) == 30
        lists = {k: [i.image_id for i in console.scale_triage(s, k)[0]] for k in console.TRIAGE_KINDS}
        assert lists == {"ocr": [ids[0], ids[2]], "low": [ids[2]], "disagree": [ids[1]], "none": [ids[3]]}
        assert d.triage_backlog == 3
        page, total, nxt = console.scale_triage(s, "ocr", limit=1)
        assert total == 2 and [i.image_id for i in page] == [ids[0]] and nxt == ids[0]
        assert [i.image_id for i in console.scale_triage(s, "ocr", 1, after=nxt)[0]] == [ids[2]]
