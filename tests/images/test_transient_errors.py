"""An outage during the scale step is retried, then left to the reconciler; it never fails the image."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from services.images import pipeline
from services.runtime import NullQueue
from services.tables import Image
from tests import imagegen
from tests.conftest import Client
from workers.app import app


def _pending_image(c: Client) -> int:
    c.rt.queue = NullQueue()  # stored, nothing run yet
    return c.upload(("t.png", imagegen.png(seed=12))).json()["items"][0]["id"]


def test_an_outage_is_retried_and_the_image_read(sqlite_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    iid = _pending_image(sqlite_client)
    real, calls = pipeline.read_scale, []

    def flaky(rt, image_id):
        calls.append(image_id)
        if len(calls) <= 2:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return real(rt, image_id)

    monkeypatch.setattr(pipeline, "read_scale", flaky)
    app.tasks["semtag.read_scale"].apply(args=[iid], throw=False)
    assert len(calls) == 3
    with sqlite_client.rt.session() as s:
        img = s.get(Image, iid)
        assert img.scale_state == "done" and img.status != "failed"


def test_a_long_outage_leaves_the_image_pending(sqlite_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    iid = _pending_image(sqlite_client)

    def down(rt, image_id):
        raise OperationalError("SELECT 1", {}, Exception("could not connect to server"))

    monkeypatch.setattr(pipeline, "read_scale", down)
    app.tasks["semtag.read_scale"].apply(args=[iid], throw=False)
    with sqlite_client.rt.session() as s:
        img = s.get(Image, iid)
        assert img.status != "failed" and img.scale_state == "pending"  # the reconciler will send it again


def test_a_fault_of_the_image_still_fails_it(sqlite_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    iid = _pending_image(sqlite_client)
    monkeypatch.setattr(pipeline, "read_scale", lambda rt, image_id: 1 / 0)
    app.tasks["semtag.read_scale"].apply(args=[iid], throw=False)
    with sqlite_client.rt.session() as s:
        img = s.get(Image, iid)
        assert img.status == "failed" and "ZeroDivisionError" in img.error
