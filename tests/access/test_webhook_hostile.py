"""Hostile webhook requests: odd headers, deep JSON, malformed URLs, port probing; and truthful replies."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from tests import imagegen
from tests.access.test_webhook import post
from tests.conftest import Client


def _code(r) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.json()["error"]["code"]


def test_odd_headers_are_401_not_500(wh: Client) -> None:
    body = json.dumps({"record_id": "r", "content_base64": base64.b64encode(imagegen.png(seed=2)).decode()}).encode()
    r = wh.http.post("/v1/webhooks/ingest", content=body, headers={
        "content-type": "application/json", "X-Semtag-Timestamp": "9" * 400, "X-Semtag-Signature": "sha256=00"})
    assert r.status_code == 401 and _code(r) == "bad_timestamp"
    r = wh.http.post("/v1/webhooks/ingest", content=body, headers=[
        (b"content-type", b"application/json"), (b"X-Semtag-Timestamp", str(int(time.time())).encode()),
        (b"X-Semtag-Signature", b"sha256=\xe9\xe9")])
    assert r.status_code == 401 and _code(r) == "bad_signature"


def test_deep_json_is_malformed(wh: Client) -> None:
    r = post(wh, b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 422 and _code(r) == "malformed_json"


@pytest.mark.parametrize("url", ["http://127.0.0.1/\tx.tif", "http://127.0.0.1:1:2/x.tif",
                                 "http://[127.0.0.1:80]@127.0.0.1/x.tif", "http://127.0.0.1:８０/x.tif",
                                 "http://127.0.0.1:99999/x.tif"])
def test_malformed_urls_are_422(wh: Client, url: str) -> None:
    r = post(wh, json.dumps({"record_id": "r", "url": url}).encode())
    assert r.status_code == 422 and _code(r) in ("bad_url", "url_not_allowed"), r.text


def test_fetch_failures_do_not_map_ports(wh: Client) -> None:
    with socket.socket() as sock:  # a port that refuses
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    r = post(wh, json.dumps({"record_id": "r", "url": f"http://127.0.0.1:{closed}/x.tif"}).encode())
    assert r.status_code == 422 and _code(r) == "fetch_failed"
    message = r.json()["error"]["message"]
    assert message == "the file could not be fetched from the url" and str(closed) not in message


def test_known_bytes_under_another_record_are_reported_truthfully(wh: Client) -> None:
    content = base64.b64encode(imagegen.png(seed=5)).decode()
    first = post(wh, json.dumps({"record_id": "rec-A", "content_base64": content}).encode()).json()
    again = post(wh, json.dumps({"record_id": "rec-B", "content_base64": content}).encode()).json()
    assert again["id"] == first["id"] and again["duplicate"] is True
    assert again["record_id"] == "rec-A" and again["record_id_kept"] is False
    assert wh.get(f"/v1/images/{first['id']}").json()["record_id"] == "rec-A"
