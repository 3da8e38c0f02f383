"""Capacity on paper (issue 15, point 5): measure the per-image costs here, then model three deployments.

Two steps:

``python bench/capacity.py measure [--n 200]``
    Runs the real stack on this machine — `semtag serve`, its own Redis, PostgreSQL, one OCR worker and
    one inference worker (an untrained Inception-v3 at 299², FP32: speed and sizes only) — uploads N images
    (the real SEM images of ../shared/data/sem-real when present, synthetic 1024×768 JPEGs for the rest),
    lets both queues drain and measures, per image: the API's CPU time per upload, the workers' CPU time,
    the Redis memory a queued task takes, PostgreSQL rows, bytes (pg_total_relation_size) and
    transactions, the blob bytes, and each process's peak RSS. It also measures this PostgreSQL's rate of
    small committed transactions. The figures go to ``bench/capacity_measured.json``.

``python bench/capacity.py [model]``
    Reads that file (and the worker sizes and KEDA targets from deploy/k8s/base) and runs a fluid queueing
    model, minute by minute, with KEDA-like scaling, for: a facility with 30,000 images a year, a 150,000-image
    backfill, and a national repository with 10 million images. Prints the workers of each kind, database and
    object-store sizes, Redis peak memory and the first resource to saturate. docs/capacity.md quotes it.

Figures from bench/RESULTS.md that the model also uses are named in ``RESULTS_FIGURES`` below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import export_untrained, free_port, proc_cpu, process_tree

ROOT = Path(__file__).resolve().parents[1]
MEASURED = Path(__file__).with_name("capacity_measured.json")
REAL = ROOT.parent / "shared" / "data" / "sem-real"
PG_ADMIN = os.environ.get("SEMTAG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# Figures measured earlier on this machine (bench/RESULTS.md), used as they stand.
RESULTS_FIGURES = {
    # scale reading, real images, one core: mean 109–153 ms over seven runs; slowest image 289–439 ms
    "ocr_s_per_image_low": 0.109, "ocr_s_per_image_high": 0.153,
    # raw ONNX Runtime Inception-v3 299², 2 cores (AVX2): FP32 ~15 images/s, INT8 ~25 images/s (batch 16)
    "inference_fp32_images_per_s_2cores": 15.0, "inference_int8_images_per_s_2cores": 25.0,
    # decode + preprocess of a 1024×768 JPEG to 299², one thread
    "decode_ms_per_image": 4.8,
}
# Not measured here (no GPU lent for this bench): issue 15's target for the raw FP16 engine on an H100-class card.
GPU_TARGET_IMAGES_PER_S = 10_000


# ----------------------------------------------------------------------------------------------- measure
def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    return f"{model} ({'AVX-512 VNNI' if 'avx512_vnni' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'})"


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process tree, children still alive included."""
    return sum(proc_cpu(p) for p in process_tree(pid))


def _rss_mb(pid: int) -> dict[int, float]:
    out = {}
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[p] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


