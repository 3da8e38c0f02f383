"""Issue 13's backfill benchmark: N synthetic 1024×768 images end to end on this machine, against the bound
their stages' measured costs allow.

1. Stage costs (the bound): on a sample of the same archive, in this process, one thread each (ONNX Runtime
   with one intra-op thread), on a database and Redis database of their own: CPU seconds per image of
   - ingest: what `semtag ingest` does per file in local mode (the client's hash, then the ingest service:
     copy into the blob store, probe, sha256, row, record link, two messages to Redis);
   - scale: the pipeline's scale step (decode, data bar, OCR, reading stored);
   - classify: the pipeline's inference step in batches of --batch (decode, the INT8 model, predictions stored).
   The bound is cores / (sum of the three): what the stages' own work allows if every core did nothing else.
2. End to end: a fresh PostgreSQL database and Redis database, `semtag worker --queues ocr` and
   `semtag worker --queues inference` as real processes, then `semtag ingest ARCHIVE` (local mode, with the
   broker: files straight into the database and blob store, steps to the workers). Throughput is N over the
   time from the start of the ingest to the last image done.
3. Where the time goes: the cores' time over the run (cores × wall) split into the stages' own work (N × the
   costs above: ratio = this share), the rest of our processes' CPU (Celery, PostgreSQL backends of our
   database, what threads cost), other users of the machine (from /proc/stat), and idle cores.

Needs PostgreSQL (a database of its own is made and dropped) and the redis-server program (it starts its own
on a free port: the shared Redis carries other users' queues). Without --model an untrained Inception-v3 at
299² is exported with --int8 first (speed only; its predictions mean nothing).

Usage: python bench/backfill.py [--n 3000] [--model FILE.int8.onnx] [--json out.json]
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
from benchlib import TICK, export_untrained, free_port, proc_cpu, process_tree

PG_ADMIN = os.environ.get("SEMTAG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CORES = os.cpu_count() or 1


# ---- helpers -----------------------------------------------------------------------------------------

def _model(tmp: Path) -> Path:
    return export_untrained(tmp, int8=True) / "model.int8.onnx"


def _images(n: int, out: Path, bases: int = 60) -> list[Path]:
    """n JPEGs (quality 92, as `semtag synth --format jpg`) from ``bases`` synthetic images of the ten
    categories and four data-bar styles; each carries its number as 16 black or white 8×8 blocks in its top
    left corner (blocks survive JPEG, single pixels may not), so no two files share bytes."""
    import cv2

    from services.data.synth import make_image

    out.mkdir(parents=True, exist_ok=True)
    base = [make_image(k % 10, 1024, 768, seed=1000 + k)[0] for k in range(bases)]
    paths = []
    for i in range(n):
        img = base[i % bases].copy()
        for bit in range(16):
            img[:8, 8 * bit:8 * bit + 8] = 255 if (i >> bit) & 1 else 0
        folder = out / f"rec-{i // 100:03d}"  # 100 images per record folder
        folder.mkdir(exist_ok=True)
        p = folder / f"img{i:05d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(p)
    return paths


def _database() -> tuple[str, str]:
    import psycopg

    name = f"semtag_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def _drop(name: str, url: str) -> None:
    import psycopg

    from services.db import get_engine

    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _machine() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICK, (idle + iowait) / TICK


class OwnRedis:
    """A Redis server of the bench's own on a free port: the shared one (6379) carries other users' queues,
    and its CPU would not be ours alone."""

    def __init__(self, workdir: Path) -> None:
        import redis

        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class CpuMeter(threading.Thread):
    """Keeps the last CPU reading of every process in named groups (process trees, PostgreSQL backends of one
    database), so that processes that exit before the end (the ingest's connections) still count."""

    def __init__(self, db_name: str) -> None:
        super().__init__(daemon=True)
        self.db_name = db_name
        self.trees: dict[str, int] = {}
        self.seen: dict[str, dict[int, float]] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _pg_backends(self) -> list[int]:
        import psycopg

        try:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                                   (self.db_name,))]
        except psycopg.Error:
            return []

    def sample(self) -> None:
        groups = {name: process_tree(pid) for name, pid in list(self.trees.items())}
        groups["postgres"] = self._pg_backends()
        with self.lock:
            for name, pids in groups.items():
                seen = self.seen.setdefault(name, {})
                for p in pids:
                    seen[p] = max(seen.get(p, 0.0), proc_cpu(p))

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def totals(self) -> dict[str, float]:
        with self.lock:
            return {name: sum(v.values()) for name, v in self.seen.items()}

    def main_process(self) -> dict[str, float]:
        """The CPU of each tree's first process alone (a Celery worker's parent: the broker, the pool)."""
        with self.lock:
            return {name: self.seen.get(name, {}).get(pid, 0.0) for name, pid in self.trees.items()}


