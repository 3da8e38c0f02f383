"""API keys and roles, health/readiness/metrics, and the admin job machinery."""

from __future__ import annotations

import subprocess
import sys

from semtag.settings import Settings
from tests import imagegen
from tests.conftest import Client


def test_keys_and_roles(sqlite_client):
    c = sqlite_client
    data = ("x.png", imagegen.png(seed=9))
    assert c.http.post("/v1/images", files=[("file", data)]).status_code == 401
    r = c.http.post("/v1/images", files=[("file", data)], headers={"Authorization": "Bearer stk_wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert c.upload(data, role="read").status_code == 403
    assert c.upload(data, role="curator").status_code == 403
    assert c.upload(data, role="ingest").status_code == 202
    assert c.upload(data, role="admin").status_code == 202
    assert c.get("/v1/images", role="read").status_code == 200
    assert c.http.get("/v1/images").status_code == 401
    job = {"kind": "selftest", "params": {"steps": 1, "step_seconds": 0}}
    assert c.http.post("/v1/admin/jobs", json=job, headers=c.auth("curator")).status_code == 403
    assert c.http.post("/v1/admin/jobs", json=job, headers=c.auth("ingest")).status_code == 403


def test_revoked_key_is_refused(sqlite_client):
    from sqlalchemy import select

    from services.access import auth
    from services.tables import ApiKey

    c = sqlite_client
    with c.rt.session() as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == auth.hash_key(c.keys["read"])))
        auth.revoke_key(s, key_id)
    assert c.get("/v1/images").status_code == 401


def test_keys_are_stored_hashed(sqlite_client):
    from sqlalchemy import select

    from services.tables import ApiKey

    with sqlite_client.rt.session() as s:
        stored = {k.key_hash for k in s.scalars(select(ApiKey))}
    assert not set(sqlite_client.keys.values()) & stored


def test_cli_apikey_create_prints_key_last(tmp_path):
    env = {"SEMTAG_DATA_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "semtag", "apikey", "create", "--role", "curator"],
                         capture_output=True, text=True, env=env, check=True)
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("stk_")
    c = Client(Settings(data_dir=tmp_path / "var"))
    try:
        r = c.http.get("/v1/images", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert c.http.post("/v1/admin/jobs", json={"kind": "selftest"},
                           headers={"Authorization": f"Bearer {key}"}).status_code == 403
    finally:
        c.close()
    bad = subprocess.run([sys.executable, "-m", "semtag", "apikey", "create", "--role", "king"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "king" in bad.stderr


def test_health_is_open_and_ready(client):
    assert client.http.get("/healthz").json() == {"status": "ok"}
    r = client.http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"


def test_readyz_reports_a_dead_broker(tmp_path):
    c = Client(Settings(data_dir=tmp_path / "var", broker_url="redis://127.0.0.1:1/0"))
    try:
        r = c.http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"].startswith("error")
    finally:
        c.http.__exit__(None, None, None)


def test_metrics_expose_requests_images_queue_and_tasks(sqlite_client):
    c = sqlite_client
    c.upload(("m.png", imagegen.png(seed=31)))
    c.wait()
    text = c.http.get("/metrics").text
    assert 'semtag_images{status="done"} 1.0' in text
    assert 'semtag_http_requests_total{method="POST",route="/v1/images",status="202"}' in text
    assert "semtag_queue_depth" in text
    assert 'semtag_task_duration_seconds_count{task="semtag.read_scale"}' in text


def test_openapi_lists_the_endpoints(sqlite_client):
    paths = sqlite_client.http.get("/openapi.json").json()["paths"]
    for p in ("/v1/images", "/v1/images/{image_id}", "/v1/webhooks/ingest", "/v1/admin/jobs",
              "/v1/admin/jobs/{job_id}", "/healthz", "/readyz", "/metrics"):
        assert p in paths
    assert "multipart/form-data" in paths["/v1/images"]["post"]["requestBody"]["content"]


def test_job_runs_with_progress_and_result(client):
    r = client.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": 3, "step_seconds": 0.01}},
                         headers=client.auth("admin"))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    client.wait()
    job = client.get(f"/v1/admin/jobs/{job_id}", role="admin").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["attempts"] == 1
    assert job["result"]["steps"] == 3 and job["result"]["database"] == "ok"
    assert job["message"] == "step 3/3" and job["finished_at"]


def test_job_bad_requests(client):
    h = client.auth("admin")
    r = client.http.post("/v1/admin/jobs", json={"kind": "origami"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_job_kind"
    assert "selftest" in r.json()["error"]["message"]
    r = client.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": -1}}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_params"
    r = client.http.post("/v1/admin/jobs", json={"params": {}}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert client.get("/v1/admin/jobs/424242", role="admin").status_code == 404


def test_failing_job_records_its_error(sqlite_client):
    from services.jobs.schemas import NoParams
    from services.jobs.service import JOB_KINDS, register_job_kind

    def boom(ctx):
        ctx.progress(0.5, "half way")
        raise RuntimeError("the furnace is cold")

    register_job_kind("boom", boom, NoParams, "fails on purpose")
    try:
        r = sqlite_client.http.post("/v1/admin/jobs", json={"kind": "boom"}, headers=sqlite_client.auth("admin"))
        sqlite_client.wait()
        job = sqlite_client.get(f"/v1/admin/jobs/{r.json()['id']}", role="admin").json()
        assert job["status"] == "failed" and "the furnace is cold" in job["error"] and job["progress"] == 0.5
        # the service keeps serving
        assert sqlite_client.http.get("/healthz").status_code == 200
    finally:
        JOB_KINDS.pop("boom")
