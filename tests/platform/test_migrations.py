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


def test_records_migration_moves_record_ids_and_keeps_results(empty_db):
    """0006: every images.record_id becomes an image_records link; rows that reference images survive the
    rebuild of the images table (SQLite) untouched; downgrading puts the first record back."""
    from sqlalchemy import text

    migrate.upgrade(empty_db, "0005")
    now = "2026-11-26 10:00:00+00"
    with get_engine(empty_db).begin() as conn:
        for n, rec in enumerate(["rec-1", None, "rec-1"], start=1):
            conn.execute(text(
                "INSERT INTO images (id, sha256, filename, record_id, bytes, width, height, format, bit_depth, pages, "
                "mode, storage_key, status, scale_state, inference_state, created_at, updated_at) VALUES "
                "(:id, :sha, 'f.png', :rec, 1, 2, 2, 'PNG', 8, 1, 'L', 'k', 'done', 'done', 'done', :t, :t)"),
                {"id": n, "sha": f"{n:064d}", "rec": rec, "t": now})
        conn.execute(text("INSERT INTO scale_readings (image_id, source, fields, detail, created_at) "
                          "VALUES (1, 'none', '{}', '{}', :t)"), {"t": now})
    migrate.upgrade(empty_db)
    assert migrate.drift(empty_db) == []
    with get_engine(empty_db).connect() as conn:
        links = conn.execute(text("SELECT image_id, record_id, record_version FROM image_records ORDER BY image_id"))
        assert [tuple(r) for r in links] == [(1, "rec-1", ""), (3, "rec-1", "")]
        assert conn.execute(text("SELECT count(*) FROM scale_readings")).scalar() == 1
        assert "record_id" not in {c["name"] for c in inspect(conn).get_columns("images")}
    migrate.downgrade(empty_db, "0005")
    with get_engine(empty_db).connect() as conn:
        rows = conn.execute(text("SELECT id, record_id FROM images ORDER BY id"))
        assert [tuple(r) for r in rows] == [(1, "rec-1"), (2, None), (3, "rec-1")]
    migrate.upgrade(empty_db)
