"""Fixtures of the access tests: a service with the ingest webhook switched on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semtag.settings import Settings
from tests.conftest import Client

SECRET = "s3cret-shared-with-the-repository"


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[Client]:
    c = Client(Settings(data_dir=tmp_path / "var", webhook_secret=SECRET, webhook_url_allowlist=["127.0.0.1:*"]))
    yield c
    c.close()
