"""The repository's ingest webhook: signatures, replay window, base64 and allow-listed URLs."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import pytest

from services.access.webhook import sign
from tests import imagegen
from tests.access.conftest import SECRET
from tests.conftest import Client


@pytest.fixture
def files_server():
    """A local HTTP server (127.0.0.1) serving one image, as the repository's file store would."""
    payload = imagegen.tiff(seed=44)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/files/sem.tif"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", payload
    srv.shutdown()



def post(c: Client, body: bytes, ts: int | None = None, secret: str = SECRET, signature: str | None = None):
    ts = int(time.time()) if ts is None else ts
    sig = signature or sign(secret, str(ts), body)
    return c.http.post("/v1/webhooks/ingest", content=body, headers={
        "Content-Type": "application/json", "X-Semtag-Timestamp": str(ts), "X-Semtag-Signature": sig})


def test_base64_ingest_then_dedup(wh):
    data = imagegen.png(seed=5)
    body = json.dumps({"record_id": "rec-7", "filename": "a.png",
                       "content_base64": base64.b64encode(data).decode()}).encode()
    r = post(wh, body)
    assert r.status_code == 202, r.text
    assert r.json()["duplicate"] is False and r.json()["record_id"] == "rec-7"
    wh.wait()
    img = wh.get(f"/v1/images/{r.json()['id']}").json()
    assert img["record_id"] == "rec-7" and img["status"] == "done"
    again = post(wh, body, ts=int(time.time()) + 1)  # a new delivery of the same bytes (a replay gets the first reply)
    assert again.json()["id"] == r.json()["id"] and again.json()["duplicate"] is True


def test_url_ingest_from_allowed_host(wh, files_server):
    base, payload = files_server
    body = json.dumps({"record_id": "rec-8", "url": f"{base}/files/sem.tif"}).encode()
    r = post(wh, body)
    assert r.status_code == 202, r.text
    wh.wait()
    img = wh.get(f"/v1/images/{r.json()['id']}").json()
    assert img["filename"] == "sem.tif" and img["bytes"] == len(payload)


@pytest.mark.parametrize("case,status,code", [
    ("wrong_signature", 401, "bad_signature"),
    ("wrong_secret", 401, "bad_signature"),
    ("stale", 401, "stale_signature"),
    ("future", 401, "stale_signature"),
    ("malformed_json", 422, "malformed_json"),
    ("bad_base64", 422, "bad_base64"),
    ("both_sources", 422, "invalid_request"),
    ("not_allowed_url", 422, "url_not_allowed"),
    ("missing_file_url", 422, "fetch_failed"),
    ("not_an_image", 415, "not_an_image"),
])
def test_rejections(wh, files_server, case, status, code):
    base, _ = files_server
    good = {"record_id": "r", "content_base64": base64.b64encode(imagegen.png(seed=6)).decode()}
    body = json.dumps(good).encode()
    kwargs = {}
    if case == "wrong_signature":
        kwargs["signature"] = "sha256=" + "0" * 64
    elif case == "wrong_secret":
        kwargs["secret"] = "guess"
    elif case == "stale":
        kwargs["ts"] = int(time.time()) - 301
    elif case == "future":
        kwargs["ts"] = int(time.time()) + 400
    elif case == "malformed_json":
        body = b'{"record_id": "r", "content_base64": '
    elif case == "bad_base64":
        body = json.dumps({"record_id": "r", "content_base64": "not*base64!"}).encode()
    elif case == "both_sources":
        body = json.dumps({**good, "url": f"{base}/files/sem.tif"}).encode()
    elif case == "not_allowed_url":
        body = json.dumps({"record_id": "r", "url": "http://files.example.org/sem.tif"}).encode()
    elif case == "missing_file_url":
        body = json.dumps({"record_id": "r", "url": f"{base}/files/nothing.tif"}).encode()
    elif case == "not_an_image":
        body = json.dumps({"record_id": "r", "content_base64": base64.b64encode(b"hello" * 20).decode()}).encode()
    r = post(wh, body, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert wh.get("/v1/images").json()["items"] == []
    assert list((wh.settings.blob_dir / "tmp").iterdir()) == []


def test_replayed_request_outside_window_is_refused_even_with_valid_mac(wh):
    body = json.dumps({"record_id": "r", "content_base64": base64.b64encode(imagegen.png(seed=1)).decode()}).encode()
    ts = int(time.time()) - 3600
    r = post(wh, body, ts=ts)  # signature computed correctly for the old timestamp
    assert r.status_code == 401 and r.json()["error"]["code"] == "stale_signature"


def test_webhook_disabled_without_secret(sqlite_client):
    r = post(sqlite_client, b"{}")
    assert r.status_code == 503 and r.json()["error"]["code"] == "webhook_disabled"
