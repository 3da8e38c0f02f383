"""The ingest webhook also takes Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature),
signed here with the standardwebhooks package; semtag's X-Semtag-* headers keep working beside them."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from semtag.settings import Settings
from services.access.webhook import sign
from tests import imagegen
from tests.access.conftest import SECRET
from tests.conftest import Client

WHSEC = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _body(seed: int, record_id: str = "rec-sw") -> bytes:
    return json.dumps({"record_id": record_id, "filename": "a.png",
                       "content_base64": base64.b64encode(imagegen.png(seed=seed)).decode()}).encode()


def _headers(signer: Webhook, msg_id: str, body: bytes, ts: float | None = None) -> dict[str, str]:
    when = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signer.sign(msg_id, when, body.decode())}


@pytest.fixture
def swh(tmp_path):
    c = Client(Settings(data_dir=tmp_path / "var", webhook_secret=WHSEC))
    yield c
    c.close()


def test_a_standard_webhooks_request_is_accepted_and_its_retries_are_replays(swh):
    signer = Webhook(WHSEC)
    body = _body(21)
    r = swh.http.post("/v1/webhooks/ingest", content=body, headers=_headers(signer, "msg_1", body))
    assert r.status_code == 202, r.text
    first = r.json()
    # the repository retries the same message: re-signed with a later timestamp, the same webhook-id
    again = swh.http.post("/v1/webhooks/ingest", content=body, headers=_headers(signer, "msg_1", body,
                                                                               time.time() + 5))
    assert again.status_code == 202 and again.headers.get("X-Semtag-Replay") == "true" and again.json() == first
    # another message with the same bytes is processed (and found to be a duplicate)
    other = swh.http.post("/v1/webhooks/ingest", content=body, headers=_headers(signer, "msg_2", body))
    assert other.status_code == 202 and "X-Semtag-Replay" not in other.headers
    assert other.json()["id"] == first["id"] and other.json()["duplicate"] is True
    swh.wait()
    assert swh.get(f"/v1/images/{first['id']}").json()["records"][0]["record_id"] == "rec-sw"


def test_any_of_several_signatures_may_match(swh):
    body = _body(22)
    h = _headers(Webhook(WHSEC), "msg_3", body)
    old = _headers(Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()), "msg_3", body)["webhook-signature"]
    h["webhook-signature"] = f"v1a,ignored {old} {h['webhook-signature']}"  # rotation: old key's first
    assert swh.http.post("/v1/webhooks/ingest", content=body, headers=h).status_code == 202


@pytest.mark.parametrize("case,code", [
    ("wrong_secret", "bad_signature"), ("tampered_body", "bad_signature"), ("stale", "stale_signature"),
    ("future", "stale_signature"), ("no_id", "missing_signature"), ("no_signature", "missing_signature"),
    ("bad_id", "bad_webhook_id"), ("not_v1", "bad_signature"), ("garbage_signature", "bad_signature"),
    ("bad_timestamp", "bad_timestamp"),
])
def test_bad_standard_webhooks_requests_are_refused_and_store_nothing(swh, case, code):
    body = _body(23, "rec-bad")
    signer = Webhook("whsec_" + base64.b64encode(b"y" * 32).decode()) if case == "wrong_secret" else Webhook(WHSEC)
    ts = {"stale": time.time() - 3600, "future": time.time() + 3600}.get(case)
    h = _headers(signer, "msg_bad", body, ts)
    if case == "tampered_body":
        body = body.replace(b"rec-bad", b"rec-evil")
    elif case == "no_id":
        del h["webhook-id"]
    elif case == "no_signature":
        del h["webhook-signature"]
    elif case == "bad_id":
        h["webhook-id"] = "msg with spaces"
    elif case == "not_v1":
        h["webhook-signature"] = h["webhook-signature"].replace("v1,", "v2,")
    elif case == "garbage_signature":
        h["webhook-signature"] = "v1,!!!not-base64!!!"
    elif case == "bad_timestamp":
        h["webhook-timestamp"] = "yesterday"
    r = swh.http.post("/v1/webhooks/ingest", content=body, headers=h)
    assert r.status_code == 401 and r.json()["error"]["code"] == code, r.text
    assert swh.get("/v1/images", params={"record_id": "rec-bad"}).json()["items"] == []
    assert swh.get("/v1/images", params={"record_id": "rec-evil"}).json()["items"] == []


def test_a_plain_secret_signs_both_schemes(wh):
    """SEMTAG_WEBHOOK_SECRET without whsec_: Standard Webhooks uses its bytes as the key (a library takes them
    raw, or as whsec_ + their base64), and the X-Semtag-* headers keep working with the same secret."""
    body = _body(24)
    r = wh.http.post("/v1/webhooks/ingest", content=body, headers=_headers(Webhook(SECRET.encode()), "m-1", body))
    assert r.status_code == 202, r.text
    as_whsec = Webhook("whsec_" + base64.b64encode(SECRET.encode()).decode())
    body2 = _body(25)
    assert wh.http.post("/v1/webhooks/ingest", content=body2, headers=_headers(as_whsec, "m-2", body2)) \
        .status_code == 202
    ts = str(int(time.time()))
    body3 = _body(26)
    legacy = wh.http.post("/v1/webhooks/ingest", content=body3, headers={
        "Content-Type": "application/json", "X-Semtag-Timestamp": ts, "X-Semtag-Signature": sign(SECRET, ts, body3)})
    assert legacy.status_code == 202, legacy.text
    replay = wh.http.post("/v1/webhooks/ingest", content=body3, headers={
        "Content-Type": "application/json", "X-Semtag-Timestamp": ts, "X-Semtag-Signature": sign(SECRET, ts, body3)})
    assert replay.headers.get("X-Semtag-Replay") == "true"
