"""Admin jobs through the API: listing, cancelling, parameter models, user errors, the clustering report."""

from __future__ import annotations

import re
import time
from pathlib import Path

from services.tables import Image
from tests.conftest import Client


def _wait_status(c: Client, job_id: int, statuses: set[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/admin/jobs/{job_id}", role="admin").json()
        if job["status"] in statuses or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_list_and_cancel_jobs(sqlite_client: Client) -> None:
    c, h = sqlite_client, sqlite_client.auth("admin")
    quick = c.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": 1, "step_seconds": 0}},
                        headers=h).json()
    c.wait()
    slow = c.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": 1000, "step_seconds": 0.05}},
                       headers=h).json()
    assert _wait_status(c, slow["id"], {"running"})["status"] == "running"
    page = c.get("/v1/admin/jobs", role="admin").json()
    assert [j["id"] for j in page["items"]] == [slow["id"], quick["id"]]  # newest first
    assert [j["id"] for j in c.get("/v1/admin/jobs", role="admin", params={"status": "succeeded"}).json()["items"]] \
        == [quick["id"]]
    one = c.get("/v1/admin/jobs", role="admin", params={"limit": 1}).json()
    assert len(one["items"]) == 1 and one["next_cursor"] == slow["id"]
    assert c.get("/v1/admin/jobs", role="admin", params={"status": "sleeping"}).json()["error"]["code"] == "bad_filter"
    r = c.http.post(f"/v1/admin/jobs/{slow['id']}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    c.wait()
    job = c.get(f"/v1/admin/jobs/{slow['id']}", role="admin").json()
    assert job["status"] == "cancelled" and job["progress"] < 1.0 and job["result"] is None
    again = c.http.post(f"/v1/admin/jobs/{quick['id']}/cancel", headers=h)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    assert c.http.post("/v1/admin/jobs/424242/cancel", headers=h).status_code == 404
    assert c.http.get("/v1/admin/jobs", headers=c.auth("curator")).status_code == 403


def test_job_params_are_models_with_one_set_of_defaults(sqlite_client: Client) -> None:
    c, h = sqlite_client, sqlite_client.auth("admin")
    r = c.http.post("/v1/admin/jobs", json={"kind": "clustering"}, headers=h)
    assert r.status_code == 202
    p = r.json()["params"]
    assert (p["scale_min_nm"], p["scale_max_nm"], p["method"], p["k"], p["output"]) == (1000.0, 2000.0, "ward", 5,
                                                                                         "logits")
    for bad in ({"steps": True}, {"steps": 2.5}, {"steps": "3"}, {"colour": "red"}):
        r = c.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": bad}, headers=h)
        assert r.status_code == 422 and r.json()["error"]["code"] == "bad_params", bad
    r = c.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"colour": "red"}}, headers=h)
    assert "unknown param 'colour'" in r.json()["error"]["message"]
    nan = b'{"kind": "clustering", "params": {"scale_min_nm": NaN}}'
    r = c.http.post("/v1/admin/jobs", content=nan, headers={**h, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_params"
    r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {"method": "kmeans"}}, headers=h)
    assert r.status_code == 422 and "ward" in r.json()["error"]["message"]


def test_a_user_error_in_a_job_is_a_message_not_a_traceback(sqlite_client: Client) -> None:
    c = sqlite_client
    r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {}}, headers=c.auth("admin"))
    c.wait()
    job = c.get(f"/v1/admin/jobs/{r.json()['id']}", role="admin").json()
    assert job["status"] == "failed" and job["error"].startswith("no active model")
    assert job["result"] is None and "Traceback" not in str(job)


def test_clustering_report_is_served(sqlite_settings, alexnet_onnx: Path) -> None:
    c = Client(sqlite_settings)
    try:
        c.activate_model(alexnet_onnx)
        ids = c.upload_synthetic(22, 96, seed=900, prefix="r")
        broken = ids[1]
        with c.rt.session() as s:  # a blob damaged on disk after it was accepted
            c.rt.store.local_path(s.get(Image, broken).storage_key).write_bytes(b"not an image any more")
        h = c.auth("admin")
        params = {"scale_min_nm": None, "scale_max_nm": None, "k": 2, "autoencoder": False, "methods": ["ward"],
                  "dp_k": 5}
        r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": params}, headers=h)
        c.wait()
        job = c.get(f"/v1/admin/jobs/{r.json()['id']}", role="admin").json()
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["images"] == 21 and job["result"]["left_out"]["image_ids"] == [broken]
        # an image of the first tree (a category with a single image gets no subcategory)
        outside = next(i for i in ids if c.get(f"/v1/images/{i}").json()["subcategory"] is not None)
        url = job["report_url"]
        assert url == f"/v1/admin/jobs/{job['id']}/report/"
        page = c.http.get(url, headers=h)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        figures = re.findall(r"""src=["']([^"']+\.png)["']""", page.text)
        assert figures and all(c.http.get(url + f, headers=h).status_code == 200 for f in figures)
        assert c.http.get(url + "..%2Fsemtag.sqlite3", headers=h).status_code == 404
        assert c.http.get(url, headers=c.auth("read")).status_code == 403
        selftest = c.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": 1}}, headers=h).json()
        c.wait()
        assert c.http.get(f"/v1/admin/jobs/{selftest['id']}/report/", headers=h).status_code == 404
        # A re-clustering of a narrower selection leaves no pointer into the old tree
        inside = [i for i in ids if i != outside]
        with c.rt.session() as s:
            for iid in inside:
                s.get(Image, iid).scale_nm = 1500.0
        again = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {
            **params, "scale_min_nm": 1000.0, "scale_max_nm": 2000.0}}, headers=h).json()
        c.wait()
        job = c.get(f"/v1/admin/jobs/{again['id']}", role="admin").json()
        assert job["status"] == "succeeded" and job["result"]["images"] == 20, job
        assert c.get(f"/v1/images/{outside}").json()["subcategory"] is None
        tree = c.get("/v1/subcategories").json()
        assert tree["run_id"] == again["id"]
        members = {m["id"] for sc in tree["subcategories"]
                   for m in c.get(f"/v1/subcategories/{sc['id']}", params={"limit": 500}).json()["members"]}
        # the new selection only (a category with a single image gets no subcategory, so not all 20)
        assert members and members <= set(inside) - {broken}
    finally:
        c.close()
