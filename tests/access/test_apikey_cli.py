"""`semtag apikey create` says which database the key went to; a key from another data dir gets a hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from semtag.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_apikey_create_names_its_database(tmp_path: Path) -> None:
    env = {**os.environ, "SEMTAG_DATA_DIR": str(tmp_path / "elsewhere"), "PYTHONPATH": str(ROOT)}
    env.pop("SEMTAG_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "semtag", "apikey", "create", "--role", "read"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("stk_")
    assert str(tmp_path / "elsewhere" / "semtag.sqlite3") in out.stderr
    # The service on another data dir does not know the key, and says where keys live.
    with TestClient(create_app(Settings(data_dir=tmp_path / "service"))) as http:
        r = http.get("/v1/images", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401 and "SEMTAG_DATA_DIR" in r.json()["error"]["message"]
