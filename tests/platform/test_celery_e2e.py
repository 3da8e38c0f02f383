"""End to end with real processes: API → Redis → `semtag worker` → PostgreSQL, and a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from semtag.settings import Settings
from services.images import pipeline
from services.tables import Image, Job, ScaleReading
from tests import imagegen
from tests.conftest import Client, _reset_pg

pytestmark = pytest.mark.slow


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
    env.update({
        "SEMTAG_DATA_DIR": str(settings.data_dir),
        "SEMTAG_DATABASE_URL": settings.database_url,
        "SEMTAG_BROKER_URL": settings.broker_url,
        "SEMTAG_BROKER_VISIBILITY_TIMEOUT_S": str(settings.broker_visibility_timeout_s),
        "SEMTAG_JOB_LEASE_S": str(settings.job_lease_s),
        "SEMTAG_INFERENCE_BATCH_SIZE": str(settings.inference_batch_size),
    })
    return env


class Worker:
    def __init__(self, settings: Settings, queues: str, log: Path, pool: str = "solo", concurrency: int = 1):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semtag", "worker", "--queues", queues, "--pool", pool,
             "--concurrency", str(concurrency),
             "--loglevel", "INFO", "--name", f"test-{queues}-{time.monotonic_ns()}@%h"],
            env=_env(settings), stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def prod_settings(pg_url, redis_url, tmp_path) -> Settings:
    _reset_pg(pg_url)
    redis.Redis.from_url(redis_url).flushdb()
    return Settings(data_dir=tmp_path / "var", database_url=pg_url, broker_url=redis_url,
                    broker_visibility_timeout_s=3, job_lease_s=3)


def _poll(fn, timeout: float = 60, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def test_upload_goes_through_celery_into_postgres(prod_settings, tmp_path):
    worker = Worker(prod_settings, "inference,ocr,batch", tmp_path / "worker.log")
    c = Client(prod_settings)
    try:
        r = c.upload(("e2e.tif", imagegen.tiff(bits=16, seed=12)), record_id="rec-e2e")
        assert r.status_code == 202
        image_id = r.json()["items"][0]["id"]
        body = _poll(lambda: (b := c.get(f"/v1/images/{image_id}").json())["status"] == "done" and b)
        assert body["steps"] == {"scale": "done", "classification": "no_model"}
        assert body["scale"] is not None
        # the rows are in PostgreSQL, written by the worker process
        with c.rt.session() as s:
            assert s.scalar(select(func.count()).select_from(ScaleReading)) == 1
        log = (tmp_path / "worker.log").read_text()
        assert "semtag.read_scale" in log and "semtag.classify" in log
        # re-upload: same id, no new work
        again = c.upload(("e2e-copy.tif", imagegen.tiff(bits=16, seed=12))).json()["items"][0]
        assert again["id"] == image_id and again["duplicate"] is True
        depth = c.rt.queue.depth()
        assert sum(depth.values()) == 0
        time.sleep(1)
        assert (tmp_path / "worker.log").read_text().count("semtag.read_scale") == log.count("semtag.read_scale")
        with c.rt.session() as s:
            assert s.scalar(select(func.count()).select_from(Image)) == 1
    finally:
        c.close()
        worker.stop()


def test_killed_worker_task_is_redone_and_written_once(prod_settings, tmp_path):
    log = tmp_path / "worker.log"
    worker = Worker(prod_settings, "batch", log)
    c = Client(prod_settings)
    try:
        r = c.http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": 20, "step_seconds": 0.25}},
                        headers=c.auth("admin"))
        job_id = r.json()["id"]
        _poll(lambda: c.get(f"/v1/admin/jobs/{job_id}", role="admin").json()["progress"] >= 0.2)
        worker.kill()  # SIGKILL in the middle of the job
        job = c.get(f"/v1/admin/jobs/{job_id}", role="admin").json()
        assert job["status"] == "running" and job["attempts"] == 1 and job["progress"] < 1.0
        time.sleep(prod_settings.broker_visibility_timeout_s + 0.5)
        worker = Worker(prod_settings, "batch", log)
        job = _poll(lambda: (j := c.get(f"/v1/admin/jobs/{job_id}", role="admin").json())["status"] == "succeeded"
                    and j, timeout=90)
        assert job["attempts"] == 2 and job["progress"] == 1.0 and job["result"]["steps"] == 20
        time.sleep(1)
        with c.rt.session() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == 1
            assert s.get(Job, job_id).attempts == 2  # not run a third time
    finally:
        c.close()
        worker.stop()


def _big_png(category: int, seed: int) -> bytes:
    import cv2

    from services.data.synth import make_image

    img, _ = make_image(category, 2400, 1800, seed=seed)
    return cv2.imencode(".png", img)[1].tobytes()


def _active_model(settings: Settings, onnx_path: Path) -> str:
    from services.classify import registry
    from services.db import session_scope

    with session_scope(settings.database_url) as s:
        row = registry.register(s, onnx_path, settings.data_dir / "models")
        registry.activate(s, row.version)
        return row.version


def test_inference_worker_batches_and_survives_a_kill(prod_settings, alexnet_onnx, tmp_path):
    from services.tables import Prediction

    prod_settings.inference_batch_size = 4
    version = _active_model(prod_settings, alexnet_onnx)
    log = tmp_path / "worker.log"
    n = 24
    worker = Worker(prod_settings, "inference", log, pool="threads", concurrency=2)  # as deployed
    _poll(lambda: f"inference engine warmed up for model {version}" in log.read_text(), timeout=60)
    c = Client(prod_settings)
    count = lambda: c.rt.session().__enter__().scalar(select(func.count()).select_from(Prediction))  # noqa: E731
    try:
        r = c.upload(*[(f"big{k}.png", _big_png(k % 10, 200 + k)) for k in range(n)])
        assert r.status_code == 202 and r.json()["accepted"] == n
        _poll(lambda: count() >= 1, timeout=120, every=0.02)
        worker.kill()  # SIGKILL with batches in flight and prefetched
        partial = count()
        assert partial < n, "the worker finished everything before it could be killed; make the batches heavier"
        time.sleep(prod_settings.broker_visibility_timeout_s + 0.5)
        worker = Worker(prod_settings, "inference", log, pool="threads", concurrency=2)

        def finished() -> bool:
            # Redis delivers the dead worker's unacknowledged messages again; a message the worker had popped
            # but not yet recorded as unacknowledged when it died is gone from the broker (kombu's Redis
            # transport pops, then records: celery/celery#7950), and the reconciler queues that image again,
            # as the beat does in production.
            if count() < n:
                pipeline.reconcile(c.rt, older_than_s=prod_settings.broker_visibility_timeout_s)
            return count() >= n

        _poll(finished, timeout=180, every=1.0)
        time.sleep(1.5)
        with c.rt.session() as s:
            rows = s.scalars(select(Prediction)).all()
            assert len(rows) == n and len({p.image_id for p in rows}) == n  # each written once
            assert {p.model_version for p in rows} == {version}
            assert s.scalar(select(func.count()).select_from(Image).where(Image.inference_state == "done")) == n
        sizes = [int(x) for x in __import__("re").findall(r"classified a batch of (\d+)", log.read_text())]
        assert max(sizes) > 1  # dynamic batching gathered several images into one run
    finally:
        c.close()
        worker.stop()
