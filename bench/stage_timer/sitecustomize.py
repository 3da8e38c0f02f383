"""bench/backfill.py's probe inside the worker and ingest processes (on PYTHONPATH only there): the CPU seconds
spent inside each stage's own function (the pipeline's scale and inference steps, the ingest's hash and
send), written to $SEMTAG_BENCH_STAGE_TIMES/<pid>.json after every call, so that the bench can tell the
stages' work in the run from what the processes spend around it (Celery, threads, the client)."""

from __future__ import annotations

import functools
import json
import os
import threading
import time

_DIR = os.environ.get("SEMTAG_BENCH_STAGE_TIMES")

if _DIR:
    _totals: dict[str, list[float]] = {}
    _lock = threading.Lock()

    def _save() -> None:
        tmp = os.path.join(_DIR, f".{os.getpid()}.json")
        with open(tmp, "w") as fh:
            json.dump(_totals, fh)
        os.replace(tmp, os.path.join(_DIR, f"{os.getpid()}.json"))

    def _timed(name: str, fn, clock, count=lambda a: 1):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = clock()
            try:
                return fn(*a, **kw)
            finally:
                spent = clock() - t
                with _lock:
                    tot = _totals.setdefault(name, [0.0, 0])
                    tot[0] += spent
                    tot[1] += count(a)
                    _save()
        return wrapper

    from services.images import backfill, pipeline

    # the workers: whole processes (ONNX Runtime's and OpenCV's helper threads count); one step at a time
    pipeline.read_scale = _timed("scale", pipeline.read_scale, time.process_time)
    pipeline.classify_batch = _timed("classify", pipeline.classify_batch, time.process_time,
                                     count=lambda a: len(a[1]))
    # the ingest: parallel threads, so each call's own thread
    backfill._hash = _timed("ingest_hash", backfill._hash, time.thread_time)
    backfill.LocalTarget.send = _timed("ingest_send", backfill.LocalTarget.send, time.thread_time)
