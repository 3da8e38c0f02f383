"""Issues 5 and 15's benchmark: the raw ONNX Runtime engine vs the whole pipeline, on this machine.

1. Raw engine: images/s at batch 1, 8, 16 and 32 on preprocessed inputs (FP32, and INT8 with --int8),
   each point timed --rounds times for at least --raw-seconds after a warm-up, right before and again right
   after each pipeline run (this machine's speed drifts by minutes); the median of those rounds is the
   figure and their spread is printed. The denominator of a run's ratio is the *best* of these figures,
   whichever batch gives it.
2. Per image on one thread: the worker's decode + preprocess of a 1024×768 JPEG, its preprocess of the
   input prepared at ingest, and the upload's check of the JPEG without and with keeping that input.
3. Pipeline, two ways, each with N images (default 1,000) uploaded one per request over HTTP to
   `semtag serve`, queued on Redis, classified by a real `semtag worker --queues inference`
   (celery-batches), predictions stored in PostgreSQL:
   * `live`: the uploaders run while the worker classifies (the worker is saturated); images/s is
     counted from the first upload's start to the last prediction, so the first batch's time counts
     in full; upload p50/p95 are measured here. API, uploaders and worker share this machine's cores,
     so the uploads' own CPU is in the ratio.
   * `drain`: the worker's consumer is paused (Celery remote control), the N images are uploaded and
     queued, then the consumer is resumed; images/s from the resume to the last prediction. This is
     the worker's pipeline (broker, model input, model, database) as on a deployment where the API runs
     on other hosts. The benchmark's images are grey JPEGs, so their model input was decoded by the
     upload's own check (services.images.prepared) and the worker only reads it: the decode is inside
     the `live` figure, with the API, and outside `drain`. `--env SEMTAG_INFERENCE_INPUT_SIDE=0` makes
     the worker decode the JPEGs itself, as before.

Needs PostgreSQL and Redis (as the tests do). Without --model an untrained Inception-v3 at 299²
is exported first (speed only; its predictions mean nothing).

`--pool solo --concurrency 1` runs the inference worker as it ran before two batches were in flight
(workers/batching.py); `--gpu-like-ms N` stands a sleep of N ms per image, which takes no CPU, in for every
model run, as a GPU's (bench/gpu_like).

Usage: python bench/inference_pipeline.py [--n 1000] [--batch 8] [--model FILE.onnx] [--int8]
                                          [--uploaders 2] [--modes live,drain] [--pool threads|solo]
                                          [--concurrency 2] [--gpu-like-ms N] [--worker-nice N]
                                          [--api-workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from benchlib import export_untrained, free_port

PG_ADMIN = os.environ.get("SEMTAG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("SEMTAG_TEST_REDIS", "redis://127.0.0.1:6379/12")


def _model(tmp: Path, int8: bool) -> Path:
    return export_untrained(tmp, int8=int8) / ("model.int8.onnx" if int8 else "model.onnx")


def _images(n: int, out: Path) -> list[Path]:
    import cv2

    from services.data.synth import make_image

    base = [make_image(k % 10, 1024, 768, seed=k)[0] for k in range(20)]
    paths = []
    for i in range(n):
        img = base[i % len(base)].copy()
        img[0, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)  # unique bytes: no deduplication
        p = out / f"img{i:05d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


RAW_BATCHES = (1, 8, 16, 32)
# how the services are started: --pool, --concurrency (the inference worker's Celery pool), --worker-nice (its
# scheduling priority below the API's), --api-workers (`semtag serve --workers`)
SERVICES: dict = {"pool": "threads", "concurrency": 1, "worker_nice": 0, "api_workers": 1}
WORKER_ENV: dict[str, str] = {}  # --env: settings for the service and the worker (SEMTAG_…=value)


def raw_rounds(model: Path, sample: list[Path], seconds: float, rounds: int) -> dict[int, list[float]]:
    """images/s of ``rounds`` timed rounds of at least ``seconds`` each per batch size, with the engine
    configured as the worker configures it (threads, no spinning, no arena)."""
    from services.classify.inference import Engine

    eng = Engine(model, warmup=RAW_BATCHES)
    x1 = np.stack([eng.decode(p)[0] for p in sample[:max(RAW_BATCHES)]])
    figures: dict[int, list[float]] = {}
    for b in RAW_BATCHES:
        x = x1[:b]
        eng.run(x)
        figures[b] = []
        for _ in range(rounds):
            reps, t = 0, time.perf_counter()
            while reps < 2 or time.perf_counter() - t < seconds:
                eng.run(x)
                reps += 1
            figures[b].append(reps * b / (time.perf_counter() - t))
    return figures


def raw_figures(rounds: dict[int, list[float]], when: str) -> dict[int, float]:
    """The median per batch size of the rounds gathered so far (printed with their spread)."""
    speeds = {b: float(np.median(f)) for b, f in rounds.items()}
    for b, f in rounds.items():
        print(f"raw engine batch {b} ({when}): {speeds[b]:.1f} images/s (median of {len(f)} rounds; "
              f"range {min(f):.1f}–{max(f):.1f})", flush=True)
    best = max(speeds, key=speeds.get)
    print(f"best raw ({when}): {speeds[best]:.1f} images/s at batch {best}", flush=True)
    return speeds


def engine_costs(model: Path, sample: list[Path]) -> dict[str, float]:
    from services.classify.inference import Engine

    per_image = per_image_costs(Engine(model), sample[:64])
    print("on one thread, per image: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in per_image.items()),
          flush=True)
    return per_image


def per_image_costs(eng, sample: list[Path]) -> dict[str, float]:
    """ms per image on one thread: the worker's decode + preprocess of the JPEG, its preprocess of the input
    prepared at ingest, and the upload's check with and without keeping that input (the API's side)."""
    from services.images import imaging, prepared

    def ms(fn, items) -> float:
        t = time.perf_counter()
        for it in items:
            fn(it)
        return (time.perf_counter() - t) / len(items) * 1000

    side = eng.pp.input_size
    folder = Path(tempfile.mkdtemp(prefix="semtag-prepared-"))
    try:
        inputs = []
        for n, p in enumerate(sample):
            q = folder / f"{n}{prepared.SUFFIX}"
            np.save(q, imaging.probe_keeping(p, 10**9, keep_min_side=side)[1].gray, allow_pickle=False)
            inputs.append(q)
        return {"decode_and_preprocess_ms": ms(eng.decode, sample),
                "prepared_input_preprocess_ms": ms(eng.decode, inputs),
                "upload_check_ms": ms(lambda p: imaging.probe(p, 10**9), sample),
                "upload_check_keeping_input_ms": ms(lambda p: imaging.probe_keeping(p, 10**9, keep_min_side=side),
                                                    sample)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def utc_now():  # the clock the predictions' created_at is written with
    from services.tables import utcnow

    return utcnow()


def pipeline(model: Path, paths: list[Path], batch: int, workdir: Path, uploaders: int, mode: str) -> dict:
    import httpx
    import psycopg
    import redis

    name = f"semtag_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    redis.Redis.from_url(REDIS).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
    env.update({"SEMTAG_DATA_DIR": str(workdir / "var"), "SEMTAG_DATABASE_URL": db, "SEMTAG_BROKER_URL": REDIS,
                "SEMTAG_INFERENCE_BATCH_SIZE": str(batch), "SEMTAG_INFERENCE_BATCH_WAIT_MS": "50"})
    env.update(WORKER_ENV)
    sem = [sys.executable, "-m", "semtag"]
    procs = []
    try:
        subprocess.run(sem + ["db", "upgrade"], env=env, check=True)
        subprocess.run(sem + ["models", "import", str(model)], env=env, check=True, capture_output=True)
        from services.classify import registry
        from services.db import session_scope

        with session_scope(db) as s:
            version = registry.list_models(s)[0].version
        subprocess.run(sem + ["models", "activate", version], env=env, check=True, capture_output=True)
        key = subprocess.run(sem + ["apikey", "create", "--role", "ingest"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        port = free_port()
        log = open(workdir / "services.log", "ab")
        procs.append(subprocess.Popen(sem + ["serve", "--port", str(port), "--workers", str(SERVICES["api_workers"])],
                                      env=env, stdout=log, stderr=log))
        nice = ["nice", "-n", str(SERVICES["worker_nice"])] if SERVICES["worker_nice"] else []
        worker = ["worker", "--queues", "inference", "--pool", SERVICES["pool"], "--concurrency",
                  str(SERVICES["concurrency"]), "--loglevel", "WARNING"]
        procs.append(subprocess.Popen(nice + sem + worker, env=env, stdout=log, stderr=log))
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        from celery import Celery

        control = Celery(broker=REDIS).control
        for _ in range(600):  # the worker answers once it has loaded and warmed the model
            if control.ping(timeout=0.5):
                break
        if mode == "drain":
            control.cancel_consumer("inference", reply=True, timeout=5)
        latencies: list[float] = []
        lock = threading.Lock()
        todo = list(paths)

        def uploader() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                while True:
                    with lock:
                        if not todo:
                            return
                        p = todo.pop()
                    t = time.perf_counter()
                    r = c.post("/v1/images", files={"file": (p.name, p.read_bytes(), "image/jpeg")})
                    dt = time.perf_counter() - t
                    r.raise_for_status()
                    with lock:
                        latencies.append(dt)

        t0, start = time.perf_counter(), utc_now()
        threads = [threading.Thread(target=uploader) for _ in range(uploaders)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        upload_s = time.perf_counter() - t0
        if mode == "drain":
            from sqlalchemy import func, select

            from services.tables import Prediction

            with session_scope(db) as s:
                early = s.scalar(select(func.count()).select_from(Prediction))
            if early:
                raise SystemExit(f"drain: {early} images were classified while the consumer was paused")
            start = utc_now()
            control.add_consumer("inference", reply=True, timeout=5)
        from sqlalchemy import func, select

        from services.tables import Prediction

        n = len(paths)
        while True:
            with session_scope(db) as s:
                done = s.scalar(select(func.count()).select_from(Prediction))
                first, last = s.execute(select(func.min(Prediction.created_at), func.max(Prediction.created_at))).one()
            if done >= n or time.perf_counter() - t0 > 3600:
                break
            time.sleep(1)
        # from the first upload (live) or the consumer's resume (drain) to the last prediction: the first
        # batch's decode and run are inside the span
        span = (last - start).total_seconds() if last else float("nan")
        lat = np.array(latencies) * 1000
        res = {"mode": mode, "images": n, "predictions": done, "uploaders": uploaders,
               "pipeline_images_per_s": done / span if span > 0 else None, "upload_seconds": upload_s,
               "upload_p50_ms": float(np.percentile(lat, 50)), "upload_p95_ms": float(np.percentile(lat, 95))}
        print(f"pipeline ({mode}): {done}/{n} predictions in PostgreSQL; {res['pipeline_images_per_s']:.1f} "
              f"images/s; upload p50 {res['upload_p50_ms']:.0f} ms, p95 {res['upload_p95_ms']:.0f} ms "
              f"({uploaders} uploaders, {n} uploads in {upload_s:.0f} s"
              f"{', the worker paused' if mode == 'drain' else ', the worker saturated'})", flush=True)
        return res
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        from services.db import get_engine

        get_engine(db).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8, help="SEMTAG_INFERENCE_BATCH_SIZE of the worker")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--int8", action="store_true", help="export and use the INT8 model (without --model)")
    ap.add_argument("--uploaders", default="2", help="comma-separated: one live run per figure")
    ap.add_argument("--modes", default="live,drain")
    ap.add_argument("--raw-seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--raw-shared", action="store_true",
                    help="with several pipeline runs, let the raw rounds after one count as the next one's before")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--env", action="append", default=[], metavar="SEMTAG_NAME=VALUE",
                    help="a setting for the service and the worker, e.g. SEMTAG_INFERENCE_BATCHES_PER_TASK=1")
    ap.add_argument("--pool", default="threads", choices=["threads", "solo"],
                    help="the inference worker's pool (threads, as deployed; solo, one batch at a time, as before)")
    ap.add_argument("--concurrency", type=int, default=2, help="the inference worker's threads (batches at once)")
    ap.add_argument("--gpu-like-ms", type=float, default=0.0,
                    help="replace every model run by a sleep of this many ms per image that takes no CPU, as a "
                         "GPU's run (bench/gpu_like): how much of the work around the model the pipeline hides")
    ap.add_argument("--worker-nice", type=int, default=0,
                    help="start the inference worker under `nice -n N`: the uploads get the larger share of the cores "
                         "(what limits upload latency when the API shares cores with a saturated worker)")
    ap.add_argument("--api-workers", type=int, default=1, help="`semtag serve --workers N` (processes)")
    args = ap.parse_args()
    SERVICES.update(pool=args.pool, concurrency=args.concurrency, worker_nice=args.worker_nice,
                    api_workers=args.api_workers)
    if args.gpu_like_ms > 0:  # this process (the raw figure) and the services it starts (inheriting os.environ)
        os.environ["BENCH_GPU_LIKE_MS"] = str(args.gpu_like_ms)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent / "gpu_like"),
                                                                  os.environ.get("PYTHONPATH")]))
        import runpy

        runpy.run_path(str(Path(__file__).parent / "gpu_like" / "sitecustomize.py"))  # this process started without
    WORKER_ENV.update(kv.split("=", 1) for kv in args.env)
    tmp = Path(tempfile.mkdtemp(prefix="semtag-pipe-"))
    try:
        model = args.model or _model(tmp, args.int8)
        (tmp / "imgs").mkdir()
        paths = _images(args.n, tmp / "imgs")
        per_image = engine_costs(model, paths)
        before = raw_rounds(model, paths, args.raw_seconds, args.rounds)
        runs = []
        for mode in args.modes.split(","):
            for u in ([int(x) for x in args.uploaders.split(",")] if mode == "live" else [2]):
                if before is None:
                    before = raw_rounds(model, paths, args.raw_seconds, args.rounds)
                res = pipeline(model, paths, args.batch, tmp, u, mode)
                after = raw_rounds(model, paths, args.raw_seconds, args.rounds)
                pooled = {b: before[b] + after[b] for b in RAW_BATCHES}
                raw = raw_figures(pooled, f"before and after the {mode} run")
                best_b = max(raw, key=raw.get)
                res["raw"], res["raw_rounds"], res["best_batch"] = raw, pooled, best_b
                if res["pipeline_images_per_s"]:
                    res["ratio_to_best_raw"] = res["pipeline_images_per_s"] / raw[best_b]
                    print(f"pipeline ({mode}, {u} uploaders) / best raw (batch {best_b}, {raw[best_b]:.1f} "
                          f"images/s): {res['ratio_to_best_raw']:.2f}", flush=True)
                runs.append(res)
                before = after if args.raw_shared else None
        if args.out:
            args.out.write_text(json.dumps({"model": "int8" if args.int8 else "fp32", "env": WORKER_ENV,
                                            "pool": [SERVICES["pool"], str(SERVICES["concurrency"])],
                                            "worker_nice": SERVICES["worker_nice"],
                                            "api_workers": SERVICES["api_workers"],
                                            "per_image_ms": per_image, "batch": args.batch,
                                            "runs": runs}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
