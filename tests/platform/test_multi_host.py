"""Two hosts that share no disk: the API with data dir A, a worker with data dir B, and between them only
PostgreSQL, Redis and the object store (moto's S3 server, an emulator over real HTTP).

Each process runs in a mount namespace of its own where the other host's data dir is covered by an empty
tmpfs (``unshare``, as root), so neither can read the other's files even by accident. Upload → scale →
classify must work."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
import redis

from semtag.settings import Settings
from services.access import auth
from services.classify import registry
from services.db import session_scope
from services.tables import Image
from tests.conftest import _reset_pg

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /mnt && umount /mnt"], capture_output=True)
    return probe.returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Host:
    """A process with its own data dir, in a mount namespace where ``hide`` is an empty tmpfs."""

    def __init__(self, name: str, argv: list[str], settings: Settings, aws: dict[str, str], hide: Path,
                 log: Path, isolate: bool) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMTAG_", "AWS_"))}
        env.update(aws)
        env.update({"SEMTAG_DATA_DIR": str(settings.data_dir), "SEMTAG_DATABASE_URL": settings.database_url or "",
                    "SEMTAG_BROKER_URL": settings.broker_url or "", "SEMTAG_BLOB_URL": settings.blob_url or "",
                    "SEMTAG_S3_ENDPOINT_URL": settings.s3_endpoint_url or "", "PYTHONPATH": str(ROOT)})
        cmd = [sys.executable, "-m", "semtag", *argv]
        if isolate:  # unshare execs sh, which execs semtag: the pid below is the host's own process
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o size=1m hidden "$0" && exec "$@"', str(hide), *cmd]
        self.name, self.log, self.hide = name, log, hide
        self.proc = subprocess.Popen(cmd, env=env, cwd=settings.data_dir, stdout=open(log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for(self, check, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} did not happen:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def hides_the_other_host(self) -> bool:
        mounts = Path(f"/proc/{self.proc.pid}/mountinfo").read_text()
        return any(line.split()[4] == str(self.hide) and " - tmpfs " in line for line in mounts.splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def _synthetic_png(category: int, seed: int) -> bytes:
    import cv2

    from services.data.synth import make_image

    img, _ = make_image(category, 320, 256, seed=seed)
    return cv2.imencode(".png", img)[1].tobytes()


def test_api_and_worker_on_hosts_that_share_no_disk(pg_url, redis_url, s3_endpoint, s3_bucket, s3_env, alexnet_onnx,
                                                    tmp_path) -> None:
    isolate = _can_unshare()
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    _reset_pg(pg_url)
    redis.Redis.from_url(redis_url).flushdb()
    shared = {"database_url": pg_url, "broker_url": redis_url, "blob_url": f"s3://{s3_bucket}/blobs",
              "s3_endpoint_url": s3_endpoint}
    api_settings, worker_settings = Settings(data_dir=host_a, **shared), Settings(data_dir=host_b, **shared)
    # the model is installed on the worker's host (as `semtag models import` there would), and activated
    with session_scope(pg_url) as s:
        version = registry.register(s, alexnet_onnx, host_b / "models").version
        registry.activate(s, version)
        key = auth.create_key(s, "ingest")[1]
    port = _free_port()
    api = Host("api", ["serve", "--host", "127.0.0.1", "--port", str(port)], api_settings, s3_env, host_b,
               tmp_path / "api.log", isolate)
    worker = Host("worker", ["worker", "--queues", "inference,ocr", "--pool", "solo", "--concurrency", "1",
                             "--loglevel", "INFO", "--name", f"mh-{time.monotonic_ns()}@%h"],
                  worker_settings, s3_env, host_a, tmp_path / "worker.log", isolate)
    try:
        worker.wait_for(lambda: b"ready." in worker.log.read_bytes(), "worker start")
        base = f"http://127.0.0.1:{port}"

        def api_up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        api.wait_for(api_up, "API start")
        if isolate:
            assert api.hides_the_other_host() and worker.hides_the_other_host()
        assert f"s3://{s3_bucket}/blobs" in api.log.read_text()  # `serve` says where the blobs are

        headers = {"Authorization": f"Bearer {key}"}
        data = _synthetic_png(3, seed=77)
        r = httpx.post(f"{base}/v1/images", headers=headers, files=[("file", ("mh.png", data))], timeout=30)
        assert r.status_code == 202, r.text
        image_id = r.json()["items"][0]["id"]

        def done() -> dict | None:
            body = httpx.get(f"{base}/v1/images/{image_id}", headers=headers, timeout=10).json()
            return body if body["status"] in ("done", "failed") else None
        body = None
        deadline = time.monotonic() + 120
        while body is None and time.monotonic() < deadline:
            assert worker.proc.poll() is None and api.proc.poll() is None
            body = done()
            time.sleep(0.3)
        assert body is not None, worker.log.read_text()[-3000:]
        assert body["status"] == "done", body
        assert body["steps"] == {"scale": "done", "classification": "done"}
        assert body["category"] and body["model_version"] == version

        sha = hashlib.sha256(data).hexdigest()
        with session_scope(pg_url) as s:
            storage_key = s.get(Image, image_id).storage_key
        assert storage_key == f"{sha[:2]}/{sha[2:4]}/{sha}.png"
        obj = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=s3_bucket, Key=f"blobs/{storage_key}")
        assert obj["Body"].read() == data
        # the worker read the image from the object store into its own cache; neither host has a local blob store
        assert (host_b / "blob-cache" / storage_key).read_bytes() == data
        assert not (host_a / "blobs").exists() and not (host_b / "blobs").exists()
        assert not (host_a / "models").exists()
        log = worker.log.read_text()
        assert "semtag.read_scale" in log and "semtag.classify" in log and str(host_a) not in log
    finally:
        api.stop()
        worker.stop()
