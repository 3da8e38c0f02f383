"""Upload, read back and search images through the HTTP API, on SQLite and on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from services.tables import Image, ImageRecord, ScaleReading
from tests import imagegen


def test_upload_then_read_back_all_metadata(client):
    r = client.upload(("sem.tif", imagegen.tiff(bits=16)), record_id="rec-42")
    assert r.status_code == 202, r.text
    item = r.json()["items"][0]
    assert item["duplicate"] is False and item["status"] == "pending"
    client.wait()
    img = client.get(f"/v1/images/{item['id']}").json()
    assert img["record_id"] == "rec-42"
    assert (img["format"], img["width"], img["height"], img["bit_depth"], img["pages"]) == ("TIFF", 64, 48, 16, 1)
    assert img["status"] == "done"
    assert img["steps"] == {"scale": "done", "classification": "no_model"}
    assert img["scale"]["source"] in ("none", "ocr", "metadata")
    assert img["sha256"] == item["sha256"]


def test_same_bytes_return_same_id_and_start_no_work(client):
    data = imagegen.png(seed=3)
    first = client.upload(("a.png", data)).json()["items"][0]
    client.wait()
    sent = []
    original = client.rt.queue.enqueue
    client.rt.queue.enqueue = lambda task, *args: (sent.append(task), original(task, *args))
    second = client.upload(("renamed.png", data)).json()["items"][0]
    client.wait()
    assert second["id"] == first["id"] and second["duplicate"] is True
    assert sent == []
    with client.rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 1
        assert s.scalar(select(func.count()).select_from(ScaleReading)) == 1


def test_many_files_in_one_request(client):
    files = [(f"f{i}.png", imagegen.png(seed=10 + i)) for i in range(3)]
    r = client.upload(*files)
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 3 and len({i["id"] for i in body["items"]}) == 3


def test_accepted_pixel_formats(client):
    cases = {
        "gray8.png": (imagegen.png(mode="L", seed=1), 8, 1),
        "gray16.png": (imagegen.png(mode="I;16", seed=2), 16, 1),
        "rgb.jpg": (imagegen.jpeg(seed=3), 8, 1),
        "rgba.png": (imagegen.png(mode="RGBA", seed=4), 8, 1),
        "palette.png": (imagegen.png(mode="P", seed=5), 8, 1),
        "gray16.tif": (imagegen.tiff(bits=16, seed=6), 16, 1),
        "gray8.tif": (imagegen.tiff(bits=8, seed=7), 8, 1),
        "rgb.tif": (imagegen.tiff(bits=8, rgb=True, seed=8), 8, 1),
        "multipage.tif": (imagegen.tiff(bits=16, pages=3, seed=9), 16, 3),
        "plain.bmp": (imagegen.bmp(seed=10), 8, 1),
    }
    r = client.upload(*[(name, data) for name, (data, _, _) in cases.items()])
    assert r.status_code == 202, r.text
    assert r.json()["rejected"] == 0
    client.wait()
    for item in r.json()["items"]:
        img = client.get(f"/v1/images/{item['id']}").json()
        _, bits, pages = cases[item["filename"]]
        assert (img["bit_depth"], img["pages"]) == (bits, pages), item["filename"]
        assert img["status"] == "done", (item["filename"], img["error"])


def test_search_filters_and_keyset_pagination(client):
    ids = [client.upload((f"s{i}.png", imagegen.png(seed=100 + i))).json()["items"][0]["id"] for i in range(7)]
    client.wait()
    with client.rt.session() as s:
        for n, image_id in enumerate(ids):
            img = s.get(Image, image_id)
            img.category = "particles" if n % 2 == 0 else "fibres"
            img.confidence = 0.5 + n * 0.07
            img.pixel_size_nm = 1.0 * (n + 1)
            s.add(ImageRecord(image_id=image_id, record_id="r-even" if n % 2 == 0 else "r-odd"))
    got, cursor = [], None
    while True:
        page = client.get("/v1/images", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        got += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert got == sorted(ids)
    parts = client.get("/v1/images", params={"category": "Particles"}).json()["items"]
    assert [i["id"] for i in parts] == ids[0::2]
    band = client.get("/v1/images", params={"pixel_size_min_nm": 2, "pixel_size_max_nm": 4}).json()["items"]
    assert [i["pixel_size_nm"] for i in band] == [2.0, 3.0, 4.0]
    conf = client.get("/v1/images", params={"min_confidence": 0.85}).json()["items"]
    assert [i["id"] for i in conf] == ids[5:]
    odd = client.get("/v1/images", params={"record_id": "r-odd", "status": "done"}).json()["items"]
    assert [i["id"] for i in odd] == ids[1::2]


def test_search_rejects_bad_parameters(client):
    assert client.get("/v1/images", params={"category": "teapots"}).json()["error"]["code"] == "unknown_category"
    assert client.get("/v1/images", params={"cursor": "!!!"}).json()["error"]["code"] == "bad_cursor"
    assert client.get("/v1/images", params={"status": "weird"}).status_code == 422
    assert client.get("/v1/images", params={"limit": 0}).status_code == 422
    r = client.get("/v1/images", params={"pixel_size_min_nm": 5, "pixel_size_max_nm": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_filter"
    assert client.get("/v1/images/999999").status_code == 404
