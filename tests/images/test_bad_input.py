"""Every bad input of the foundation issue: a clear JSON 4xx naming the problem, nothing else lost."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from semtag.settings import Settings
from services.tables import Image
from tests import imagegen
from tests.conftest import Client

GOOD = imagegen.png(seed=77)


def _only_error(r):
    body = r.json()
    return body["error"]["code"], body["error"]["message"]


@pytest.mark.parametrize(
    "name,data,status,code",
    [
        ("empty.png", b"", 422, "empty_file"),
        ("text.png", b"this is a lab notebook, not an image\n" * 20, 415, "not_an_image"),
        ("anim.gif", imagegen.gif(), 415, "unsupported_format"),
        ("cut.jpg", imagegen.truncated(imagegen.jpeg(h=200, w=200)), 422, "truncated_image"),
        ("cut.png", imagegen.truncated(imagegen.png(h=200, w=200)), 422, "truncated_image"),
        ("cut.tif", imagegen.truncated(imagegen.tiff(h=200, w=200), 0.7), 422, "truncated_image"),
        ("bomb.png", imagegen.png_claiming(60000, 60000), 413, "too_many_pixels"),
        ("../../etc/passwd.png", GOOD, 422, "bad_filename"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_bad_file_alone_is_rejected_clearly(sqlite_client, name, data, status, code):
    r = sqlite_client.upload((name, data))
    assert r.status_code == status, r.text
    got_code, message = _only_error(r)
    assert got_code == code and message
    with sqlite_client.rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 0
    assert list((sqlite_client.settings.blob_dir / "tmp").iterdir()) == []  # no temp file left behind


def _raw_multipart(filename: bytes, data: bytes) -> tuple[bytes, str]:
    boundary = "semtagtestboundary"
    body = (f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
            + b"Content-Type: application/octet-stream\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("filename", [b"bad\x07name.png", b"line\nbreak.png", b"..\\..\\win.png"])
def test_filename_with_control_characters_or_traversal_sent_raw(sqlite_client, filename):
    body, ctype = _raw_multipart(filename, GOOD)
    r = sqlite_client.http.post("/v1/images", content=body,
                                headers={**sqlite_client.auth("ingest"), "Content-Type": ctype})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_filename", r.text


def test_batch_with_one_bad_file_stores_the_good_ones(client):
    r = client.upload(("good1.png", imagegen.png(seed=1)), ("cut.jpg", imagegen.truncated(imagegen.jpeg())),
                      ("good2.tif", imagegen.tiff(seed=2)))
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 1
    assert body["items"][1]["error"]["code"] == "truncated_image"
    client.wait()
    for item in (body["items"][0], body["items"][2]):
        assert client.get(f"/v1/images/{item['id']}").json()["status"] == "done"


def test_file_over_size_limit_is_cut_off_and_others_kept(tmp_path):
    c = Client(Settings(data_dir=tmp_path / "var", max_upload_bytes=4000))
    try:
        big = imagegen.tiff(h=100, w=100, bits=16)  # 20 kB
        r = c.upload(("big.tif", big), ("small.png", imagegen.png(h=8, w=8)))
        assert r.status_code == 202
        items = r.json()["items"]
        assert items[0]["error"]["code"] == "file_too_large" and "4000" in items[0]["error"]["message"]
        assert items[1]["id"]
        r = c.upload(("big.tif", big))
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    finally:
        c.close()


def test_pixel_limit_is_configurable(tmp_path):
    c = Client(Settings(data_dir=tmp_path / "var", max_pixels=1000))
    try:
        r = c.upload(("a.png", imagegen.png(h=48, w=64)))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels"
    finally:
        c.close()


def test_wrong_content_type_and_missing_file(sqlite_client):
    r = sqlite_client.http.post("/v1/images", content=GOOD, headers={**sqlite_client.auth("ingest"),
                                                                      "Content-Type": "image/png"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "wrong_content_type"
    r = sqlite_client.http.post("/v1/images", data={"record_id": "x"}, files={"other": ("", b"")},
                                headers=sqlite_client.auth("ingest"))
    assert r.status_code == 422


def test_malformed_json_on_jobs(sqlite_client):
    r = sqlite_client.http.post("/v1/admin/jobs", content=b"{not json", headers={
        **sqlite_client.auth("admin"), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_json"


def test_decode_failure_in_worker_marks_image_failed_and_service_keeps_serving(sqlite_client):
    import workers.tasks as tasks
    from services.images.ingest import ingest_file
    from services.runtime import NullQueue, Runtime
    from services.storage import writing

    rt = Runtime(sqlite_client.settings, queue=NullQueue())  # store the image without running its tasks
    data = imagegen.tiff(h=64, w=64, bits=16, seed=5)
    with writing(rt.store) as w:
        w.write(data)
        res = ingest_file(rt, w, "later-broken.tif")
    img_path = rt.store.local_path(rt.store.key_for(res.sha256, ".tif"))
    raw = bytearray(img_path.read_bytes())
    raw[8:] = b"\xff" * (len(raw) - 8)  # damage the IFD: the header survives, the directory does not
    img_path.write_bytes(bytes(raw))
    assert tasks.read_scale.apply(args=[res.image_id]).get() == "failed"
    body = sqlite_client.get(f"/v1/images/{res.image_id}").json()
    assert body["status"] == "failed" and "decode failed" in body["error"]
    assert sqlite_client.upload(("next.png", GOOD)).status_code == 202