# ---- 1. the stages' single-core costs -----------------------------------------------------------------

def stage_costs(model: Path, sample: list[Path], workdir: Path, batch: int, broker: str) -> dict:
    from semtag.settings import Settings
    from services import migrate
    from services.classify import registry
    from services.images import pipeline
    from services.images.backfill import ArchiveItem, LocalTarget
    from services.runtime import Runtime
    from services.storage import sha256_file
    from workers.queues import CeleryQueue

    name, db = _database()
    try:
        s = Settings(data_dir=workdir / "calibration", database_url=db, broker_url=broker, inference_threads=1,
                     inference_batch_size=batch)
        migrate.upgrade(db)
        rt = Runtime(s, queue=CeleryQueue(broker))
        with rt.session() as session:
            version = registry.register(session, model, s.data_dir / "models").version
            registry.activate(session, version)
        target = LocalTarget(rt)
        warm, timed = sample[:batch], sample[batch:]

        def ingest(paths: list[Path]) -> tuple[list[int], float, float]:
            ids, cpu, wall = [], 0.0, 0.0
            for p in paths:
                c, w = time.process_time(), time.perf_counter()
                item = ArchiveItem(p, p.parent.name)
                item.sha256 = sha256_file(p)  # the client's hash, before it asks
                ids.append(target.send(item).image_id)
                cpu, wall = cpu + time.process_time() - c, wall + time.perf_counter() - w
            return ids, cpu, wall

        def scale(ids: list[int]) -> tuple[float, float]:
            c, w = time.process_time(), time.perf_counter()
            for i in ids:
                pipeline.read_scale(rt, i)
            return time.process_time() - c, time.perf_counter() - w

        def classify(ids: list[int]) -> tuple[float, float]:
            c, w = time.process_time(), time.perf_counter()
            for k in range(0, len(ids), batch):
                pipeline.classify_batch(rt, ids[k:k + batch])
            return time.process_time() - c, time.perf_counter() - w

        wids, _, _ = ingest(warm)  # connections, Tesseract and the engine loaded and warmed up first
        scale(wids)
        classify(wids)
        ids, ingest_cpu, ingest_wall = ingest(timed)
        scale_cpu, scale_wall = scale(ids)
        classify_cpu, classify_wall = classify(ids)
        n = len(ids)
        with rt.session() as session:
            from sqlalchemy import func, select

            from services.tables import Image

            done = session.scalar(select(func.count()).select_from(Image).where(Image.status == "done"))
        assert done == n + len(wids), f"calibration: {done} of {n + len(wids)} images done"
        return {"images": n, "batch": batch,
                "cpu_s_per_image": {"ingest": ingest_cpu / n, "scale": scale_cpu / n, "classify": classify_cpu / n},
                "wall_s_per_image": {"ingest": ingest_wall / n, "scale": scale_wall / n,
                                     "classify": classify_wall / n}}
    finally:
        _drop(name, db)


# ---- 2. end to end -------------------------------------------------------------------------------------

