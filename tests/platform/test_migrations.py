"""Alembic: upgrade → downgrade → upgrade on PostgreSQL and SQLite, and no drift from the models."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from services import migrate
from services.db import get_engine


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.sqlite3'}"
    url = request.getfixturevalue("pg_url")
    migrate.downgrade(url, "base") if inspect(get_engine(url)).has_table("alembic_version") else None
    return url


def test_round_trip_and_no_drift(empty_db):
    migrate.upgrade(empty_db)
    tables = set(inspect(get_engine(empty_db)).get_table_names())
    assert {"images", "scale_readings", "predictions", "labels", "subcategories", "models", "jobs",
            "api_keys"} <= tables
    assert migrate.drift(empty_db) == []
    migrate.downgrade(empty_db, "base")
    assert set(inspect(get_engine(empty_db)).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(empty_db)
    assert migrate.drift(empty_db) == []
