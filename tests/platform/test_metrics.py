"""/metrics: open by default, behind a key when SEMTAG_METRICS_KEY is set; its database gauges are cached."""

from __future__ import annotations

from pathlib import Path

import pytest

import api.metrics
from semtag.settings import Settings
from tests.conftest import Client


def test_metrics_key_and_cached_gauges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = api.metrics.count_by_status
    monkeypatch.setattr(api.metrics, "count_by_status", lambda s: calls.append(1) or real(s))
    c = Client(Settings(data_dir=tmp_path / "var", metrics_key="prom-secret", metrics_cache_s=3600))
    try:
        assert c.http.get("/metrics").status_code == 401
        assert c.http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer prom-secret"}
        api.metrics.STATE._counts = None
        first = c.http.get("/metrics", headers=ok)
        second = c.http.get("/metrics", headers=ok)
        assert first.status_code == second.status_code == 200 and 'semtag_images{status="done"}' in second.text
        assert len(calls) == 1  # the second scrape did not query the database
    finally:
        c.close()


def test_metrics_open_without_a_key(sqlite_client: Client) -> None:
    r = sqlite_client.http.get("/metrics")
    assert r.status_code == 200 and "semtag_http_requests_total" in r.text
