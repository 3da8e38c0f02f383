"""With the broker or the database down, the API answers 503 JSON with Retry-After (or 202 where the upload
is already committed) within seconds, and loses nothing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import create_app
from semtag.settings import Settings
from services.access import auth
from services.images import pipeline
from services.tables import Image, Job
from tests import imagegen
from tests.conftest import Client


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_broker(tmp_path: Path) -> Iterator[Client]:
    from workers.app import app

    before = app.conf.broker_url
    c = Client(Settings(data_dir=tmp_path / "var", broker_url=f"redis://127.0.0.1:{_closed_port()}/0"))
    try:
        yield c
    finally:
        c.http.__exit__(None, None, None)
        app.conf.broker_url = before


def test_uploads_are_kept_when_the_broker_is_down(no_broker: Client) -> None:
    c = no_broker
    t0 = time.monotonic()
    r = c.upload(("a.png", imagegen.png(seed=31)))
    assert time.monotonic() - t0 < 10
    assert r.status_code == 202, r.text  # stored and committed: the reconciler queues it later
    iid = r.json()["items"][0]["id"]
    with c.rt.session() as s:
        assert s.get(Image, iid).status == "pending"
    # once the broker is back the reconciler sends it (here: a queue that records what it is given)
    sent: list[tuple[str, int]] = []
    c.rt.queue = type("Recorder", (), {"enqueue": lambda self, task, *a: sent.append((task, *a))})()
    assert pipeline.reconcile(c.rt, older_than_s=0) == 1 and {i for _, i in sent} == {iid}
    ready = c.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")


def test_a_job_that_cannot_be_queued_fails_at_once(no_broker: Client) -> None:
    c = no_broker
    r = c.http.post("/v1/admin/jobs", json={"kind": "selftest"}, headers=c.auth("admin"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable"
    assert r.headers["retry-after"] == "30"
    with c.rt.session() as s:
        job = s.scalars(select(Job)).one()
        assert job.status == "failed" and "could not be queued" in job.error


def test_database_down_is_503_json(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var", database_url=f"postgresql+psycopg://u@127.0.0.1:{_closed_port()}/x")
    with TestClient(create_app(s, auto_migrate=False)) as http:
        r = http.get("/v1/images", headers={"Authorization": f"Bearer {auth.KEY_PREFIX}whatever"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
        assert r.headers["retry-after"] == "30"
        assert http.get("/readyz").status_code == 503