def end_to_end(model: Path, archive: Path, n: int, workdir: Path, args: argparse.Namespace, redis_server: OwnRedis,
               ) -> dict:
    from sqlalchemy import func, select

    from services.db import session_scope
    from services.tables import Image

    name, db = _database()
    broker = redis_server.url(0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
    env.update({"SEMTAG_DATA_DIR": str(workdir / "e2e"), "SEMTAG_DATABASE_URL": db, "SEMTAG_BROKER_URL": broker,
                "SEMTAG_INFERENCE_BATCH_SIZE": str(args.batch), "SEMTAG_INFERENCE_BATCH_WAIT_MS": "50"})
    if args.inference_threads:
        env["SEMTAG_INFERENCE_THREADS"] = str(args.inference_threads)
    times = workdir / "stage-times"
    times.mkdir(parents=True, exist_ok=True)
    probe_env = {**env, "PYTHONPATH": str(Path(__file__).with_name("stage_timer")),
                 "SEMTAG_BENCH_STAGE_TIMES": str(times)}
    sem = [sys.executable, "-m", "semtag"]
    procs: dict[str, subprocess.Popen] = {}
    meter = CpuMeter(name)
    log = open(workdir / "services.log", "ab")
    try:
        subprocess.run(sem + ["db", "upgrade"], env=env, check=True, capture_output=True)
        subprocess.run(sem + ["models", "import", str(model)], env=env, check=True, capture_output=True)
        with session_scope(db) as s:
            from services.classify import registry

            version = registry.list_models(s)[0].version
        subprocess.run(sem + ["models", "activate", version], env=env, check=True, capture_output=True)
        procs["ocr worker"] = subprocess.Popen(
            sem + ["worker", "--queues", "ocr", "--concurrency", str(args.ocr_concurrency), "--loglevel", "INFO",
                   "--name", "bench-ocr@%h"], env=probe_env, stdout=log, stderr=log)
        procs["inference worker"] = subprocess.Popen(
            sem + ["worker", "--queues", "inference", "--pool", "solo", "--loglevel", "INFO",
                   "--name", "bench-inference@%h"], env=probe_env, stdout=log, stderr=log)
        _wait_workers({"bench-ocr", "bench-inference"}, workdir / "services.log")
        for label, p in procs.items():
            meter.trees[label] = p.pid
        redis0 = proc_cpu(redis_server.proc.pid)
        meter.sample()
        base = meter.totals()
        base_main = meter.main_process()
        busy0, idle0 = _machine()
        t0 = time.time()
        procs["ingest"] = subprocess.Popen(sem + ["ingest", str(archive), "--record-id-from", "dirname",
                                                  "--workers", str(args.ingest_workers)],
                                           env=probe_env, stdout=log, stderr=log)
        meter.trees["ingest"] = procs["ingest"].pid
        meter.start()
        ingest_s = None
        deadline = t0 + args.timeout
        while True:
            time.sleep(0.5)
            if ingest_s is None and procs["ingest"].poll() is not None:
                ingest_s = time.time() - t0
            with session_scope(db) as s:
                finished = s.scalar(select(func.count()).select_from(Image)
                                    .where(Image.status.in_(["done", "failed"]))) or 0
                stored = s.scalar(select(func.count()).select_from(Image)) or 0
            if (ingest_s is not None and finished >= stored) or time.time() > deadline:
                break
        meter.stop.set()
        meter.join()
        meter.sample()
        busy1, idle1 = _machine()
        redis1 = proc_cpu(redis_server.proc.pid)
        with session_scope(db) as s:
            last = s.scalar(select(func.max(Image.updated_at)))
            failed = s.scalar(select(func.count()).select_from(Image).where(Image.status == "failed"))
            stored = s.scalar(select(func.count()).select_from(Image))
        wall = last.timestamp() - t0
        totals = meter.totals()
        main_cpu = {k: v - base_main.get(k, 0.0) for k, v in meter.main_process().items()}
        cpu = {k: totals.get(k, 0.0) - base.get(k, 0.0) for k in ("ingest", "ocr worker", "inference worker",
                                                                  "postgres")}
        inside: dict[str, float] = {}
        for f in times.glob("[0-9]*.json"):
            for k, (cpu_s, _calls) in json.loads(f.read_text()).items():
                key = "ingest" if k.startswith("ingest") else k
                inside[key] = inside.get(key, 0.0) + cpu_s
        return {"images": n, "stored": stored, "inside_stage_cpu_s": inside, "finished": finished, "failed": failed,
                "wall_s": wall,
                "ingest_s": ingest_s, "images_per_s": finished / wall,
                "cpu_s": cpu, "main_process_cpu_s": main_cpu, "redis_cpu_s": redis1 - redis0,
                "machine": {"busy_s": busy1 - busy0, "idle_s": idle1 - idle0, "span_s": time.time() - t0},
                "settings": {"ocr_concurrency": args.ocr_concurrency, "inference_threads": args.inference_threads,
                             "ingest_workers": args.ingest_workers, "batch": args.batch}}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        _drop(name, db)


def _wait_workers(names: set[str], logfile: Path, limit_s: float = 180) -> None:
    """Until every worker logged that it is ready (the inference worker after loading and warming its model)."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        lines = logfile.read_text(errors="replace").splitlines()
        ready = {n for n in names if any(f"{n}@" in ln and "ready." in ln for ln in lines)}
        if ready == names and any("inference engine warmed up" in ln for ln in lines):
            return
        time.sleep(1)
    raise RuntimeError(f"workers {names} did not come up: {logfile.read_text(errors='replace')[-2000:]}")


# ---- 3. the report --------------------------------------------------------------------------------------

def report(costs: dict, e2e: dict) -> dict:
    c = costs["cpu_s_per_image"]
    per_image = sum(c.values())
    bound = CORES / per_image
    n, wall = e2e["finished"], e2e["wall_s"]
    capacity = CORES * wall
    stage_work = {k: n * v for k, v in c.items()}
    ours = sum(e2e["cpu_s"].values()) + e2e["redis_cpu_s"]
    busy = e2e["machine"]["busy_s"] * wall / e2e["machine"]["span_s"]
    others = max(0.0, busy - ours)
    idle = max(0.0, capacity - busy)
    split = {**{f"{k} (stage work)": v for k, v in stage_work.items()},
             "our processes beyond the stage work (Redis aside)": ours - e2e["redis_cpu_s"] - sum(stage_work.values()),
             "Redis server (the bench's own)": e2e["redis_cpu_s"],
             "other users of the machine": others, "idle": idle}
    out = {"bound_images_per_s": bound, "images_per_s": e2e["images_per_s"], "ratio": e2e["images_per_s"] / bound,
           "core_seconds": capacity, "where_the_time_goes": split,
           "share": {k: v / capacity for k, v in split.items()},
           "our_cpu_by_process_s": e2e["cpu_s"],
           "ratio_to_the_cpu_we_got": e2e["images_per_s"] / (bound * (capacity - others) / capacity)}
    print(f"\nstage costs, one thread, CPU s per image (sample of {costs['images']}): "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in c.items()) + f"; sum {per_image * 1000:.1f} ms")
    print(f"bound with {CORES} cores: {bound:.2f} images/s")
    print(f"end to end: {n} images in {wall:.1f} s = {e2e['images_per_s']:.2f} images/s "
          f"(ingest finished after {e2e['ingest_s']:.1f} s; {e2e['failed']} failed)")
    print(f"ratio to the bound: {out['ratio']:.3f}")
    print(f"where the {capacity:.0f} core-seconds went:")
    for k, v in split.items():
        print(f"  {k:45s} {v:8.1f} s  {v / capacity:6.1%}")
    print("our processes' CPU: " + ", ".join(f"{k} {v:.1f} s" for k, v in e2e["cpu_s"].items())
          + "; of which the workers' parent processes: " + ", ".join(
              f"{k} {v:.1f} s" for k, v in e2e["main_process_cpu_s"].items() if k != "ingest"))
    print(f"ratio to the bound scaled to the CPU other users left us: {out['ratio_to_the_cpu_we_got']:.3f}")
    proc = {"ingest": e2e["cpu_s"]["ingest"], "scale": e2e["cpu_s"]["ocr worker"],
            "classify": e2e["cpu_s"]["inference worker"]}
    per = {}
    print("per image, ms of CPU: calibration (alone) / inside the stage's function in the run / its whole process:")
    for k in ("ingest", "scale", "classify"):
        inside = e2e["inside_stage_cpu_s"].get(k, float("nan")) / n
        per[k] = {"calibration": c[k], "inside_in_run": inside, "process_in_run": proc[k] / n}
        print(f"  {k:9s} {c[k] * 1000:6.1f} / {inside * 1000:6.1f} / {proc[k] / n * 1000:6.1f}")
    print(f"  postgres backends of our database: {e2e['cpu_s']['postgres'] / n * 1000:.1f} ms per image")
    out["per_image_ms_view"] = per
    return out


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cleanup below runs (workers, database, Redis)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--sample", type=int, default=64, help="images timed per stage for the costs")
    ap.add_argument("--model", type=Path, default=None, help="an exported INT8 .onnx (default: export one)")
    ap.add_argument("--batch", type=int, default=8, help="inference batch (SEMTAG_INFERENCE_BATCH_SIZE)")
    ap.add_argument("--ocr-concurrency", type=int, default=CORES)
    ap.add_argument("--inference-threads", type=int, default=None, help="default: the worker's own (its cores)")
    ap.add_argument("--ingest-workers", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the archive and model in this folder")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="semtag-backfill-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model or (tmp / "run" / "model.int8.onnx" if (tmp / "run" / "model.int8.onnx").exists()
                               else _model(tmp))
        archive = tmp / "archive"
        paths = sorted(archive.rglob("*.jpg")) if archive.exists() else []
        if len(paths) != args.n:
            shutil.rmtree(archive, ignore_errors=True)
            t = time.perf_counter()
            paths = _images(args.n, archive)
            print(f"archive: {args.n} images in {time.perf_counter() - t:.0f} s", flush=True)
        sample_dir = tmp / "sample"
        shutil.rmtree(sample_dir, ignore_errors=True)
        sample = _images(args.sample + args.batch, sample_dir)  # the same kind of files, not the archive's
        for p in tmp.glob("work-*"):
            shutil.rmtree(p, ignore_errors=True)
        work = tmp / f"work-{uuid.uuid4().hex[:6]}"
        redis_server = OwnRedis(work / "redis")
        try:
            costs = stage_costs(model, sample, work, args.batch, redis_server.url(1))
            print("stage costs: " + json.dumps(costs), flush=True)
            e2e = end_to_end(model, archive, args.n, work, args, redis_server)
        finally:
            redis_server.close()
        out = {"measured_on": _where(), "costs": costs, "end_to_end": e2e, **report(costs, e2e)}
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _where() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{model}, {CORES} cores, load average {' '.join(load)} at the end, {time.strftime('%Y-%m-%d %H:%M')}"


if __name__ == "__main__":
    main()
