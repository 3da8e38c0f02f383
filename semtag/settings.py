"""Configuration from the environment (prefix ``SEMTAG_``).

With nothing set, semtag runs embedded: SQLite and blobs under ``./var`` and tasks
executed in-process after each response. Setting ``SEMTAG_DATABASE_URL`` and
``SEMTAG_BROKER_URL`` switches to PostgreSQL and Celery on Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMTAG_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None  # default: sqlite under data_dir
    broker_url: str | None = None  # default: in-process task execution

    # Upload limits
    max_upload_bytes: int = 200 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024 * 1024
    max_files_per_request: int = 100
    max_pixels: int = 150_000_000  # width * height * pages; decompression-bomb guard

    # Webhook
    webhook_secret: str | None = None
    webhook_url_allowlist: list[str] = Field(default_factory=list)
    webhook_max_skew_s: int = 300
    webhook_fetch_timeout_s: float = 30.0

    # Pipeline
    review_confidence_threshold: float = 0.6
    # Inference workers: dynamic batching (celery-batches) and the ONNX Runtime session
    inference_batch_size: int = 32          # a batch is flushed at this many images …
    inference_batch_wait_ms: int = 50       # … or after this wait, whichever comes first
    inference_threads: int | None = None    # intra-op threads; default: the process's cores
    inference_warmup: bool = True           # run each batch size once when a model is loaded
    reconcile_after_s: int = 600  # re-enqueue images pending/processing for longer than this
    reconcile_every_s: int = 60
    job_lease_s: int = 120  # a running job's lease, renewed every third of it while the job runs
    broker_visibility_timeout_s: int = 3600  # redelivery delay of tasks whose worker died
    worker_metrics_port: int | None = None
    metrics_key: str | None = None   # when set, GET /metrics needs "Authorization: Bearer <metrics_key>"
    metrics_cache_s: float = 15.0    # the database gauges of /metrics are read at most this often

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'semtag.sqlite3').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def embedded_tasks(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