class PeakRSS(threading.Thread):
    """Samples the RSS of named process trees twice a second; keeps the largest single process and tree sum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.procs: dict[str, int] = {}
        self.peak: dict[str, dict[str, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for name, pid in list(self.procs.items()):
                r = _rss_mb(pid)
                if r:
                    pk = self.peak.setdefault(name, {"largest_process_mb": 0.0, "tree_mb": 0.0, "processes": 0})
                    pk["largest_process_mb"] = max(pk["largest_process_mb"], max(r.values()))
                    pk["tree_mb"] = max(pk["tree_mb"], sum(r.values()))
                    pk["processes"] = max(pk["processes"], len(r))


def _images(n: int, out: Path) -> list[Path]:
    import cv2
    import numpy as np

    from services.data.datasets import IMAGE_EXTS
    from services.data.synth import make_image

    real = []
    if (REAL / "MANIFEST.tsv").exists():
        for line in (REAL / "MANIFEST.tsv").read_text().splitlines()[1:]:
            p = REAL / line.split("\t")[0]
            if p.exists() and p.suffix.lower() in IMAGE_EXTS:
                real.append(p)
    real = real[:n]
    base = [make_image(k % 10, 1024, 768, seed=k)[0] for k in range(10)]
    paths = list(real)
    for i in range(n - len(real)):
        img = base[i % len(base)].copy()
        img[0, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)  # unique bytes: no deduplication
        p = out / f"synth{i:05d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def _model(tmp: Path) -> Path:
    """An untrained Inception-v3 at 299², exported to ONNX FP32 (speed and sizes only; its predictions mean
    nothing), kept in bench/out/ for the next run. The export runs in a child process, so that TensorFlow's
    memory (several GB) is given back before the services start."""
    cached = ROOT / "bench" / "out" / "capacity-model" / "run" / "model.onnx"
    if not cached.exists():
        cached.parent.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "export-model", str(cached.parent.parent)], check=True, cwd=ROOT)
    return cached


def _export_model(root: Path) -> None:
    export_untrained(root)


def _engine_rss(model: Path, batch: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads the model as the inference worker does, warmed up at
    batch 1 and `batch`, then runs a batch of that size: the session's memory for that batch size."""
    code = ("import resource, numpy as np; from services.classify.inference import Engine; "
            f"e = Engine({str(model)!r}, threads=1, warmup=(1, {batch})); "
            f"e.run(np.zeros(({batch}, 299, 299, 3), np.float32), outputs=('logits', 'probabilities')); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def _pg_sizes(db_url: str) -> dict[str, dict[str, int]]:
    import psycopg

    with psycopg.connect(db_url.replace("+psycopg", "")) as c:
        rows = c.execute(
            "SELECT relname, pg_total_relation_size(relid), n_live_tup FROM pg_stat_user_tables").fetchall()
        stat = c.execute("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
                         "WHERE datname = current_database()").fetchone()
        dbsize = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"tables": {r[0]: {"bytes": int(r[1]), "rows": int(r[2])} for r in rows},
            "stat": dict(zip(("xact_commit", "tup_inserted", "tup_updated", "tup_deleted"), map(int, stat))),
            "database_bytes": int(dbsize)}


