"""The console's server side without a browser: sign-in and its cookie, roles, CSRF and cross-site posts,
inert user input, the CSV export. (tests/ui/test_browser.py drives the same pages in Chromium.)"""

from __future__ import annotations

import csv
import io
import re

import cv2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.access import auth
from services.data.synth import make_image
from services.tables import HumanLabel, UiSession
from tests.conftest import Client

XSS = "<img src=x onerror=alert(1)>.png"


def sign_in(http: TestClient, key: str, next_: str = "/ui") -> str:
    """Sign in through the form; the page's CSRF token."""
    form = http.get("/ui/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
    r = http.post("/ui/login", data={"key": key, "login_csrf": token, "next": next_}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = http.get("/ui")
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)


@pytest.fixture
def seeded(sqlite_client: Client) -> tuple[Client, int]:
    img, _ = make_image(3, 400, 300, seed=4)
    iid = sqlite_client.upload((XSS, cv2.imencode(".png", img)[1].tobytes()),
                               record_id='rec"><script>alert(2)</script>').json()["items"][0]["id"]
    sqlite_client.wait()
    return sqlite_client, iid


def test_sign_in_cookie_and_sign_out(seeded) -> None:
    c, _ = seeded
    http = c.http
    first = http.get("/ui/review", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/ui/login?next=%2Fui%2Freview"
    form = http.get("/ui/login")
    assert 'method="post" action="/ui/login"' in form.text and 'type="password"' in form.text
    token = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
    bad = http.post("/ui/login", data={"key": "stk_wrong", "login_csrf": token}, follow_redirects=False)
    assert bad.status_code == 401 and "semtag_session" not in bad.headers.get("set-cookie", "")
    stale = http.post("/ui/login", data={"key": c.keys["read"], "login_csrf": "forged"}, follow_redirects=False)
    assert stale.status_code == 403 and "semtag_session" not in stale.headers.get("set-cookie", "")
    ok = http.post("/ui/login", data={"key": c.keys["curator"], "login_csrf": token, "next": "/ui/review"},
                   follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/review"
    cookie = ok.headers["set-cookie"].split(",")[0]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie and "Secure" not in cookie
    assert c.keys["curator"] not in ok.headers["set-cookie"]  # the key itself never goes to the browser
    with c.rt.session() as s:
        assert len(s.scalars(select(UiSession)).all()) == 1
    assert http.get("/ui/review").status_code == 200
    csrf = sign_in(http, c.keys["curator"])
    out = http.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and http.get("/ui", follow_redirects=False).status_code == 303


def test_open_redirect_and_secure_cookie_over_https(seeded) -> None:
    c, _ = seeded
    form = c.http.get("/ui/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
    r = c.http.post("/ui/login", data={"key": c.keys["read"], "login_csrf": token, "next": "//evil.example/x"},
                    follow_redirects=False)
    assert r.headers["location"] == "/ui"
    with TestClient(c.app, base_url="https://console.test") as https:
        form = https.get("/ui/login")
        token = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
        r = https.post("/ui/login", data={"key": c.keys["read"], "login_csrf": token}, follow_redirects=False)
        assert "Secure" in r.headers["set-cookie"].split(",")[0]


def test_revoked_key_ends_its_session(seeded) -> None:
    c, _ = seeded
    key = c.new_key("curator")
    sign_in(c.http, key)
    assert c.http.get("/ui/review").status_code == 200
    with c.rt.session() as s:
        auth.revoke_key(s, next(k.id for k in s.scalars(select(auth.ApiKey)) if k.key_hash == auth.hash_key(key)))
    assert c.http.get("/ui/review", follow_redirects=False).status_code == 303


def test_roles_are_enforced_on_the_server(seeded) -> None:
    c, iid = seeded
    csrf = sign_in(c.http, c.keys["read"])
    page = c.http.get("/ui")
    assert 'href="/ui/review"' not in page.text and 'href="/ui/admin/jobs"' not in page.text
    assert c.http.get("/ui/review").status_code == 403
    assert c.http.get("/ui/admin/jobs").status_code == 403
    assert c.http.get(f"/ui/images/{iid}").status_code == 200
    # the page offers no form, and a hand-made post with a valid token is refused all the same
    r = c.http.post(f"/ui/images/{iid}/label", data={"category": "fibres", "csrf_token": csrf},
                    headers={"Accept": "application/json"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = c.http.post("/ui/admin/jobs", data={"kind": "selftest", "params": "{}", "csrf_token": csrf})
    assert r.status_code == 403
    with c.rt.session() as s:
        assert s.scalars(select(HumanLabel)).all() == []


def test_csrf_and_cross_site_posts_are_refused(seeded) -> None:
    c, iid = seeded
    csrf = sign_in(c.http, c.keys["curator"])
    url = f"/ui/images/{iid}/label"
    for data, headers, code in (
        ({"category": "fibres"}, {}, "csrf_failed"),
        ({"category": "fibres", "csrf_token": "x" * 43}, {}, "csrf_failed"),
        ({"category": "fibres", "csrf_token": csrf}, {"Origin": "http://evil.example"}, "cross_site"),
        ({"category": "fibres", "csrf_token": csrf}, {"Sec-Fetch-Site": "cross-site"}, "cross_site"),
        ({"category": "fibres", "csrf_token": csrf}, {"Origin": "null"}, "cross_site"),
    ):
        r = c.http.post(url, data=data, headers={"Accept": "application/json", **headers})
        assert r.status_code == 403 and r.json()["error"]["code"] == code, (data, headers, r.text)
    with c.rt.session() as s:
        assert s.scalars(select(HumanLabel)).all() == []
    ok = c.http.post(url, data={"category": "fibres", "csrf_token": csrf},
                     headers={"Accept": "application/json", "Origin": "http://testserver"})
    assert ok.status_code == 200 and ok.json()["category"] == "fibres"
    bad = c.http.post(url, data={"category": "cheese", "csrf_token": csrf}, headers={"Accept": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_category"
    page = c.http.post(url, data={"category": "cheese", "csrf_token": csrf})  # a plain form post: an error page
    assert page.status_code == 422 and "text/html" in page.headers["content-type"] and "unknown category" in page.text


def test_user_input_is_rendered_inert_and_csv_is_safe(seeded) -> None:
    c, iid = seeded
    sign_in(c.http, c.keys["admin"])
    for path in ("/ui/search", f"/ui/images/{iid}", "/ui/scale?kind=ocr", "/ui/review?unlabelled=false"):
        html = c.http.get(path).text
        assert "<img src=x" not in html and "<script>alert" not in html, path
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in c.http.get(f"/ui/images/{iid}").text
    r = c.http.get("/ui/search.csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0][:3] == ["id", "filename", "record_id"] and rows[1][1] == XSS
    with c.rt.session() as s:
        from sqlalchemy import delete

        from services.tables import ImageRecord

        s.execute(delete(ImageRecord).where(ImageRecord.image_id == iid))
        s.add(ImageRecord(image_id=iid, record_id="=HYPERLINK(\"http://evil\")"))
    rows = list(csv.reader(io.StringIO(c.http.get("/ui/search.csv").text)))
    assert rows[1][2].startswith("'=")  # a spreadsheet shows it, does not run it
    assert len(list(csv.reader(io.StringIO(c.http.get("/ui/search.csv?category=fibres").text)))) == 1


def test_every_page_renders_for_an_admin(seeded) -> None:
    c, iid = seeded
    sign_in(c.http, c.keys["admin"])
    for path in ("/ui", "/ui/review", "/ui/scale", f"/ui/images/{iid}", f"/ui/images/{iid}?overlay=true",
                 "/ui/search", "/ui/subcategories", "/ui/admin/jobs", "/ui/admin/models"):
        r = c.http.get(path)
        assert r.status_code == 200 and "<main" in r.text, path
        assert not re.findall(r'(?:src|href)="(?:https?:)?//', r.text), path  # nothing from another host
    assert c.http.get("/ui/images/999").status_code == 404
    assert c.http.get("/ui/scale?kind=bogus").status_code == 422
    assert c.http.get("/ui/static/console.css").status_code == 200


def test_admin_activates_a_model_from_the_registry_page(sqlite_client: Client, alexnet_onnx) -> None:
    from services.classify import registry

    c = sqlite_client
    with c.rt.session() as s:
        version = registry.register(s, alexnet_onnx, c.settings.data_dir / "models").version
    csrf = sign_in(c.http, c.keys["admin"])
    page = c.http.get("/ui/admin/models")
    assert version in page.text and f'action="/ui/admin/models/{version}/activate"' in page.text
    missing = c.http.post("/ui/admin/models/nope/activate", data={"csrf_token": csrf},
                          headers={"Accept": "application/json"})
    assert missing.status_code == 404
    r = c.http.post(f"/ui/admin/models/{version}/activate", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/admin/models"
    with c.rt.session() as s:
        assert registry.active(s).version == version
    assert "badge human\">active" in c.http.get("/ui/admin/models").text
