"""A curator renames a subcategory; a re-run keeps the name where the members mostly match (Jaccard >= 0.5)."""

from __future__ import annotations

from pathlib import Path

from services.clustering.subcategories import jaccard, match_names
from tests.conftest import Client


def test_names_follow_the_best_overlap_one_to_one() -> None:
    old = {1: set(range(10)), 2: set(range(10, 20))}
    new = {7: set(range(5)) | {30, 31},        # 5 of 12 in common with 1: 0.42, below the threshold
           8: set(range(10, 19)),              # 9/10 with 2
           9: set(range(10, 16))}              # 6/10 with 2, but 8 took 2's name
    assert jaccard(old[2], new[8]) == 0.9
    assert match_names(old, new) == {8: (2, 0.9)}
    # exactly one half is enough
    assert match_names({1: {1, 2}}, {5: {1, 2, 3, 4}}) == {5: (1, 0.5)}
    assert match_names({1: {1, 2}}, {5: {1, 2, 3, 4, 5}}) == {}


def _cluster(c: Client) -> dict:
    h = c.auth("admin")
    r = c.http.post("/v1/admin/jobs", json={"kind": "clustering", "params": {
        "scale_min_nm": None, "scale_max_nm": None, "k": 2, "methods": ["ward"], "autoencoder": False,
        "within": "all"}}, headers=h)
    assert r.status_code == 202, r.text
    c.wait()
    job = c.http.get(f"/v1/admin/jobs/{r.json()['id']}", headers=h).json()
    assert job["status"] == "succeeded", job["error"]
    return job


def test_rename_survives_a_rerun_and_is_refused_when_bad(sqlite_settings, alexnet_onnx: Path) -> None:
    c = Client(sqlite_settings)
    try:
        c.activate_model(alexnet_onnx)
        c.upload_synthetic(24, 96, seed=700)
        _cluster(c)
        subs = c.get("/v1/subcategories").json()["subcategories"]
        target = max(subs, key=lambda sc: sc["size"])
        cur = c.auth("curator")
        r = c.http.put(f"/v1/subcategories/{target['id']}/name", json={"name": "  vertical   arrays "}, headers=cur)
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "vertical arrays" and r.json()["named_by"] == "curator key"
        for body, code in (({"name": "   "}, "bad_name"), ({"name": "x" * 200}, "bad_name"),
                           ({"name": "a\u202eb"}, "bad_name"), ({"name": 3}, "invalid_request"),
                           ({"label": "x"}, "invalid_request")):
            bad = c.http.put(f"/v1/subcategories/{target['id']}/name", json=body, headers=cur)
            assert bad.status_code == 422 and bad.json()["error"]["code"] == code, (body, bad.text)
        assert c.http.put(f"/v1/subcategories/{target['id']}/name", json={"name": "x"},
                          headers=c.auth("read")).status_code == 403
        assert c.http.put("/v1/subcategories/999/name", json={"name": "x"}, headers=cur).status_code == 404
        members = {m["id"] for m in c.get(f"/v1/subcategories/{target['id']}", params={"limit": 500}).json()["members"]}
        # the same images clustered again: the subcategory with (about) the same members keeps the name
        _cluster(c)
        subs2 = c.get("/v1/subcategories").json()["subcategories"]
        assert {sc["id"] for sc in subs2}.isdisjoint(sc["id"] for sc in subs)
        heirs = [sc for sc in subs2 if sc["name"] == "vertical arrays"]
        assert len(heirs) == 1
        heir = heirs[0]
        assert heir["name_inherited_from"] == target["id"] and heir["named_by"] == "curator key"
        page = c.get(f"/v1/subcategories/{heir['id']}", params={"limit": 500}).json()
        new_members = {m["id"] for m in page["members"]}
        assert jaccard(members, new_members) >= 0.5
        others = [sc for sc in subs2 if sc["id"] != heir["id"]]
        assert all(sc["named_by"] is None and "·" in sc["name"] for sc in others)
    finally:
        c.close()