def _row_counts(db_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(db_url.replace("+psycopg", "")) as c:
        names = [r[0] for r in c.execute("SELECT relname FROM pg_stat_user_tables").fetchall()]
        return {t: int(c.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in names}


def _commit_rate(db_url: str, threads: int = 2, per_thread: int = 1500) -> float:
    """Small committed transactions per second on this PostgreSQL (one-row INSERT + COMMIT, as the workers do)."""
    import psycopg

    url = db_url.replace("+psycopg", "")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigserial primary key, v text)")

    def loop() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            for i in range(per_thread):
                c.execute("INSERT INTO bench_commit (v) VALUES (%s)", (f"row {i}",))

    ths = [threading.Thread(target=loop) for _ in range(threads)]
    t = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    rate = threads * per_thread / (time.perf_counter() - t)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP TABLE bench_commit")
    return rate


def _wait_done(db_url: str, n: int, limit_s: float) -> dict:
    """Wait until every image's two steps have run (or it failed); returns what the database holds then."""
    import psycopg

    t = time.monotonic()
    while True:
        with psycopg.connect(db_url.replace("+psycopg", "")) as c:
            finished = c.execute("SELECT count(*) FROM images WHERE status = 'failed' OR "
                                 "(scale_state <> 'pending' AND inference_state <> 'pending')").fetchone()[0]
            if finished >= n or time.monotonic() - t > limit_s:
                counts = dict(c.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())
                # both steps done but the status not: the two workers' updates of one row raced
                stuck = c.execute("SELECT count(*) FROM images WHERE status = 'processing' AND "
                                  "scale_state = 'done' AND inference_state = 'done'").fetchone()[0]
                return {"status": counts, "steps_finished": int(finished),
                        "both_steps_done_but_status_processing": int(stuck)}
        time.sleep(1)


def measure_pg(clients: tuple[int, ...] = (1, 2, 8, 16), total: int = 6000) -> dict[str, float]:
    """Small commits/s of this PostgreSQL with more clients (group commit shares one WAL flush among them)."""
    import psycopg

    name = f"semtag_cap_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        return {str(n): _commit_rate(url, threads=n, per_thread=max(200, total // n)) for n in clients}
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(n: int) -> dict:
    import httpx
    import psycopg
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="semtag-capacity-"))
    name = f"semtag_cap_{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    rport = free_port()
    rds = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no",
                            "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{rport}/0"
    peak = PeakRSS()
    try:
        model = _model(tmp)
        (tmp / "imgs").mkdir()
        paths = _images(n, tmp / "imgs")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
        env.update({"SEMTAG_DATA_DIR": str(tmp / "var"), "SEMTAG_DATABASE_URL": db, "SEMTAG_BROKER_URL": broker,
                    "SEMTAG_INFERENCE_THREADS": "1"})
        sem = [sys.executable, "-m", "semtag"]
        subprocess.run(sem + ["db", "upgrade"], env=env, check=True)
        subprocess.run(sem + ["models", "import", str(model)], env=env, check=True, capture_output=True)
        out = subprocess.run(sem + ["models", "list", "--json"], env=env, check=True, capture_output=True, text=True)
        version = json.loads(out.stdout.splitlines()[0])["version"]
        subprocess.run(sem + ["models", "activate", version], env=env, check=True, capture_output=True)
        key = subprocess.run(sem + ["apikey", "create", "--role", "ingest"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = redis.Redis.from_url(broker)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.RedisError:
                time.sleep(0.1)
        port = free_port()
        log = open(tmp / "services.log", "ab")
        api = subprocess.Popen(sem + ["serve", "--port", str(port)], env=env, stdout=log, stderr=log)
        procs.append(api)
        peak.procs["api"] = api.pid
        peak.start()
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        before = _pg_sizes(db)
        redis_before = int(r.info("memory")["used_memory"])
        api_cpu0 = _cpu_s(api.pid)
        latencies = []
        upload_bytes = 0
        rejected: dict[str, int] = {}
        accepted = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            for p in paths:
                data = p.read_bytes()
                t = time.perf_counter()
                resp = c.post("/v1/images", files={"file": (p.name, data, "application/octet-stream")})
                latencies.append(time.perf_counter() - t)
                if resp.status_code != 202:  # a format semtag refuses (some test files of the real set)
                    code = resp.json()["error"]["code"]
                    rejected[code] = rejected.get(code, 0) + 1
                    continue
                upload_bytes += len(data)
                accepted.append(p)
        paths = accepted
        api_cpu = _cpu_s(api.pid) - api_cpu0
        uploaded = _pg_sizes(db)
        queued = {q: int(r.llen(q)) for q in ("ocr", "inference")}
        redis_after = int(r.info("memory")["used_memory"])
        msg_bytes = [len(m) for m in r.lrange("ocr", 0, 9) + r.lrange("inference", 0, 9)]
        # now the workers: one OCR process (prefork, concurrency 1) and one inference process (solo)
        ocr = subprocess.Popen(sem + ["worker", "--queues", "ocr", "--concurrency", "1", "--loglevel", "WARNING"],
                               env=env, stdout=log, stderr=log)
        inf = subprocess.Popen(sem + ["worker", "--queues", "inference", "--pool", "solo", "--concurrency", "1",
                                      "--loglevel", "WARNING"], env=env, stdout=log, stderr=log)
        procs += [ocr, inf]
        peak.procs.update({"worker_ocr": ocr.pid, "worker_inference": inf.pid})
        t0 = time.perf_counter()
        done = _wait_done(db, len(paths), 3600)
        drain_s = time.perf_counter() - t0
        # CPU per image: the whole run of each worker, start-up included (model load, Tesseract init),
        # minus what an idle worker of the same kind spends starting (measured next, with empty queues)
        ocr_cpu, inf_cpu = _cpu_s(ocr.pid), _cpu_s(inf.pid)
        after = _pg_sizes(db)
        rows = _row_counts(db)
        for p in (ocr, inf):
            p.terminate()
            p.wait(30)
        idle = {}
        for q, extra in (("ocr", ["--concurrency", "1"]), ("inference", ["--pool", "solo", "--concurrency", "1"])):
            w = subprocess.Popen(sem + ["worker", "--queues", q, *extra, "--loglevel", "WARNING"], env=env,
                                 stdout=log, stderr=log)
            time.sleep(25)  # started, model loaded and warmed up, nothing to do
            idle[q] = _cpu_s(w.pid)
            w.terminate()
            w.wait(30)
        commit_rate = _commit_rate(db)
        engine_rss = {b: _engine_rss(model, b) for b in (8, 32)}
        blobs = tmp / "var" / "blobs"
        blob_bytes = sum(f.stat().st_size for f in blobs.rglob("*")
                         if f.is_file() and f.relative_to(blobs).parts[0] != "tmp")
        real_sizes = sorted(p.stat().st_size for p in paths if REAL in p.parents)
        lat = sorted(latencies)
        n_img = len(paths)
        delta = {t: {"bytes": after["tables"][t]["bytes"] - before["tables"].get(t, {"bytes": 0})["bytes"],
                     "rows": rows.get(t, 0)} for t in after["tables"]}
        res = {
            "measured_on": f"this machine: {_cpu()}, {os.cpu_count()} cores shared with other work; local "
                           f"PostgreSQL and Redis; {time.strftime('%Y-%m-%d')}",
            "images": n_img, "rejected_uploads": rejected, "real_images": len(real_sizes),
            "synthetic_images": n_img - len(real_sizes),
            "processed": done, "drain_seconds": drain_s,
            "upload": {"api_cpu_s_per_image": api_cpu / (n_img + sum(rejected.values())),
                       "latency_p50_ms": lat[len(lat) // 2] * 1000, "latency_p95_ms": lat[int(len(lat) * .95)] * 1000,
                       "bytes_per_image": upload_bytes / n_img},
            "worker_cpu_s_per_image": {"ocr": max(0.0, ocr_cpu - idle["ocr"]) / n_img,
                                       "inference_fp32_1_thread": max(0.0, inf_cpu - idle["inference"]) / n_img},
            "worker_idle_start_cpu_s": idle,
            "redis": {"bytes_per_queued_task": (redis_after - redis_before) / max(1, sum(queued.values())),
                      "tasks_per_image": sum(queued.values()) / n_img, "queued": queued,
                      "message_bytes_sample": msg_bytes},
            "postgres": {"bytes_per_image": (after["database_bytes"] - before["database_bytes"]) / n_img,
                         "tables": {t: {"bytes_per_image": v["bytes"] / n_img, "rows_per_image": v["rows"] / n_img}
                                    for t, v in sorted(delta.items()) if v["rows"] or v["bytes"] > 0},
                         "commits_per_image": (after["stat"]["xact_commit"] - before["stat"]["xact_commit"]) / n_img,
                         "commits_per_image_upload": (uploaded["stat"]["xact_commit"]
                                                      - before["stat"]["xact_commit"]) / n_img,
                         "rows_written_per_image": sum(after["stat"][k] - before["stat"][k]
                                                       for k in ("tup_inserted", "tup_updated")) / n_img,
                         "small_commits_per_s_2_clients": commit_rate},
            "blobs": {"bytes_per_image": blob_bytes / n_img,
                      "real_mean_bytes": sum(real_sizes) / len(real_sizes) if real_sizes else None,
                      "real_median_bytes": real_sizes[len(real_sizes) // 2] if real_sizes else None,
                      "real_max_bytes": real_sizes[-1] if real_sizes else None},
            "peak_rss_mb": peak.peak,
            "inference_engine_rss_mb_by_batch": engine_rss,
        }
        return res
    finally:
        peak.stop.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        rds.terminate()
        rds.wait(10)
        from services.db import get_engine

        get_engine(db).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- model
@dataclass
class Costs:
    """Per-image costs, each in CPU-seconds of one core (or bytes), and where each figure comes from."""

    api_s: float            # one upload through the API (measured here)
    ocr_s: float            # scale reading of a real image (bench/RESULTS.md, the slower end of seven runs)
    inference_fp32_s: float  # one image through the inference worker, one thread, FP32 (measured here)
    int8_speedup: float     # INT8 over FP32, raw engine (bench/RESULTS.md)
    decode_s: float         # decode + preprocess of a 1024×768 JPEG to 299² (bench/RESULTS.md)
    pg_bytes: float         # database growth per image (measured here: pg_database_size)
    pg_commits: float       # committed transactions per image, read-only ones too (measured: pg_stat_database)
    pg_commits_upload: float  # of which the upload's (measured before the workers started)
    pg_commit_rate: float   # small commits/s this PostgreSQL sustained, best of 1–16 clients (measured here)
    redis_bytes: float      # Redis memory per queued image, all its tasks (measured here)
    blob_bytes: float       # object-store bytes per image: the mean of the real SEM files (measured here)
    upload_latency_s: float  # one upload's latency, p50, API idle otherwise (measured here)

    @classmethod
    def load(cls, path: Path = MEASURED) -> Costs:
        m = json.loads(path.read_text())
        r = RESULTS_FIGURES
        return cls(api_s=m["upload"]["api_cpu_s_per_image"], ocr_s=r["ocr_s_per_image_high"],
                   inference_fp32_s=m["worker_cpu_s_per_image"]["inference_fp32_1_thread"],
                   int8_speedup=r["inference_int8_images_per_s_2cores"] / r["inference_fp32_images_per_s_2cores"],
                   decode_s=r["decode_ms_per_image"] / 1000, pg_bytes=m["postgres"]["bytes_per_image"],
                   pg_commits=m["postgres"]["commits_per_image"],
                   pg_commits_upload=m["postgres"].get("commits_per_image_upload",
                                                       m["postgres"]["commits_per_image"] / 3),
                   pg_commit_rate=max(m["postgres"].get("small_commits_per_s_by_clients", {}).values(),
                                      default=m["postgres"]["small_commits_per_s_2_clients"]),
                   redis_bytes=m["redis"]["bytes_per_queued_task"] * m["redis"]["tasks_per_image"],
                   blob_bytes=m["blobs"]["real_mean_bytes"] or m["blobs"]["bytes_per_image"],
                   upload_latency_s=m["upload"]["latency_p50_ms"] / 1000)


@dataclass
class Pool:
    """One kind of worker pod as deploy/k8s/base runs it, and KEDA's rule for it."""

    name: str
    cores: float
    rate: float        # images/s per pod
    min_pods: int
    max_pods: int
    target: float      # KEDA listLength: waiting tasks per pod


def _manifests() -> dict[str, dict]:
    import yaml

    base = ROOT / "deploy" / "k8s" / "base"
    docs = [d for f in base.glob("*.yaml") if f.name != "kustomization.yaml"
            for d in yaml.safe_load_all(f.read_text()) if d]
    out: dict[str, dict] = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def pools(c: Costs, int8: bool, gpu: bool) -> dict[str, Pool]:
    """Pod throughputs from the costs and the manifests' CPU limits and KEDA targets. One core runs one
    process's images one after another; a pod's ONNX Runtime threads are taken to scale linearly (optimistic:
    measure it where the pods run)."""
    m = _manifests()

    def cores(name: str) -> float:
        q = str(m["Deployment"][name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        return float(q[:-1]) / 1000 if q.endswith("m") else float(q)

    def keda(name: str) -> tuple[int, int, float]:
        s = m["ScaledObject"][name]["spec"]
        return s["minReplicaCount"], s["maxReplicaCount"], float(s["triggers"][0]["metadata"]["listLength"])

    api_hpa = m["HorizontalPodAutoscaler"]["semtag-api"]["spec"]
    out = {"api": Pool("api", cores("semtag-api"), cores("semtag-api") / c.api_s, api_hpa["minReplicas"],
                       api_hpa["maxReplicas"], float("inf")),
           "ocr": Pool("ocr", cores("semtag-worker-ocr"), cores("semtag-worker-ocr") / c.ocr_s,
                       *keda("semtag-worker-ocr"))}
    inf_s = c.inference_fp32_s / (c.int8_speedup if int8 else 1.0)
    if gpu:
        # overlays/gpu: one GPU and 8 cores per pod. The GPU's own rate is issue 15's target, not a measurement;
        # the pod reads no faster than its cores decode.
        decode_cores = 8
        rate = min(GPU_TARGET_IMAGES_PER_S, decode_cores / c.decode_s)
        out["inference"] = Pool("inference-gpu", decode_cores, rate, 1, 4, 500.0)
    else:
        n = cores("semtag-worker-inference")
        out["inference"] = Pool("inference", n, n / inf_s, *keda("semtag-worker-inference"))
    return out


@dataclass
class Scenario:
    name: str
    images: int
    arrival: str            # "burst": all offered at once; "steady": spread evenly over `seconds`
    seconds: float          # the window the images arrive in (steady)
    uploaders: int          # parallel clients, each with one upload in flight
    int8: bool = True
    gpu: bool = False
    max_pods: dict[str, int] = field(default_factory=dict)   # overrides of the manifests' maxReplicaCount
    pg_scale: float = 1.0   # PostgreSQL commit capacity × this (1 = as measured here; more is extrapolated)


@dataclass
class Outcome:
    seconds: float
    peak_pods: dict[str, int]
    pod_hours: dict[str, float]
    peak_queue: dict[str, float]
    peak_redis_bytes: float
    peak_pg_commits_per_s: float
    limited_by: dict[str, float]   # share of the busy time each stage was the binding limit


def simulate(sc: Scenario, c: Costs, pod_start_s: float = 60.0, poll_s: float = 15.0,
             cooldown_s: float = 300.0) -> Outcome:
    """A fluid queueing model, step by step. Uploads (at most `uploaders` in flight at the measured latency,
    and what the API pods' CPU allows) fill the ocr and inference lists; each pool works its list off at
    pods × rate; every step's commits (upload, scale reading, prediction, each its measured share) must fit
    PostgreSQL's commit rate, or all stages slow down together. KEDA's rule sets pods = ceil(list / target)
    between min and max, new pods arriving `pod_start_s` later and going after `cooldown_s` of lower demand;
    the API's HPA adds pods above 70% CPU. Returns when the last image is done."""
    p = pools(c, sc.int8, sc.gpu)
    for k, v in sc.max_pods.items():
        p[k].max_pods = v
    dt = 5.0 if sc.arrival == "burst" or sc.seconds < 86400 else sc.seconds / 20_000
    commit_cap = c.pg_commit_rate * sc.pg_scale
    per = {"up": c.pg_commits_upload, "ocr": (c.pg_commits - c.pg_commits_upload) / 2,
           "inference": (c.pg_commits - c.pg_commits_upload) / 2}
    total = float(sc.images)
    sent = 0.0
    done = {"ocr": 0.0, "inference": 0.0}
    q = {"ocr": 0.0, "inference": 0.0}
    pods = {k: float(v.min_pods) for k, v in p.items()}
    starting: list[tuple[float, str, float]] = []
    last_high = {k: 0.0 for k in p}
    peak_pods = {k: int(v) for k, v in pods.items()}
    pod_s = {k: 0.0 for k in p}
    peak_q = {"ocr": 0.0, "inference": 0.0}
    peak_pg = peak_redis = 0.0
    limited: dict[str, float] = {}
    t = next_poll = 0.0
    while min(done.values()) < total - 1e-6:
        if t > 400 * 86400:
            raise RuntimeError(f"{sc.name}: not finished in 400 days")
        offered = total if sc.arrival == "burst" else min(total, total * (t + dt) / sc.seconds)
        up_cap = min(pods["api"] * p["api"].rate, sc.uploaders / c.upload_latency_s) * dt
        want = {"up": min(offered - sent, up_cap),
                "ocr": min(q["ocr"], pods["ocr"] * p["ocr"].rate * dt),
                "inference": min(q["inference"], pods["inference"] * p["inference"].rate * dt)}
        commits = sum(want[k] * per[k] for k in want)
        f = min(1.0, commit_cap * dt / commits) if commits else 1.0
        got = {k: v * f for k, v in want.items()}
        if f < 1.0:
            limited["postgresql"] = limited.get("postgresql", 0) + dt
        else:
            backlog = {"ocr": q["ocr"] - got["ocr"], "inference": q["inference"] - got["inference"],
                       "uploads": offered - sent - got["up"]}
            slow = max(backlog, key=lambda k: backlog[k])
            if backlog[slow] > 1e-6:
                limited[slow] = limited.get(slow, 0) + dt
        sent += got["up"]
        for k in q:
            q[k] += got["up"] - got[k]
            done[k] += got[k]
            peak_q[k] = max(peak_q[k], q[k])
        peak_pg = max(peak_pg, sum(got[k] * per[k] for k in got) / dt)
        peak_redis = max(peak_redis, (q["ocr"] + q["inference"]) * c.redis_bytes / 2)
        if t >= next_poll:  # KEDA polls; the HPA looks at the API's CPU
            next_poll += poll_s
            for k in ("ocr", "inference"):
                n = min(p[k].max_pods, max(p[k].min_pods, math.ceil(q[k] / p[k].target)))
                have = pods[k] + sum(x for _, kk, x in starting if kk == k)
                if n > have:
                    starting.append((t + pod_start_s, k, n - have))
                if n >= pods[k]:
                    last_high[k] = t
                elif t - last_high[k] >= cooldown_s:
                    pods[k] = float(n)
            busy = got["up"] / dt / max(pods["api"] * p["api"].rate, 1e-9)
            n = min(p["api"].max_pods, max(p["api"].min_pods, math.ceil(pods["api"] * busy / 0.7)))
            if n > pods["api"] + sum(x for _, kk, x in starting if kk == "api"):
                starting.append((t + pod_start_s, "api", n - pods["api"]))
        for item in [x for x in starting if x[0] <= t]:
            starting.remove(item)
            pods[item[1]] += item[2]
        for k in pods:
            peak_pods[k] = max(peak_pods[k], int(round(pods[k])))
            pod_s[k] += pods[k] * dt
        t += dt
    busy = sum(limited.values()) or 1.0
    return Outcome(seconds=t, peak_pods=peak_pods, pod_hours={k: v / 3600 for k, v in pod_s.items()},
                   peak_queue=peak_q, peak_redis_bytes=peak_redis, peak_pg_commits_per_s=peak_pg,
                   limited_by={k: v / busy for k, v in sorted(limited.items(), key=lambda kv: -kv[1])})


def _h(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _b(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n:.0f} B"


SCENARIOS = [
    Scenario("facility, 30,000 images/year: a session of 1,000 images uploaded at once (4 uploaders)",
             1_000, "burst", 0, 4),
    Scenario("facility, 30,000 images/year, spread over 250 working days of 8 h", 30_000, "steady",
             250 * 8 * 3600, 1),
    Scenario("backfill, 150,000 images, 8 uploaders, the manifests' limits (CPU, INT8)", 150_000, "burst", 0, 8),
    Scenario("backfill, 150,000 images, 8 uploaders, PostgreSQL 10x (extrapolated)", 150_000, "burst", 0, 8,
             pg_scale=10),
    Scenario("national, 10 million images backfilled, 64 uploaders, 120 OCR / 40 inference pods (CPU)",
             10_000_000, "burst", 0, 64, max_pods={"ocr": 120, "inference": 40, "api": 20}),
    Scenario("national, 10 million, PostgreSQL 10x (extrapolated), the manifests' pod limits",
             10_000_000, "burst", 0, 64, max_pods={"api": 20}, pg_scale=10),
    Scenario("national, 10 million, PostgreSQL 10x, 120 OCR pods, 2 GPU inference pods (GPU rate assumed)",
             10_000_000, "burst", 0, 64, gpu=True, max_pods={"ocr": 120, "inference": 2, "api": 20}, pg_scale=10),
]


def model() -> None:
    c = Costs.load()
    m = json.loads(MEASURED.read_text())
    print(f"Per-image costs ({m['measured_on']}; OCR, INT8 speed-up and decode from bench/RESULTS.md):")
    print(f"  upload through the API      {c.api_s * 1000:7.1f} ms CPU")
    print(f"  scale reading (OCR)         {c.ocr_s * 1000:7.1f} ms CPU   (real images, one core)")
    int8_ms = c.inference_fp32_s / c.int8_speedup * 1000
    print(f"  inference FP32 / INT8       {c.inference_fp32_s * 1000:7.1f} / {int8_ms:.1f} ms CPU "
          "(one thread, whole worker)")
    print(f"  decode + preprocess         {c.decode_s * 1000:7.1f} ms CPU   (1024×768 JPEG)")
    print(f"  PostgreSQL                  {_b(c.pg_bytes)}/image, {c.pg_commits:.1f} commits/image; "
          f"this server: {c.pg_commit_rate:,.0f} small commits/s (best of 1-16 clients)")
    print(f"  Redis while queued          {_b(c.redis_bytes)}/image")
    print(f"  object store                {_b(c.blob_bytes)}/image (mean of the real SEM files)")
    print()
    print(f"Shared limits: PostgreSQL at {c.pg_commit_rate:,.0f} commits/s takes "
          f"{c.pg_commit_rate / c.pg_commits:,.0f} images/s; Redis holds {1e9 / c.redis_bytes:,.0f} queued images "
          f"per GB; a GPU at {GPU_TARGET_IMAGES_PER_S:,} images/s needs {GPU_TARGET_IMAGES_PER_S * c.decode_s:.0f}"
          f" cores decoding.")
    for sc in SCENARIOS:
        p = pools(c, sc.int8, sc.gpu)
        for k, v in sc.max_pods.items():
            p[k].max_pods = v
        o = simulate(sc, c)
        print()
        print(f"== {sc.name}")
        print("   pods (peak / max): " + ", ".join(
            f"{p[k].name} {o.peak_pods[k]}/{p[k].max_pods} ({p[k].rate:,.1f} img/s, {p[k].cores:g} cores each)"
            for k in ("api", "ocr", "inference")))
        print(f"   all images done after {_h(o.seconds)}; pod-hours " + ", ".join(
            f"{k} {v:,.0f}" for k, v in o.pod_hours.items()))
        print(f"   peak queues: ocr {o.peak_queue['ocr']:,.0f}, inference {o.peak_queue['inference']:,.0f} "
              f"→ Redis {_b(o.peak_redis_bytes)}; PostgreSQL peak {o.peak_pg_commits_per_s:,.0f} commits/s")
        print("   slowest stage while busy: " + ", ".join(f"{k} {v:.0%}" for k, v in o.limited_by.items()))
    print()
    print("Storage:")
    for name, n in (("facility, one year", 30_000), ("facility, five years", 150_000),
                    ("national repository", 10_000_000)):
        print(f"  {name:22s} {n:>11,} images: PostgreSQL {_b(n * c.pg_bytes):>9s}, object store "
              f"{_b(n * c.blob_bytes):>9s}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", nargs="?", default="model", choices=["measure", "measure-pg", "model", "export-model"])
    ap.add_argument("path", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=200, help="images to upload in the measure step")
    args = ap.parse_args()
    if args.step == "measure":
        res = measure(args.n)
        MEASURED.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
    elif args.step == "export-model":
        _export_model(Path(args.path))
    elif args.step == "measure-pg":
        res = json.loads(MEASURED.read_text())
        res["postgres"]["small_commits_per_s_by_clients"] = measure_pg()
        MEASURED.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["postgres"], indent=2))
    else:
        model()
