"""Hostile webhook requests: odd headers, deep JSON, malformed URLs, port probing; and truthful replies."""

from __future__ import annotations

import base64
import json
import socket
import time
from types import SimpleNamespace

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


def test_known_bytes_under_another_record_are_added_to_it_and_reported_truthfully(wh: Client) -> None:
    content = base64.b64encode(imagegen.png(seed=5)).decode()
    first = post(wh, json.dumps({"record_id": "rec-A", "content_base64": content}).encode()).json()
    assert first["record_added"] is True and first["duplicate"] is False
    again = post(wh, json.dumps({"record_id": "rec-B", "record_version": "2", "content_base64": content}).encode())
    again = again.json()
    assert again["id"] == first["id"] and again["duplicate"] is True
    assert (again["record_id"], again["record_version"], again["record_added"]) == ("rec-B", "2", True)
    assert [(r["record_id"], r["record_version"]) for r in again["records"]] == [("rec-A", None), ("rec-B", "2")]
    same = post(wh, json.dumps({"record_id": "rec-B", "record_version": "2", "content_base64": content,
                                "filename": "x.png"}).encode()).json()  # another body: not a replay
    assert same["record_added"] is False and len(same["records"]) == 2
    img = wh.get(f"/v1/images/{first['id']}").json()
    assert img["record_id"] == "rec-A" and [r["record_id"] for r in img["records"]] == ["rec-A", "rec-B"]
    for rec in ("rec-A", "rec-B"):
        assert [i["id"] for i in wh.get("/v1/images", params={"record_id": rec}).json()["items"]] == [first["id"]]
    assert wh.get("/v1/images", params={"record_id": "rec-B", "record_version": "1"}).json()["items"] == []


def test_fetch_timeout_bounds_the_whole_download(tmp_path) -> None:
    """A file host that sends one byte every 0.2 s never trips a per-read timeout; the deadline stops it."""
    import threading

    from semtag.settings import Settings
    from tests.access.conftest import SECRET

    stop = threading.Event()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def trickle() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"x")
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    c = Client(Settings(data_dir=tmp_path / "var", webhook_secret=SECRET, webhook_url_allowlist=["127.0.0.1:*"],
                        webhook_fetch_timeout_s=1.5))
    try:
        t0 = time.monotonic()
        r = post(c, json.dumps({"record_id": "r", "url": f"http://127.0.0.1:{srv.getsockname()[1]}/slow.tif"}).encode())
        elapsed = time.monotonic() - t0
        assert r.status_code == 422 and _code(r) == "fetch_failed"
        assert elapsed < 5, elapsed  # 1.5 s deadline plus at most one read, not the trickle's 5.5 hours
        assert list((c.settings.blob_dir / "tmp").iterdir()) == []
    finally:
        stop.set()
        srv.close()
        c.close()


def test_headers_are_checked_before_the_body_is_read(wh: Client) -> None:
    """A stale or unsigned request is refused on its headers alone; a signed one streams through the HMAC."""
    stale = str(int(time.time()) - 3600)
    r = wh.http.post("/v1/webhooks/ingest", content=b"x" * 1000, headers={
        "content-type": "application/json", "X-Semtag-Timestamp": stale, "X-Semtag-Signature": "sha256=00",
        "content-length": str(10**12)})
    assert r.status_code == 401 and _code(r) == "stale_signature"  # not 413: the body was never looked at
    big = json.dumps({"record_id": "big", "filename": "b.png",
                      "content_base64": base64.b64encode(imagegen.png(h=1200, w=1600, seed=8)).decode()}).encode()
    assert len(big) > 1 << 20  # spooled to disk, not held in memory, while the HMAC is computed
    assert post(wh, big, signature="sha256=" + "0" * 64).status_code == 401
    ok = post(wh, big)
    assert ok.status_code == 202, ok.text


def test_a_replay_inside_the_window_gets_the_first_reply(wh: Client, file_host: SimpleNamespace) -> None:
    body = json.dumps({"record_id": "r", "url": f"http://127.0.0.1:{file_host.port}/a.tif"}).encode()
    ts = int(time.time())
    first = post(wh, body, ts=ts)
    assert first.status_code == 202 and "x-semtag-replay" not in first.headers
    for _ in range(3):  # the same signed request again: answered from the record, nothing fetched
        again = post(wh, body, ts=ts)
        assert again.status_code == 202 and again.json() == first.json()
        assert again.headers["x-semtag-replay"] == "true"
    assert len(file_host.hits) == 1
    fresh = post(wh, body, ts=ts + 1)  # a new delivery (new signature) is processed
    assert fresh.status_code == 202 and fresh.json()["duplicate"] is True and len(file_host.hits) == 2
    bad = json.dumps({"record_id": "r", "content_base64": base64.b64encode(b"hello" * 20).decode()}).encode()
    refused = post(wh, bad, ts=ts)
    replayed = post(wh, bad, ts=ts)
    assert refused.status_code == replayed.status_code == 415 and replayed.json() == refused.json()


def test_replay_claims_in_progress_and_stale(wh: Client) -> None:
    from datetime import timedelta

    from services.access.webhook import ReplayInProgress, claim_delivery, delivery_key
    from services.tables import WebhookDelivery, utcnow

    key = delivery_key("sha256=" + "ab" * 32)
    assert claim_delivery(wh.rt, key, 300, 90) is None          # first: claimed
    with pytest.raises(ReplayInProgress) as e:                  # a replay while it is processed: retry shortly
        claim_delivery(wh.rt, key, 300, 90)
    assert e.value.status == 503 and e.value.headers == {"Retry-After": "5"}
    with wh.rt.session() as s:                                  # the first process died long ago
        s.query(WebhookDelivery).filter_by(signature_sha256=key).update({"received_at": utcnow() - timedelta(
            seconds=120)})
    assert claim_delivery(wh.rt, key, 300, 90) is None          # its claim is taken over


def test_an_unreachable_host_is_not_replayed_as_a_failure(wh: Client, file_host: SimpleNamespace) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    body = json.dumps({"record_id": "r", "url": f"http://127.0.0.1:{closed}/a.tif"}).encode()
    ts = int(time.time())
    assert post(wh, body, ts=ts).status_code == 422
    again = post(wh, body, ts=ts)  # the repository's retry of the same delivery is processed anew
    assert again.status_code == 422 and "x-semtag-replay" not in again.headers


def test_huge_integers_in_webhook_json(wh: Client) -> None:
    r = post(wh, b'{"record_id": ' + b"9" * 5000 + b"}")
    assert r.status_code == 422 and _code(r) == "malformed_json"
