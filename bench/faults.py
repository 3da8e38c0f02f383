"""Issue 12's fault suite: paced load on a full semtag deployment while one fault at a time is injected.

Each scenario starts a fresh deployment on this machine: its own PostgreSQL (initdb + pg_ctl, another
port, fsync off) and its own Redis (another port, no persistence, as the shared CI Redis), `semtag
serve` (API), workers for the ocr, inference (solo pool), batch and
maintenance queues, and beat (the reconciler every 5 s for images pending over 20 s). The shared
servers on 5432 / 6379 are never touched.

Load: N distinct synthetic images (default 300, 320×240 PNG) uploaded at a steady rate (default 5/s) by
four client threads, and a selftest job every 6 s. The client behaves as a repository would: it
retries a 503 after its Retry-After (at most 2 s here) and a dropped connection after 1 s, until it gets
its 202 or gives up after 180 s. Fifteen seconds into the load one fault is injected:

* ``kill-ocr``, ``kill-inference``, ``kill-batch``, ``kill-beat``: SIGKILL of that worker's process
  group, restarted 5 s later;
* ``redis-kill``: Redis killed for 20 s, then started empty (no persistence: every queued message is gone);
* ``redis-freeze``: Redis stopped with SIGSTOP for 20 s, then SIGCONT;
* ``postgres-stop``: PostgreSQL stopped (fast shutdown) for 20 s;
* ``api-kill``: SIGKILL of the API, restarted 5 s later.

Reported per fault: what clients saw (accepted, answers by status, connection errors, the longest
upload attempt overall and during the fault), the time from the end of the fault until every
accepted image and job was final, images and jobs lost (accepted, never final), duplicated (a second
row of one image, prediction, scale reading, or a job recorded twice), failed, and how many images
the reconciler had to queue again. Required: 0 lost, 0 duplicated, no upload blocked over 5 s while
Redis is frozen.

Usage: python bench/faults.py [--n 300] [--rate 5] [--only kill-ocr,redis-freeze] [--json FILE]
Needs TensorFlow (to export the small AlexNet the inference worker runs) or --model FILE.onnx.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port  # noqa: E402 (after ROOT)

FAULTS = ("kill-ocr", "kill-inference", "kill-batch", "kill-beat", "redis-kill", "redis-freeze", "postgres-stop",
          "api-kill")
OUTAGE_S = 20.0
RESTART_AFTER_S = 5.0
FAULT_AT_S = 15.0


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise SystemExit(f"{name} not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return str(found[-1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A PostgreSQL cluster of our own in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pg"
        self.sock = root / "pgsock"
        self.port = free_port()
        for d in (self.dir, self.sock):
            d.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(d, "postgres", "postgres")
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres",
                                     "--no-sync"]), check=True, capture_output=True)
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.dir), "-o", opts, "-l",
                                     str(self.dir / "log"), "-w", "start"]), check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w", "stop"]),
                       check=False, capture_output=True)


class Redis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        for _ in range(100):
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("redis did not start")

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: int) -> None:
        if self.proc:
            self.proc.send_signal(sig)


@dataclass
class Proc:
    args: list[str]
    log: Path
    popen: subprocess.Popen | None = None


class Deployment:
    WORKERS = {"ocr": ["worker", "--queues", "ocr", "--concurrency", "1"],
               "inference": ["worker", "--queues", "inference", "--pool", "solo", "--concurrency", "1"],
               "batch": ["worker", "--queues", "batch", "--concurrency", "1"],
               "beat": ["worker", "--queues", "maintenance", "--concurrency", "1", "--beat"]}

    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        self.pg = Postgres(root / "db")
        self.redis = Redis(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
        self.env.update({
            "SEMTAG_DATA_DIR": str(root / "var"), "SEMTAG_DATABASE_URL": self.pg.url,
            "SEMTAG_BROKER_URL": self.redis.url, "SEMTAG_BROKER_VISIBILITY_TIMEOUT_S": "30",
            "SEMTAG_RECONCILE_AFTER_S": "20", "SEMTAG_RECONCILE_EVERY_S": "5", "SEMTAG_JOB_LEASE_S": "15",
            "SEMTAG_INFERENCE_BATCH_SIZE": "8", "SEMTAG_INFERENCE_WARMUP": "false",
        })
        sem = [sys.executable, "-m", "semtag"]
        subprocess.run(sem + ["db", "upgrade"], env=self.env, check=True, capture_output=True)
        subprocess.run(sem + ["models", "import", str(model)], env=self.env, check=True, capture_output=True)
        version = json.loads(subprocess.run(sem + ["models", "list", "--json"], env=self.env, check=True,
                                            capture_output=True, text=True).stdout.splitlines()[-1])["version"]
        subprocess.run(sem + ["models", "activate", version], env=self.env, check=True, capture_output=True)
        self.key = subprocess.run(sem + ["apikey", "create", "--role", "admin"], env=self.env, check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.procs = {"api": Proc(sem + ["serve", "--port", str(self.port)], root / "api.log")}
        for name, args in self.WORKERS.items():
            self.procs[name] = Proc(sem + args + ["--loglevel", "INFO", "--name", f"{name}@%h"], root / f"{name}.log")
        for name in self.procs:
            self.start(name)
        self._wait_ready()

    def start(self, name: str) -> None:
        p = self.procs[name]
        p.popen = subprocess.Popen(p.args, env=self.env, stdout=open(p.log, "ab"), stderr=subprocess.STDOUT,
                                   start_new_session=True)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.popen and p.popen.poll() is None:
            os.killpg(p.popen.pid, signal.SIGKILL)
            p.popen.wait(10)

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200 and all(
                        b"ready." in self.procs[n].log.read_bytes() for n in self.WORKERS):
                    return
            except (httpx.HTTPError, FileNotFoundError):
                pass
            time.sleep(0.3)
        raise RuntimeError("deployment did not start; see the logs in " + str(self.root))

    def close(self) -> None:
        for name in self.procs:
            p = self.procs[name].popen
            if p and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for name in self.procs:
            p = self.procs[name].popen
            if p:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        self.redis.signal(signal.SIGCONT)
        self.redis.kill()
        from services.db import get_engine

        get_engine(self.pg.url).dispose()
        self.pg.stop()


@dataclass
class Attempt:
    started: float
    seconds: float
    outcome: str  # "202", "503", …, or "connection error"
    path: str = ""


@dataclass
class Load:
    attempts: list[Attempt] = field(default_factory=list)
    accepted_images: dict[int, str] = field(default_factory=dict)   # image id → file name
    gave_up: list[str] = field(default_factory=list)
    accepted_jobs: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _images(n: int, out: Path) -> list[Path]:
    import cv2

    from services.data.synth import make_image

    out.mkdir(parents=True)
    base = [make_image(k % 10, 320, 240, seed=k)[0] for k in range(20)]
    paths = []
    for i in range(n):
        img = base[i % len(base)].copy()
        img[0, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)  # distinct bytes: no deduplication
        p = out / f"img{i:05d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def _post(client, load: Load, path: str, **kw) -> tuple[int | None, dict | None]:
    """One request, retried as a repository would; (status, body) of the answer that ended it."""
    import httpx

    give_up = time.monotonic() + 180
    while time.monotonic() < give_up:
        t = time.monotonic()
        try:
            r = client.post(path, **{k: (v() if callable(v) else v) for k, v in kw.items()})
            outcome = str(r.status_code)
        except httpx.HTTPError as exc:
            r, outcome = None, f"connection error ({type(exc).__name__})"
        with load.lock:
            load.attempts.append(Attempt(t, time.monotonic() - t, outcome, path))
        if r is not None and r.status_code in (200, 202):
            return r.status_code, r.json()
        if r is not None and r.status_code == 503:
            time.sleep(min(2.0, float(r.headers.get("Retry-After", "1"))))
            continue
        if r is not None and r.status_code < 500:
            return r.status_code, r.json()
        time.sleep(1.0)
    return None, None


def drive(dep: Deployment, paths: list[Path], rate: float, stop_jobs: threading.Event) -> tuple[Load, threading.Thread]:
    """Start the paced load in the background; returns the shared record and the thread to join."""
    import httpx

    load = Load()
    todo: list[Path] = list(paths)
    next_at = [time.monotonic()]

    def uploader() -> None:
        with httpx.Client(base_url=dep.url, headers={"Authorization": f"Bearer {dep.key}"}, timeout=30) as c:
            while True:
                with load.lock:
                    if not todo:
                        return
                    p = todo.pop(0)
                    wait = next_at[0] - time.monotonic()
                    next_at[0] = max(next_at[0], time.monotonic()) + 1.0 / rate
                if wait > 0:
                    time.sleep(wait)
                status, body = _post(c, load, "/v1/images",
                                     files=lambda p=p: {"file": (p.name, p.read_bytes(), "image/png")})
                with load.lock:
                    if status == 202 and body:
                        load.accepted_images[int(body["items"][0]["id"])] = p.name
                    else:
                        load.gave_up.append(p.name)

    def jobs() -> None:
        with httpx.Client(base_url=dep.url, headers={"Authorization": f"Bearer {dep.key}"}, timeout=30) as c:
            while not stop_jobs.wait(6.0):
                status, body = _post(c, load, "/v1/admin/jobs",
                                     json={"kind": "selftest", "params": {"steps": 10, "step_seconds": 0.3}})
                if status == 202 and body:
                    with load.lock:
                        load.accepted_jobs.append(int(body["id"]))

    threads = [threading.Thread(target=uploader, daemon=True) for _ in range(4)]
    threads.append(threading.Thread(target=jobs, daemon=True))
    for th in threads:
        th.start()

    def join() -> None:
        for th in threads[:-1]:
            th.join()
        stop_jobs.set()
        threads[-1].join()

    joiner = threading.Thread(target=join, daemon=True)
    joiner.start()
    return load, joiner


def inject(dep: Deployment, fault: str) -> tuple[float, float]:
    """Inject ``fault``; (its start, its end) on the monotonic clock."""
    t0 = time.monotonic()
    if fault.startswith("kill-") or fault == "api-kill":
        name = "api" if fault == "api-kill" else fault.removeprefix("kill-")
        dep.kill(name)
        time.sleep(RESTART_AFTER_S)
        dep.start(name)
    elif fault == "redis-kill":
        dep.redis.kill()
        time.sleep(OUTAGE_S)
        dep.redis.start()
    elif fault == "redis-freeze":
        dep.redis.signal(signal.SIGSTOP)
        time.sleep(OUTAGE_S)
        dep.redis.signal(signal.SIGCONT)
    elif fault == "postgres-stop":
        dep.pg.stop()
        time.sleep(OUTAGE_S)
        dep.pg.start()
    else:
        raise ValueError(fault)
    return t0, time.monotonic()


def settle(dep: Deployment, load: Load, deadline_s: float = 600) -> dict:
    """Wait until every accepted image and job is final (or the deadline); the counts."""
    from sqlalchemy import func, select, text

    from services.db import session_scope
    from services.tables import Image, Job

    end = time.monotonic() + deadline_s
    final_at = None
    while time.monotonic() < end:
        try:
            with session_scope(dep.pg.url) as s:
                ids = list(load.accepted_images)
                open_images = s.scalar(select(func.count()).select_from(Image).where(
                    Image.id.in_(ids), Image.status.not_in(["done", "failed"]))) if ids else 0
                open_jobs = s.scalar(select(func.count()).select_from(Job).where(
                    Job.id.in_(load.accepted_jobs), Job.status.not_in(["succeeded", "failed", "cancelled"]))) \
                    if load.accepted_jobs else 0
            if open_images == 0 and open_jobs == 0:
                final_at = time.monotonic()
                break
        except Exception:  # noqa: BLE001  (the database may still be coming back)
            pass
        time.sleep(1)
    with session_scope(dep.pg.url) as s:
        ids = list(load.accepted_images)
        by_status = dict(s.execute(select(Image.status, func.count()).where(Image.id.in_(ids))
                                   .group_by(Image.status)).all())
        failed_reasons = [r for (r,) in s.execute(select(Image.error).where(Image.id.in_(ids),
                                                                            Image.status == "failed")).all()]
        dup = {k: int(v or 0) for k, v in {
            "images (same bytes twice)": s.scalar(text(
                "SELECT count(*) FROM (SELECT sha256 FROM images GROUP BY sha256 HAVING count(*) > 1) d")),
            "predictions": s.scalar(text(
                "SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) c FROM predictions "
                "GROUP BY image_id, model_version) d")),
            "scale readings": s.scalar(text(
                "SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) c FROM scale_readings GROUP BY image_id) d")),
        }.items()}
        rows_for_missing = s.scalar(select(func.count()).select_from(Image)) - len(ids)
        jobs = dict(s.execute(select(Job.status, func.count()).where(Job.id.in_(load.accepted_jobs))
                              .group_by(Job.status)).all()) if load.accepted_jobs else {}
        reruns = s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(load.accepted_jobs),
                                                                      Job.attempts > 1)) if load.accepted_jobs else 0
        done_images = s.scalar(select(func.count()).select_from(Image).where(
            Image.id.in_(ids), Image.status == "done", Image.scale_state == "done",
            Image.inference_state == "done")) if ids else 0
    lost = len(ids) - sum(v for k, v in by_status.items() if k in ("done", "failed"))
    lost_jobs = len(load.accepted_jobs) - sum(v for k, v in jobs.items() if k in ("succeeded", "failed", "cancelled"))
    return {"final_at": final_at, "images_by_status": by_status, "images_fully_done": done_images,
            "failed_reasons": sorted(set(failed_reasons))[:5], "duplicates": dup,
            "rows_not_answered_202": rows_for_missing, "jobs_by_status": jobs, "jobs_rerun_after_worker_death": reruns,
            "lost_images": lost, "lost_jobs": lost_jobs}


def _requeued(dep: Deployment) -> int:
    import re

    text_ = dep.procs["beat"].log.read_text(errors="replace")
    return sum(int(n) for n in re.findall(r"reconciler re-enqueued (\d+) images", text_))


def scenario(fault: str, model: Path, n: int, rate: float, keep: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"semtag-fault-{fault}-"))
    os.chmod(root, 0o755)  # the PostgreSQL server runs as its own user and must reach its folder
    try:
        paths = _images(n, root / "images")
        dep = Deployment(root / "deploy", model)
        try:
            stop_jobs = threading.Event()
            t_start = time.monotonic()
            load, joiner = drive(dep, paths, rate, stop_jobs)
            time.sleep(FAULT_AT_S)
            f0, f1 = inject(dep, fault)
            joiner.join()
            load_end = time.monotonic()
            res = settle(dep, load)
            res["requeued_by_reconciler"] = _requeued(dep)
        finally:
            dep.close()
        outcomes: dict[str, int] = {}
        for a in load.attempts:
            outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
        during = [a.seconds for a in load.attempts if f0 <= a.started <= f1]
        slowest = max(load.attempts, key=lambda a: a.seconds)
        res.update({
            "fault": fault, "images": n, "accepted": len(load.accepted_images), "gave_up": len(load.gave_up),
            "jobs_accepted": len(load.accepted_jobs), "client_saw": outcomes,
            "longest_attempt_s": round(slowest.seconds, 2),
            "longest_attempt": f"{slowest.path} → {slowest.outcome}",
            "longest_upload_during_fault_s": round(max((a.seconds for a in load.attempts
                                                        if f0 <= a.started <= f1 and a.path == "/v1/images"),
                                                       default=0.0), 2),
            "longest_attempt_during_fault_s": round(max(during), 2) if during else None,
            "load_s": round(load_end - t_start, 1), "fault_s": round(f1 - f0, 1),
            "final_after_fault_s": round(res["final_at"] - f1, 1) if res["final_at"] else None,
            "final_after_last_upload_s": round(res["final_at"] - load_end, 1) if res["final_at"] else None,
        })
        res.pop("final_at")
        return res
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"  kept {root}", flush=True)


def _model(tmp: Path) -> Path:
    from models.export import export_run
    from models.training import TrainConfig, train
    from services.data.synth import write_dataset

    data = tmp / "data"
    write_dataset(data, per_class=6, width=96, height=96, seed=0)
    run = tmp / "run"
    train(TrainConfig(data=str(data), arch="alexnet", mode="scratch", out=str(run), epochs=1, batch_size=16,
                      image_size=64, verbose=0))
    export_run(run)
    return run / "model.onnx"


def table(results: list[dict]) -> str:
    head = ("| fault | accepted | client saw | longest request (longest upload during the fault) "
            "| all final after the fault ended (after the last upload) | lost | duplicated | failed "
            "| jobs ok/accepted (re-run) "
            "| re-queued by reconciler |")
    rows = [head, "|" + "---|" * 10]
    for r in results:
        saw = ", ".join(f"{k}: {v}" for k, v in sorted(r["client_saw"].items()))
        dup = sum(r["duplicates"].values())
        failed = r["images_by_status"].get("failed", 0)
        jobs_ok = r["jobs_by_status"].get("succeeded", 0)
        during = f"{r['longest_upload_during_fault_s']} s"
        final = (f"{r['final_after_fault_s']} s ({r['final_after_last_upload_s']} s)"
                 if r["final_after_fault_s"] is not None else "NOT FINAL")
        rows.append(f"| {r['fault']} | {r['accepted']}/{r['images']} | {saw} | {r['longest_attempt_s']} s ({during}) "
                    f"| {final} | {r['lost_images']} images, {r['lost_jobs']} jobs | {dup} | {failed} | "
                    f"{jobs_ok}/{r['jobs_accepted']} ({r['jobs_rerun_after_worker_death']}) | "
                    f"{r['requeued_by_reconciler']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rate", type=float, default=5.0, help="uploads per second")
    ap.add_argument("--only", default=",".join(FAULTS))
    ap.add_argument("--model", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep each scenario's folder (logs)")
    args = ap.parse_args()
    faults = [f for f in args.only.split(",") if f]
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise SystemExit(f"unknown fault(s) {bad}; choose from {FAULTS}")
    with tempfile.TemporaryDirectory(prefix="semtag-fault-model-") as d:
        model = args.model or _model(Path(d))
        results = []
        for fault in faults:
            print(f"{fault}: {args.n} images at {args.rate}/s …", flush=True)
            r = scenario(fault, model, args.n, args.rate, args.keep)
            print("  " + json.dumps(r), flush=True)
            results.append(r)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))
    ok = all(r["lost_images"] == 0 and r["lost_jobs"] == 0 and sum(r["duplicates"].values()) == 0 for r in results)
    frozen = [r for r in results if r["fault"] == "redis-freeze"]
    if frozen and frozen[0]["longest_upload_during_fault_s"] > 5:
        ok = False
    print("\nrequired: 0 lost, 0 duplicated, no upload over 5 s while Redis is frozen:", "met" if ok else "NOT MET")


if __name__ == "__main__":
    main()
