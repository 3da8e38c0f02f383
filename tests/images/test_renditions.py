"""Thumbnails and previews: display stretch, sizes, formats, the scale overlay, the content-addressed cache."""

from __future__ import annotations

import io

import cv2
import numpy as np
import tifffile
from PIL import Image

from services.data.synth import make_image
from tests import imagegen
from tests.conftest import Client


def _tiff16(h: int, w: int, lo: float, hi: float, pages: int = 1, dtype=np.uint16) -> bytes:
    """A left-to-right ramp from lo to hi."""
    ramp = np.tile(np.linspace(lo, hi, w), (h, 1)).astype(dtype)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for _ in range(pages):
            tw.write(ramp, photometric="minisblack")
    return buf.getvalue()


def _decode(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


def test_thumbnail_stretch_sizes_formats_cache_and_roles(sqlite_client: Client) -> None:
    c = sqlite_client
    # 16-bit grey that uses only 1000–1200 of 65535: shown black without a display stretch
    tid = c.upload(("narrow.tif", _tiff16(300, 400, 1000, 1200))).json()["items"][0]["id"]
    c.wait()
    r = c.get(f"/v1/images/{tid}/thumbnail", params={"size": 128})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "private, max-age=86400"
    etag = r.headers["etag"]
    assert etag.startswith('"') and len(etag) == 66
    img = _decode(r.content)
    assert img.size == (128, 96) and img.mode == "L"
    px = np.asarray(img)
    assert px[:, :4].mean() < 10 and px[:, -4:].mean() > 245  # stretched between robust percentiles
    # the cache is content-addressed: the file is named after the ETag, and a revalidation is a 304
    cached = list((c.settings.data_dir / "renditions").rglob("*.jpg"))
    assert [p.stem for p in cached] == [etag.strip('"')]
    again = c.get(f"/v1/images/{tid}/thumbnail", params={"size": 128}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    assert c.get(f"/v1/images/{tid}/thumbnail", params={"size": 128}).content == r.content
    webp = c.get(f"/v1/images/{tid}/thumbnail", params={"size": 64, "format": "webp"})
    assert webp.headers["content-type"] == "image/webp" and _decode(webp.content).size == (64, 48)
    # a preview is never enlarged beyond the image
    prev = c.get(f"/v1/images/{tid}/preview", params={"size": 512})
    assert _decode(prev.content).size == (400, 300)
    # roles: every reading role, not without a key
    for role in ("read", "ingest", "curator", "admin"):
        assert c.get(f"/v1/images/{tid}/thumbnail", role=role).status_code == 200
    assert c.http.get(f"/v1/images/{tid}/thumbnail").status_code == 401


def test_bad_rendition_requests_are_clear_errors(sqlite_client: Client) -> None:
    c = sqlite_client
    tid = c.upload(("a.png", imagegen.png(64, 64))).json()["items"][0]["id"]
    c.wait()
    for params, code in (({"size": 300}, "bad_size"), ({"format": "gif"}, "bad_format"),
                         ({"overlay": "grid"}, "bad_overlay"), ({"size": "big"}, "invalid_request")):
        r = c.get(f"/v1/images/{tid}/thumbnail", params=params)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (params, r.text)
    assert c.get(f"/v1/images/{tid}/preview", params={"size": 256}).json()["error"]["code"] == "bad_size"
    missing = c.get("/v1/images/999/thumbnail")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # the stored file gone (a broken volume): a 404 that says so, not a 500
    key = c.get(f"/v1/images/{tid}").json()["sha256"]
    for p in (c.settings.data_dir / "blobs").rglob(f"{key}*"):
        p.unlink()
    gone = c.get(f"/v1/images/{tid}/preview")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "blob_missing"


def test_float_multipage_and_jpeg(sqlite_client: Client) -> None:
    c = sqlite_client
    fid = c.upload(("float.tif", _tiff16(64, 80, -1.5, 2.5, dtype=np.float32))).json()["items"][0]["id"]
    mid = c.upload(("pages.tif", _tiff16(50, 70, 0, 4000, pages=3))).json()["items"][0]["id"]
    jid = c.upload(("big.jpg", imagegen.jpeg(900, 1200))).json()["items"][0]["id"]
    c.wait()
    f = np.asarray(_decode(c.get(f"/v1/images/{fid}/thumbnail", params={"size": 64}).content))
    assert f.shape == (51, 64) and f.max() - f.min() > 180
    assert _decode(c.get(f"/v1/images/{mid}/thumbnail", params={"size": 64}).content).size == (64, 46)
    # a JPEG is decoded at reduced size (DCT scaling) and still comes out at the requested size
    assert _decode(c.get(f"/v1/images/{jid}/thumbnail", params={"size": 256}).content).size == (256, 192)


def test_scale_overlay_draws_the_reading_and_follows_a_curator(sqlite_client: Client) -> None:
    c = sqlite_client
    img, truth = make_image(6, 800, 600, seed=11, style="zeiss")
    iid = c.upload(("bar.png", cv2.imencode(".png", img)[1].tobytes())).json()["items"][0]["id"]
    c.wait()
    detail = c.get(f"/v1/images/{iid}").json()
    assert detail["scale"]["source"] == "ocr" and detail["scale"]["detail"]["ocr"]["bar_line"]
    plain = c.get(f"/v1/images/{iid}/preview", params={"size": 1024})
    over = c.get(f"/v1/images/{iid}/preview", params={"size": 1024, "overlay": "scale"})
    assert over.status_code == 200 and over.headers["cache-control"] == "private, no-cache"
    assert over.headers["etag"] != plain.headers["etag"]
    rgb = np.asarray(_decode(over.content).convert("RGB")).astype(int)
    magenta = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] > 120)
    ys, xs = np.nonzero(magenta)
    x0, y, x1 = detail["scale"]["detail"]["ocr"]["bar_line"]
    assert magenta.sum() > 50
    assert abs(np.median(ys) - y) < 12 and xs.min() <= x0 + 6 and xs.max() >= x1 - 6  # on the measured bar
    cyan = (rgb[..., 0] < 90) & (rgb[..., 1] > 180) & (rgb[..., 2] > 180)
    assert cyan[detail["scale"]["databar_box"][1] - 2:].sum() > 100  # the data bar's box
    # a curator's reading changes what is drawn, so the overlay's key and bytes change
    put = c.http.put(f"/v1/images/{iid}/scale", json={"scale_value": truth.scale_value * 2,
                                                      "scale_unit": truth.scale_unit}, headers=c.auth("curator"))
    assert put.status_code == 200, put.text
    after = c.get(f"/v1/images/{iid}/preview", params={"size": 1024, "overlay": "scale"},
                  headers={"If-None-Match": over.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != over.headers["etag"]
    assert c.get(f"/v1/images/{iid}/preview", params={"size": 1024}).headers["etag"] == plain.headers["etag"]
