"""Fixtures: real PostgreSQL and Redis on 127.0.0.1, the embedded default, API clients with keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from semtag.settings import Settings

PG_ADMIN = os.environ.get("SEMTAG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SEMTAG_TEST_REDIS", "redis://127.0.0.1:6379/0")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _pg_available() -> bool:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}; .ci/run starts it")
    name = f"semtag_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    from services.db import get_engine

    for eng_url in [f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"]:
        get_engine(eng_url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database of its own (db 11), emptied at the start."""
    url = REDIS_URL.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail(f"Redis is not reachable at {url}; .ci/run starts it")
    client.flushdb()
    return url


def _reset_pg(url: str) -> None:
    from sqlalchemy import text

    from services import migrate
    from services.db import get_engine

    migrate.upgrade(url)
    with get_engine(url).begin() as conn:
        conn.execute(text(
            "TRUNCATE images, image_records, deletions, scale_readings, predictions, labels, scale_labels, "
            "subcategories, models, jobs, api_keys, ui_sessions, event_outbox, event_subscriptions, event_deliveries "
            "RESTART IDENTITY CASCADE"))


# ---- an S3 endpoint: moto's server (an S3 emulator over real HTTP), one per test session ----

S3_ENV = {"AWS_ACCESS_KEY_ID": "semtag-test", "AWS_SECRET_ACCESS_KEY": "semtag-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of an S3 emulator (moto's server mode) running in this process."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials and region in the standard AWS variables, nothing else of AWS's from the environment."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    return {**S3_ENV, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


@pytest.fixture
def s3_bucket(s3_endpoint: str, s3_env: dict[str, str]) -> str:
    """A new, empty bucket for one test."""
    import boto3

    name = f"semtag-t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Settings:
    """Embedded defaults (SQLite, in-process tasks) with the blobs in the S3 emulator."""
    return Settings(data_dir=tmp_path / "var", blob_url=f"s3://{s3_bucket}/blobs", s3_endpoint_url=s3_endpoint)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path: Path) -> Settings:
    """Settings for the embedded default (SQLite) and for PostgreSQL; tasks in-process for both."""
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path / "var")
    url = request.getfixturevalue("pg_url")
    _reset_pg(url)
    return Settings(data_dir=tmp_path / "var", database_url=url)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var")


class Client:
    """A TestClient with one API key per role and a way to wait for in-process tasks."""

    def __init__(self, settings: Settings):
        from api.main import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.http = TestClient(self.app)
        self.http.__enter__()
        self.rt = self.app.state.runtime
        self.keys = {role: self.new_key(role) for role in ("ingest", "read", "curator", "admin")}

    def new_key(self, role: str) -> str:
        from services.access import auth

        with self.rt.session() as s:
            return auth.create_key(s, role)[1]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def upload(self, *files: tuple[str, bytes], role: str = "ingest", **data) -> httpx.Response:  # noqa: F821
        return self.http.post("/v1/images", files=[("file", f) for f in files], data=data, headers=self.auth(role))

    def get(self, path: str, role: str = "read", **kw):
        return self.http.get(path, headers={**self.auth(role), **kw.pop("headers", {})}, **kw)

    def activate_model(self, onnx_path: Path) -> str:
        """Register an exported model and make it the active one; its version."""
        from services.classify import registry

        with self.rt.session() as s:
            version = registry.register(s, onnx_path, self.settings.data_dir / "models").version
            registry.activate(s, version)
        return version

    def upload_synthetic(self, n: int, size: int, seed: int, prefix: str = "i") -> list[int]:
        """Upload ``n`` synthetic SEM-like PNGs (categories k % 10), wait for their processing; their ids."""
        import cv2

        from services.data.synth import make_image

        files = []
        for k in range(n):
            img, _ = make_image(k % 10, size, size, seed=seed + k)
            files.append((f"{prefix}{k}.png", cv2.imencode(".png", img)[1].tobytes()))
        ids = [it["id"] for it in self.upload(*files).json()["items"]]
        self.wait()
        return ids

    def wait(self) -> None:
        join = getattr(self.rt.queue, "join", None)
        if join:
            join(timeout=900)  # a bound for a hung task, not a speed expectation (CI runs on a loaded machine)

    def close(self) -> None:
        self.wait()
        self.http.__exit__(None, None, None)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = Client(settings)
    yield c
    c.close()


@pytest.fixture
def sqlite_client(sqlite_settings: Settings) -> Iterator[Client]:
    c = Client(sqlite_settings)
    yield c
    c.close()


# ---- models: one tiny trained and exported classifier shared by the model tests ----

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five synthetic images per category (96×96, data bar included)."""
    from services.data.synth import write_dataset

    out = tmp_path_factory.mktemp("tiny")
    write_dataset(out, per_class=5, width=96, height=96, seed=2)
    return out


@pytest.fixture(scope="session")
def alexnet_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch AlexNet run at 64×64 (fast; its accuracy means nothing)."""
    from models.training import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "alex-scratch"
    train(TrainConfig(data=str(tiny_data), arch="alexnet", mode="scratch", out=str(out), epochs=2,
                      batch_size=16, image_size=64, verbose=0))
    return out


@pytest.fixture(scope="session")
def alexnet_onnx(alexnet_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run exported to ONNX (parity-checked), copied out so tests can alter the run freely."""
    import shutil

    from models.export import export_run

    run = tmp_path_factory.mktemp("exported") / "alex"
    shutil.copytree(alexnet_run, run)
    export_run(run)
    return run / "model.onnx"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """main() in this process on embedded defaults (SQLite) in a temporary data folder."""
    from semtag.settings import get_settings

    monkeypatch.setenv("SEMTAG_DATA_DIR", str(tmp_path / "var"))
    for name in ("SEMTAG_DATABASE_URL", "SEMTAG_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "var"
    get_settings.cache_clear()
