"""Configuration from the environment (prefix ``SEMTAG_``).

With nothing set, semtag runs embedded: SQLite and blobs under ``./var`` and tasks
executed in-process after each response. Setting ``SEMTAG_DATABASE_URL`` and
``SEMTAG_BROKER_URL`` switches to PostgreSQL and Celery on Redis, and ``SEMTAG_BLOB_URL``
(``s3://bucket/prefix``) keeps the blobs in an S3-compatible object store, so that the API and the
workers can run on hosts that share no disk.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMTAG_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None  # default: sqlite under data_dir
    broker_url: str | None = None  # default: in-process task execution

    # Blob store: unset = files under data_dir/blobs; s3://bucket/prefix = an S3-compatible object store,
    # with region and credentials from the standard AWS sources (AWS_REGION, AWS_ACCESS_KEY_ID, …)
    blob_url: str | None = None
    s3_endpoint_url: str | None = None      # e.g. http://minio:9000; unset: AWS's endpoint for the region
    blob_cache_max_bytes: int = 4 * 1024**3  # local disk cache of S3 blobs (data_dir/blob-cache), LRU
    s3_part_size_bytes: int = 16 * 1024**2  # uploads above this go multipart, in parts of this size (≥ 5 MiB)

    # Upload limits
    max_upload_bytes: int = 200 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024 * 1024
    max_files_per_request: int = 100
    max_pixels: int = 150_000_000  # width * height * pages; decompression-bomb guard
    # The first page decoded as stored (width × height × samples × bytes per sample), refused above this at
    # upload; also the most decoded pixel data one process holds at once, whatever runs concurrently.
    max_decoded_bytes: int = Field(default=192 * 1024 * 1024, ge=1024 * 1024)

    # HTTP server (semtag serve): deadlines for slow clients and a bound on connections
    http_header_timeout_s: float = Field(default=10.0, gt=0)     # request line + headers, from their first byte
    http_body_idle_timeout_s: float = Field(default=30.0, gt=0)  # longest gap between bytes of a request body
    http_keep_alive_s: int = Field(default=5, ge=1)              # an idle kept-alive connection is closed after
    http_max_connections: int = Field(default=1000, ge=1)        # per process; above it requests get a 503

    # Webhook
    webhook_secret: str | None = None
    webhook_url_allowlist: list[str] = Field(default_factory=list)
    webhook_max_skew_s: int = 300
    webhook_fetch_timeout_s: float = 30.0

    # Outbound events (Standard Webhooks) to the repository's subscriptions
    events_url_allowlist: list[str] = Field(default_factory=list)  # where semtag may POST events; same syntax
    events_delivery_timeout_s: float = Field(default=15.0, gt=0)    # one attempt, connection to last byte
    events_dispatch_every_s: int = Field(default=10, ge=1)          # the periodic dispatcher (beat, embedded)
    events_retry_base_s: float = Field(default=30.0, gt=0)          # first retry delay, doubled each attempt …
    events_retry_max_delay_s: float = Field(default=3 * 3600.0, gt=0)  # … up to this, with jitter
    events_retry_window_s: int = Field(default=24 * 3600, ge=60)    # retried for this long, then dead-lettered
    events_concurrency: int = Field(default=16, ge=1)               # deliveries sent at once by one dispatcher
    events_retention_days: int = Field(default=30, ge=1)            # delivered events are forgotten after this

    # Pipeline
    review_confidence_threshold: float = 0.6
    # Inference workers: dynamic batching (celery-batches) and the ONNX Runtime session
    # 8 on CPUs: as fast per image as 32 there (bench/RESULTS.md) with a quarter of the activations;
    # GPU deployments raise it (the k8s gpu overlay: 128)
    inference_batch_size: int = 8           # a batch is flushed at this many images …
    inference_batch_wait_ms: int = 50       # … or after this wait, whichever comes first
    # one task takes up to this many batches' messages when they are waiting, so that the next batch is decoded
    # while the model runs the current one (the engine never waits for a decode) and a task's fixed costs (the
    # active model's lookup, the transactions) are shared
    inference_batches_per_task: int = Field(default=2, ge=1, le=16)
    # a grey JPEG upload is decoded once, by the upload's own check, at the scale the classifier needs (both sides
    # ≥ this) and kept until it is classified, so the inference worker does not decode it again; 0: it does
    inference_input_side: int = Field(default=299, ge=0, le=4096)
    inference_threads: int | None = None    # intra-op threads; default: the process's cores
    inference_warmup: bool = True           # run each batch size once when a model is loaded
    # ONNX Runtime's CPU memory arena keeps the largest batch's activations for the life of the process
    # (Inception-v3 at 299², batch 32: 1.1 GB); off, they are freed after each run
    inference_memory_arena: bool = False
    # Idle ONNX Runtime threads busy-wait by default; off, they sleep and leave the cores to the other workers
    # (2 threads at batch 8 on 2 shared cores: 54 → 37 ms of CPU per image). On for cores of its own
    inference_spin: bool = False
    # An inference worker's threads around the model (decoding, database writes, the broker's messages) run this
    # many nice steps below its model threads, so that on cores the model fills they rarely preempt them
    # mid-operator (INT8 drains on 2 cores, with the model threads: median 0.93 of the raw engine, 0.885
    # before; bench/RESULTS.md); 0: one priority
    inference_side_nice: int = Field(default=10, ge=0, le=19)
    reconcile_after_s: int = 600  # re-enqueue images pending/processing for longer than this
    reconcile_every_s: int = 60
    job_lease_s: int = 120  # a running job's lease, renewed every third of it while the job runs
    broker_visibility_timeout_s: int = 3600  # redelivery delay of tasks whose worker died
    worker_metrics_port: int | None = None
    metrics_key: str | None = None   # when set, GET /metrics needs "Authorization: Bearer <metrics_key>"
    metrics_cache_s: float = 15.0    # the database gauges of /metrics are read at most this often
    ui_session_s: int = 12 * 3600    # a console sign-in lasts this long

    @field_validator("blob_url")
    @classmethod
    def _blob_url_is_s3(cls, v: str | None) -> str | None:
        if not v:
            return None
        from services.storage import parse_s3_url

        parse_s3_url(v)  # ValueError: the setting is refused at start-up, naming the problem
        return v

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'semtag.sqlite3').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blob_location(self) -> str:
        """Where blobs live, for people: the S3 URL or the local folder."""
        if self.blob_url:
            return self.blob_url + (f" at {self.s3_endpoint_url}" if self.s3_endpoint_url else "")
        return str(self.blob_dir.resolve())

    @property
    def embedded_tasks(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
