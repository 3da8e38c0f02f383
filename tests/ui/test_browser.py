"""The console in a real Chromium (Debian's, driven by Playwright) against a real ``semtag serve`` with
seeded images and a small model. One browser for the whole module; each step is checked through the
API afterwards. Every page visited is saved to tests/artifacts/ (git-ignored) for a person to look at.

scripts/install.sh installs chromium; without it (a machine set up by hand) the module is skipped.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest

from services.data.synth import make_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed "
                                "(scripts/install.sh installs it)")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = "<img src=x onerror=alert(1)>.png"
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data: Path, port: int, proc: subprocess.Popen, keys: dict[str, str]):
        self.data, self.port, self.proc, self.keys = data, port, proc, keys
        self.base = f"http://127.0.0.1:{port}"
        self.api = httpx.Client(base_url=self.base, timeout=30)

    def get(self, path: str, role: str = "admin", **kw) -> dict:
        r = self.api.get(path, headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    def send(self, method: str, path: str, role: str = "admin", **kw) -> httpx.Response:
        return self.api.request(method, path, headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)


def _wait(check, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, alexnet_onnx: Path) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console") / "var"
    port = _free_port()
    env = {**os.environ, "SEMTAG_DATA_DIR": str(data), "SEMTAG_RECONCILE_EVERY_S": "3600"}
    for name in ("SEMTAG_DATABASE_URL", "SEMTAG_BROKER_URL"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "semtag"]
    log = open(data.parent / "serve.log", "wb")
    proc = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _up(port), 60, "semtag serve to answer")
        keys = {}
        for role in ("ingest", "read", "curator", "admin"):
            out = subprocess.run([*cli, "apikey", "create", "--role", role, "--name", f"{role}-person"], env=env,
                                 capture_output=True, text=True, check=True)
            keys[role] = out.stdout.strip().splitlines()[-1]
        srv = Server(data, port, proc, keys)
        subprocess.run([*cli, "models", "import", str(alexnet_onnx)], env=env, check=True, capture_output=True)
        version = srv.get("/v1/admin/models")["models"][0]["version"]
        assert srv.send("POST", f"/v1/admin/models/{version}/activate").status_code == 200
        files = []
        for k in range(22):  # enough for a clustering run (20), with data bars for the scale pages
            img, _ = make_image(k % 10, 320, 240, seed=900 + k, style="zeiss")
            files.append(("file", (f"sem-{k:02d}.png", cv2.imencode(".png", img)[1].tobytes(), "image/png")))
        img, _ = make_image(4, 320, 240, seed=990, style="zeiss")
        files.append(("file", (XSS, cv2.imencode(".png", img)[1].tobytes(), "image/png")))
        r = srv.send("POST", "/v1/images", role="ingest", files=files, data={"record_id": "rec-<b>1</b>"})
        assert r.status_code == 202, r.text
        srv.ids = [it["id"] for it in r.json()["items"]]  # type: ignore[attr-defined]
        _wait(lambda: all(i["status"] == "done" for i in srv.get("/v1/images", params={"limit": 100})["items"])
              and len(srv.get("/v1/images", params={"limit": 100})["items"]) == 23, 300, "the uploads")
        job = srv.send("POST", "/v1/admin/jobs", json={"kind": "clustering", "params": {
            "scale_min_nm": None, "scale_max_nm": None, "k": 2, "methods": ["ward"], "autoencoder": False,
            "within": "all"}}).json()
        _wait(lambda: srv.get(f"/v1/admin/jobs/{job['id']}")["status"] in ("succeeded", "failed"), 300, "clustering")
        assert srv.get(f"/v1/admin/jobs/{job['id']}")["status"] == "succeeded"
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Visit:
    """A signed-in browser context that records every URL it requests and any dialog a page opens."""

    def __init__(self, browser, server: Server, role: str, viewport: dict | None = None):
        self.server, self.role = server, role
        self.ctx = browser.new_context(viewport=viewport or DESKTOP)
        self.urls: list[str] = []
        self.dialogs: list[str] = []
        self.ctx.on("request", lambda req: self.urls.append(req.url))
        self.page = self.ctx.new_page()
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.set_default_timeout(20_000)

    def sign_in(self) -> None:
        p = self.page
        p.goto(self.server.base + "/ui/login")
        p.get_by_label("API key").fill(self.server.keys[self.role])
        with p.expect_navigation():
            p.get_by_role("button", name="Sign in").click()
        p.wait_for_url(re.compile(r"/ui$"))

    def shot(self, name: str) -> None:
        self.page.wait_for_load_state("networkidle")
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.ctx.close()


# unlabelled controls, text below WCAG AA contrast, sideways scrolling (a function, evaluated in each page)
AUDIT_JS = (Path(__file__).parent / "audit.js").read_text(encoding="utf-8")


def audit(v: Visit, name: str) -> None:
    """Labels on controls, WCAG AA text contrast, no sideways scrolling; and a screenshot."""
    found = v.page.evaluate(AUDIT_JS)
    assert found["unlabelled"] == [], (name, found["unlabelled"])
    assert found["contrast"] == [], (name, found["contrast"])
    assert found["overflow"] <= 0, (name, found["overflow"])
    v.shot(name)


def test_console_in_chromium(server: Server, browser) -> None:
    keys = list(server.keys.values())
    visits: list[Visit] = []
    try:
        # ---- read: browses, sees the hostile filename as text, cannot label ----
        reader = Visit(browser, server, "read")
        visits.append(reader)
        reader.page.goto(server.base + "/ui/review")
        assert "/ui/login" in reader.page.url  # not signed in yet: the sign-in form
        audit(reader, "login")
        reader.page.get_by_label("API key").fill(server.keys["read"])
        reader.page.get_by_role("button", name="Sign in").click()
        reader.page.wait_for_url(re.compile(r"/ui/review$"))
        assert reader.page.get_by_role("heading", name="Not allowed").is_visible()
        reader.shot("review-as-read")
        cookie = next(c for c in reader.ctx.cookies() if c["name"] == "semtag_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] not in keys
        reader.page.goto(server.base + "/ui")
        assert reader.page.locator("nav a", has_text="Review").count() == 0
        audit(reader, "dashboard")
        reader.page.goto(server.base + "/ui/search")
        xss_id = server.ids[-1]
        tile = reader.page.locator(".tile", has=reader.page.locator(f'a[href="/ui/images/{xss_id}"]'))
        assert XSS in tile.inner_text()
        assert reader.page.locator("img[src='x']").count() == 0
        audit(reader, "search")
        reader.page.goto(server.base + f"/ui/images/{xss_id}")
        assert reader.page.get_by_text(XSS).first.is_visible()
        assert reader.page.locator("form[action$='/label']").count() == 0
        audit(reader, "image-as-read")
        # a label posted from the page's own script, with its valid CSRF token, is refused by the server
        status = reader.page.evaluate("""async (id) => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch('/ui/images/' + id + '/label', {method: 'POST', body: 'category=tips',
                headers: {'X-CSRF-Token': csrf, 'Accept': 'application/json',
                          'Content-Type': 'application/x-www-form-urlencoded'}});
            return r.status; }""", xss_id)
        assert status == 403
        assert server.get(f"/v1/images/{xss_id}/curation")["labels"] == []
        assert reader.dialogs == []

        # ---- curator: the review queue by keyboard ----
        cur = Visit(browser, server, "curator")
        visits.append(cur)
        cur.sign_in()
        p = cur.page
        p.goto(server.base + "/ui/review?ood=&unlabelled=true")
        total_before = server.get("/v1/review", role="curator", params={"needs_review": "true"})["total"]
        p.evaluate("window.__sameDocument = true")
        cards = p.locator("#queue .card")
        order = [cards.nth(i).get_attribute("data-id") for i in range(4)]
        predicted = cards.nth(1).get_attribute("data-category")
        audit(cur, "review")
        p.keyboard.press("3")                     # first card: category 3
        p.wait_for_function("document.querySelectorAll('#queue .card.done').length === 1")
        p.keyboard.press("Enter")                 # second card: accept the prediction
        p.wait_for_function("document.querySelectorAll('#queue .card.done').length === 2")
        p.keyboard.press("ArrowRight")            # skip the third card
        p.keyboard.press("7")                     # fourth card: category 7
        p.wait_for_function("document.querySelectorAll('#queue .card.done').length === 3")
        p.keyboard.press("u")                     # undo the last one
        p.wait_for_function("document.querySelectorAll('#queue .card.done').length === 2")
        assert p.evaluate("window.__sameDocument") is True  # no reload happened
        cur.shot("review-after-keys")
        labels = {i: server.get(f"/v1/images/{i}/curation")["labels"] for i in order}
        assert [x["category"] for x in labels[order[0]]] == ["films_coated_surfaces"]
        assert [x["category"] for x in labels[order[1]]] == [predicted]
        assert labels[order[2]] == [] and labels[order[3]] == []
        assert labels[order[0]][0]["labelled_by"] == "curator-person"
        assert server.get("/v1/review", role="curator", params={"needs_review": "true"})["total"] == total_before - 2

        # ---- curator: confirm one scale, correct another ----
        p.goto(server.base + "/ui/scale?kind=ocr")
        audit(cur, "scale-triage")
        first = p.locator("section.tile").nth(0)
        first_id = int(first.get_attribute("aria-labelledby").split("-")[1])
        with p.expect_navigation():
            first.get_by_role("button", name=re.compile("^Confirm")).click()
        p.wait_for_url(re.compile(r"/ui/scale\?kind=ocr"))
        second = p.locator("section.tile").nth(0)
        second_id = int(second.get_attribute("aria-labelledby").split("-")[1])
        assert second_id != first_id
        second.get_by_label("Value").fill("5")
        second.get_by_label("Unit").select_option("µm")
        with p.expect_navigation():
            second.get_by_role("button", name="Save correction").click()
        p.wait_for_url(re.compile(r"/ui/scale\?kind=ocr"))
        a, b = server.get(f"/v1/images/{first_id}"), server.get(f"/v1/images/{second_id}")
        assert a["human_scale"]["action"] == "confirmed" and a["scale_source"] == "human"
        assert a["pixel_size_nm"] == pytest.approx(a["scale"]["pixel_size_nm"])
        assert b["human_scale"]["action"] == "corrected" and b["scale_nm"] == pytest.approx(5000)
        assert b["human_scale"]["labelled_by"] == "curator-person"

        # ---- curator: the image page, the overlay toggle, undo a label ----
        p.goto(server.base + f"/ui/images/{order[0]}")
        p.get_by_label("Show the scale overlay").check()
        p.wait_for_function("document.getElementById('preview').src.includes('overlay=scale')")
        audit(cur, "image")
        with p.expect_navigation():
            p.get_by_role("button", name=re.compile("^Undo label")).click()
        p.wait_for_url(re.compile(rf"/ui/images/{order[0]}$"))
        assert server.get(f"/v1/images/{order[0]}/curation")["labels"] == []

        # ---- curator: rename a subcategory ----
        p.goto(server.base + "/ui/subcategories")
        audit(cur, "subcategories")
        sub_id = int(p.locator("form[action^='/ui/subcategories/']").first.get_attribute("action").split("/")[3])
        box = p.get_by_label("Rename").first
        box.fill("vertical arrays")
        with p.expect_navigation():
            p.get_by_role("button", name="Save name").first.click()
        p.wait_for_url(re.compile(r"/ui/subcategories$"))
        renamed = server.get(f"/v1/subcategories/{sub_id}")
        assert renamed["name"] == "vertical arrays" and renamed["named_by"] == "curator-person"
        p.goto(server.base + f"/ui/subcategories/{sub_id}")
        audit(cur, "subcategory")

        # ---- CSRF: a form on another site posting to the console is refused ----
        target = server.ids[5]
        evil = _evil_site(server.base + f"/ui/images/{target}/label")
        try:
            p.goto(f"http://localhost:{evil.server_port}/attack.html")
            p.wait_for_load_state("load")
            p.wait_for_timeout(500)
        finally:
            evil.shutdown()
        assert server.get(f"/v1/images/{target}/curation")["labels"] == []

        # ---- admin: start a job and watch it finish; cancel another; the registry ----
        adm = Visit(browser, server, "admin")
        visits.append(adm)
        adm.sign_in()
        q = adm.page
        q.goto(server.base + "/ui/admin/jobs")
        q.get_by_label("Kind").select_option("selftest")
        q.get_by_label("Parameters (JSON)").fill(json.dumps({"steps": 4, "step_seconds": 0.5}))
        with q.expect_navigation():
            q.get_by_role("button", name="Start").click()
        q.wait_for_url(re.compile(r"/ui/admin/jobs$"))
        job_id = int(q.locator("#jobs tbody tr").first.get_attribute("data-id"))
        q.wait_for_function(f"document.querySelector('tr[data-id=\"{job_id}\"] .status').textContent === 'succeeded'",
                            timeout=60_000)  # updated in place by the page's polling
        assert q.locator(f"tr[data-id='{job_id}'] .pct").inner_text() == "100%"
        assert server.get(f"/v1/admin/jobs/{job_id}")["status"] == "succeeded"
        q.get_by_label("Kind").select_option("selftest")
        q.get_by_label("Parameters (JSON)").fill(json.dumps({"steps": 200, "step_seconds": 1.0}))
        with q.expect_navigation():
            q.get_by_role("button", name="Start").click()
        q.wait_for_url(re.compile(r"/ui/admin/jobs$"))
        long_id = int(q.locator("#jobs tbody tr").first.get_attribute("data-id"))
        with q.expect_navigation():
            q.locator(f"tr[data-id='{long_id}']").get_by_role("button", name="Cancel").click()
        q.wait_for_url(re.compile(r"/ui/admin/jobs$"))
        assert server.get(f"/v1/admin/jobs/{long_id}")["status"] == "cancelled"
        audit(adm, "jobs")
        clustering = next(j for j in server.get("/v1/admin/jobs")["items"] if j["kind"] == "clustering")
        q.goto(server.base + f"/ui/admin/jobs/{clustering['id']}/report/")
        assert q.locator("img").count() > 0
        adm.shot("clustering-report")
        q.goto(server.base + "/ui/admin/models")
        assert q.get_by_text("active").first.is_visible()
        audit(adm, "models")
        # a visible focus: Tab reaches the skip link with an outline
        q.goto(server.base + "/ui")
        q.keyboard.press("Tab")
        outline = q.evaluate("getComputedStyle(document.activeElement).outlineStyle + ' ' + "
                             "getComputedStyle(document.activeElement).outlineWidth")
        assert outline.split()[0] != "none" and float(outline.split()[1].rstrip("px")) >= 2
        audit(adm, "dashboard-admin")

        # ---- a tablet ----
        tab = Visit(browser, server, "curator", viewport=TABLET)
        visits.append(tab)
        tab.sign_in()
        for path, name in (("/ui/review", "tablet-review"), ("/ui/search", "tablet-search"),
                           (f"/ui/images/{order[1]}", "tablet-image"), ("/ui", "tablet-dashboard")):
            tab.page.goto(server.base + path)
            audit(tab, name)

        # ---- no key ever went into a URL ----
        for v in visits:
            leaked = [u for u in v.urls for k in keys if k in u]
            assert leaked == [], leaked
            assert v.dialogs == []
    except Exception:
        for n, v in enumerate(visits):  # what each browser showed when the step failed, for a person
            v.page.screenshot(path=str(ARTIFACTS / f"failure-{n}-{v.role}.png"), full_page=True)
        raise
    finally:
        for v in visits:
            v.close()


def _evil_site(target: str) -> http.server.ThreadingHTTPServer:
    """A page on another site (localhost is not 127.0.0.1's site) that posts a label form to the console."""
    page = (f'<!doctype html><form id="f" method="post" action="{target}"><input name="category" value="tips">'
            '<input name="csrf_token" value="guess"></form><script>document.getElementById("f").submit()</script>')

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
