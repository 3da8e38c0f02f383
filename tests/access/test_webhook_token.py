"""The webhook's bearer token for a restricted file: sent to the file host for that one fetch, and found
nowhere afterwards: not in the database, not in the blobs, not in any log line, not in the reply."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import inspect, text

from semtag.settings import Settings
from tests import imagegen
from tests.access.conftest import SECRET
from tests.access.test_webhook import post
from tests.conftest import Client

TOKEN = "tok-9f8e7d6c5b4a.RESTRICTED_FILE_ACCESS~42"


@pytest.fixture
def restricted_host() -> Iterator[SimpleNamespace]:
    """A file host that serves its file only to the right bearer token, and records each Authorization."""
    payload, seen = imagegen.tiff(seed=77), []

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            seen.append(auth)
            ok = auth == f"Bearer {TOKEN}"
            self.send_response(200 if ok else 403)
            self.send_header("Content-Length", str(len(payload) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield SimpleNamespace(port=srv.server_address[1], seen=seen)
    srv.shutdown()


def _everything_stored(c: Client) -> str:
    """Every row of every table as text, and the raw bytes of the database and blob files."""
    parts = []
    with c.rt.session() as s:
        for table in inspect(s.get_bind()).get_table_names():
            for row in s.execute(text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    for path in Path(c.settings.data_dir).rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_token_is_used_once_for_the_fetch_and_never_kept_or_logged(backend, restricted_host, tmp_path, caplog,
                                                                    request):
    url = None if backend == "sqlite" else request.getfixturevalue("pg_url")
    if url:
        from tests.conftest import _reset_pg

        _reset_pg(url)
    c = Client(Settings(data_dir=tmp_path / "var", database_url=url, webhook_secret=SECRET,
                        webhook_url_allowlist=["127.0.0.1:*"]))
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    try:
        file_url = f"http://127.0.0.1:{restricted_host.port}/restricted/sem.tif"
        body = json.dumps({"record_id": "rec-T", "record_version": "1", "url": file_url,
                           "bearer_token": TOKEN}).encode()
        ts = int(time.time())
        r = post(c, body, ts=ts)
        assert r.status_code == 202, r.text
        assert r.json()["record_version"] == "1" and r.json()["record_added"] is True
        replay = post(c, body, ts=ts)  # the repository retries the same signed request
        assert replay.headers.get("X-Semtag-Replay") == "true" and replay.json() == r.json()
        assert restricted_host.seen == [f"Bearer {TOKEN}"]  # sent once, to the file host, and not again
        # without the token the host refuses: the same reply any failed fetch gets, nothing about the token
        denied = post(c, json.dumps({"record_id": "rec-T", "url": file_url + "?v=2", "bearer_token": "wrong"}).encode())
        assert denied.status_code == 422 and denied.json()["error"]["code"] == "fetch_failed"
        bad = post(c, json.dumps({"record_id": "rec-T", "url": file_url, "bearer_token": TOKEN + " x"}).encode())
        assert bad.status_code == 422 and TOKEN not in bad.text
        inline = post(c, json.dumps({"record_id": "r", "content_base64": "AAAA", "bearer_token": TOKEN}).encode())
        assert inline.status_code == 422 and TOKEN not in inline.text
        c.wait()
        assert TOKEN not in r.text
        assert TOKEN not in _everything_stored(c)
        logged = "\n".join(f"{rec.name} {rec.getMessage()} {rec.args!r}" for rec in caplog.records)
        assert caplog.records and TOKEN not in logged
    finally:
        c.close()
