"""Fixtures of the access tests: a service with the ingest webhook switched on."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from semtag.settings import Settings
from tests import imagegen
from tests.conftest import Client

SECRET = "s3cret-shared-with-the-repository"


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[Client]:
    c = Client(Settings(data_dir=tmp_path / "var", webhook_secret=SECRET, webhook_url_allowlist=["127.0.0.1:*"]))
    yield c
    c.close()


@pytest.fixture
def file_host() -> Iterator[SimpleNamespace]:
    """A repository file host on 127.0.0.1 that serves one TIFF at any path and records each request
    as (path, Host header)."""
    payload, hits = imagegen.tiff(seed=46), []

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append((self.path, self.headers["Host"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield SimpleNamespace(port=srv.server_address[1], payload=payload, hits=hits)
    srv.shutdown()
