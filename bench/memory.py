"""Issue 12's memory figure: peak RSS of the API and of each worker while they read the worst images
that the default limits allow.

The worst allowed images are small compressed files that decode to the most memory the limits let
through: ``SEMTAG_MAX_PIXELS`` (150 M pixels) and ``SEMTAG_MAX_DECODED_BYTES`` (192 MiB by default, or
what the environment sets: the first page as stored, width × height × samples × bytes per sample, plus the
file for a PNG). One image of each kind at the largest size both allow: 8-bit grey PNG, JPEG, TIFF (and
BMP where the upload limit allows it); 16-bit grey TIFF and PNG; a progressive JPEG (its decoder keeps
16-bit coefficients); colour JPEG; RGBA PNG and float32 TIFF; 16-bit RGB TIFF; and a 16-bit noise PNG
(incompressible: the file is as big as its pixels).

Two set-ups, each with real processes on this machine:

* full: ``semtag serve`` (API), ``semtag worker --queues ocr`` (solo pool, so the work runs in the process
  measured) and ``--queues inference`` (as deployed: the threads pool, up to two batches in flight in one
  process; ``--inference-pool solo`` for one at a time) on Redis and PostgreSQL. Each image is uploaded and
  processed alone, then three at once, then all twelve at once (which the inference worker takes as one task
  of two chunks or as two tasks, as its timer and the uploads fall).
* embedded: ``semtag serve`` alone (SQLite, tasks in-process), three images uploaded at once.

For each process: RSS when idle, and the peak (VmHWM) after all images were processed. Target: every
peak under 600 MB. The inference worker runs an untrained Inception-v3 at 299² (exported first; or
``--model FILE.onnx``).

Also, per stage (probe at upload, decode + scale reading, decode for the classifier), the peak growth
of a fresh Python process reading each image alone: where the memory goes.

Needs PostgreSQL and Redis (as the tests do). Usage: python bench/memory.py [--model FILE.onnx]
[--skip-processes | --skip-stages] [--inference-pool threads|solo]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import export_untrained, free_port

PG_ADMIN = os.environ.get("SEMTAG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("SEMTAG_TEST_REDIS", "redis://127.0.0.1:6379/13")
MAX_PIXELS = 150_000_000
MAX_DECODED = int(os.environ.get("SEMTAG_MAX_DECODED_BYTES", 192 * 1024 * 1024))
MAX_UPLOAD = 200 * 1024 * 1024


def _side(bytes_per_pixel: int) -> int:
    """The largest square image of this many bytes per pixel that both limits allow (2 MiB to spare for a
    compressed PNG's own bytes, which count towards its budget)."""
    return math.isqrt(min(MAX_PIXELS, (MAX_DECODED - (2 << 20)) // bytes_per_pixel))


def _specimen(n: int, dtype=np.uint8, top: float = 255) -> np.ndarray:
    """A flat specimen with a dark data bar and a bright scale bar: compresses to almost nothing."""
    import cv2

    a = np.zeros((n, n), dtype)
    a[: n * 9 // 10] = top / 3
    cv2.rectangle(a, (n // 20, n * 93 // 100), (n // 20 + n // 5, n * 93 // 100 + max(2, n // 200)), top, -1)
    return a


def worst_images(out: Path) -> list[Path]:
    import cv2
    import tifffile
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    def name(stem: str, bpp: int, ext: str) -> Path:
        p = out / f"{stem}-{_side(bpp) ** 2 // 10**6}M.{ext}"
        made.append(p)
        return p

    g = _specimen(_side(1))
    cv2.imwrite(str(name("grey8", 1, "png")), g, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(str(name("grey8", 1, "jpg")), g, [cv2.IMWRITE_JPEG_QUALITY, 90])
    tifffile.imwrite(name("grey8", 1, "tif"), g, compression="zlib")
    if _side(1) ** 2 < MAX_UPLOAD:  # uncompressed: the upload limit bounds it first
        cv2.imwrite(str(name("grey8", 1, "bmp")), g)
    g16 = _specimen(_side(2), np.uint16, 60000)
    tifffile.imwrite(name("grey16", 2, "tif"), g16, compression="zlib")
    cv2.imwrite(str(name("grey16", 2, "png")), g16)
    Image.fromarray(_specimen(_side(2))).save(name("progressive", 2, "jpg"), progressive=True, quality=90)
    g = _specimen(_side(3))
    cv2.imwrite(str(name("rgb8", 3, "jpg")), cv2.merge([g, g, g]))
    g = _specimen(_side(4))
    rgba = cv2.merge([g, g, g, np.full_like(g, 255)])
    cv2.imwrite(str(name("rgba8", 4, "png")), rgba, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    tifffile.imwrite(name("float32", 4, "tif"), _specimen(_side(4), np.float32, 1.0), compression="zlib")
    g16 = _specimen(_side(6), np.uint16, 60000)
    tifffile.imwrite(name("rgb16", 6, "tif"), np.dstack([g16, g16, g16]), compression="zlib", photometric="rgb")
    n = math.isqrt(min(MAX_UPLOAD - (1 << 20), MAX_DECODED - (2 << 20)) // 4)  # file ≈ pixels: both count
    noise = np.random.default_rng(0).integers(0, 65535, (n, n), dtype=np.uint16)
    p = out / f"noise16-{n * n // 10**6}M.png"
    cv2.imwrite(str(p), noise, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    made.append(p)
    return made


# ---- per stage, in a fresh process ----------------------------------------------------------------

_STAGE = r"""
import sys
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
import os
from services.images import imaging, preprocess
from services.scale import reader
imaging.configure(int(os.environ.get("SEMTAG_MAX_DECODED_BYTES", imaging.DEFAULT_MAX_DECODED_BYTES)))
stage, path = sys.argv[1], sys.argv[2]
base = hwm()
if stage == "probe":
    imaging.probe(path, 150_000_000)
elif stage == "scale":
    reader.read_scale(path, max_pixels=150_000_000)
else:
    preprocess.prepare(path, preprocess.Preprocessing(), 150_000_000)
print(base, hwm())
"""


def stages(paths: list[Path]) -> list[dict]:
    rows = []
    root = str(Path(__file__).resolve().parents[1])
    for p in paths:
        row: dict = {"image": p.name, "file_mb": p.stat().st_size / 2**20}
        for stage in ("probe", "scale", "classify"):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", _STAGE, stage, str(p)], capture_output=True, text=True,
                               cwd=root, timeout=900)
            if r.returncode != 0:
                row[stage] = f"error: {r.stderr.strip().splitlines()[-1][:80]}"
                continue
            base, peak = (float(v) for v in r.stdout.split())
            row[stage] = peak - base
            row[stage + "_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"  {p.name:22s} {row['file_mb']:7.1f} MB file: probe +{row['probe']:.0f} MB, "
              f"scale +{row['scale']:.0f} MB, classifier +{row['classify']:.0f} MB", flush=True)
    return rows


# ---- real processes -------------------------------------------------------------------------------

def _status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _model(tmp: Path) -> Path:
    return export_untrained(tmp, calibration_images=4) / "model.onnx"


class Service:
    """A set of semtag processes sharing one database and data dir."""

    def __init__(self, workdir: Path, env_extra: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
        self.env.update({"SEMTAG_DATA_DIR": str(workdir / "var"), "SEMTAG_MAX_DECODED_BYTES": str(MAX_DECODED),
                         **env_extra})
        self.sem = [sys.executable, "-m", "semtag"]
        self.procs: dict[str, subprocess.Popen] = {}
        self.log = open(workdir / "services.log", "ab")

    def run(self, *args: str) -> str:
        return subprocess.run(self.sem + list(args), env=self.env, check=True, capture_output=True,
                              text=True).stdout

    def start(self, name: str, *args: str) -> None:
        self.procs[name] = subprocess.Popen(self.sem + list(args), env=self.env, stdout=self.log, stderr=self.log)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def _setup(svc: Service, model: Path) -> str:
    svc.run("db", "upgrade")
    import json

    svc.run("models", "import", str(model))
    version = json.loads(svc.run("models", "list", "--json").splitlines()[-1])["version"]
    svc.run("models", "activate", version)
    return svc.run("apikey", "create", "--role", "admin").strip().splitlines()[-1]


def _drive(url: str, key: str, paths: list[Path], together: int) -> list[str]:
    """Upload ``together`` images at a time and wait until each group is final; the statuses."""
    import httpx

    statuses = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
        for _ in range(600):
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        for i in range(0, len(paths), together):
            group = paths[i:i + together]
            ids: list[int] = []

            def send(p: Path, ids: list[int] = ids) -> None:
                with open(p, "rb") as fh:
                    r = c.post("/v1/images", files={"file": (p.name, fh, "application/octet-stream")})
                r.raise_for_status()
                ids.append(r.json()["items"][0]["id"])  # list.append is atomic

            threads = [threading.Thread(target=send, args=(p,)) for p in group]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                got = [c.get(f"/v1/images/{j}").json()["status"] for j in ids]
                if all(s in ("done", "failed") for s in got):
                    statuses += got
                    break
                time.sleep(1)
            else:
                raise RuntimeError(f"images {ids} not final after 900 s")
    return statuses


def processes(paths: list[Path], model: Path, tmp: Path, pool: str = "threads") -> dict[str, dict[str, float]]:
    import psycopg
    import redis

    out: dict[str, dict[str, float]] = {}
    # full mode
    name = f"semtag_mem_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    redis.Redis.from_url(REDIS).flushdb()
    (tmp / "full").mkdir()
    svc = Service(tmp / "full", {"SEMTAG_DATABASE_URL": db, "SEMTAG_BROKER_URL": REDIS})
    try:
        key = _setup(svc, model)
        port = free_port()
        svc.start("API", "serve", "--port", str(port))
        svc.start("OCR worker", "worker", "--queues", "ocr", "--pool", "solo", "--loglevel", "WARNING")
        svc.start("inference worker", "worker", "--queues", "inference", "--pool", pool, "--loglevel", "WARNING")
        time.sleep(20)  # started, model loaded and warmed up
        idle = {n: _status(p.pid, "VmRSS") for n, p in svc.procs.items()}
        statuses = _drive(f"http://127.0.0.1:{port}", key, paths, 1)
        statuses += _drive(f"http://127.0.0.1:{port}", key, [p.with_name("b-" + p.name) for p in paths[:3]], 3)
        statuses += _drive(f"http://127.0.0.1:{port}", key, [p.with_name("d-" + p.name) for p in paths], len(paths))
        for n, p in svc.procs.items():
            out[n] = {"idle_mb": idle[n], "peak_mb": _status(p.pid, "VmHWM")}
        print(f"  full mode: {statuses.count('done')} done, {statuses.count('failed')} failed", flush=True)
    finally:
        svc.stop()
        from services.db import get_engine

        get_engine(db).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # embedded mode
    (tmp / "embedded").mkdir()
    svc = Service(tmp / "embedded", {})
    try:
        key = _setup(svc, model)
        port = free_port()
        svc.start("embedded server", "serve", "--port", str(port))
        time.sleep(10)
        idle = {n: _status(p.pid, "VmRSS") for n, p in svc.procs.items()}
        statuses = _drive(f"http://127.0.0.1:{port}", key, [p.with_name("c-" + p.name) for p in paths[:6]], 3)
        for n, p in svc.procs.items():
            out[n] = {"idle_mb": idle[n], "peak_mb": _status(p.pid, "VmHWM")}
        print(f"  embedded: {statuses.count('done')} done, {statuses.count('failed')} failed", flush=True)
    finally:
        svc.stop()
    return out


def _variants(paths: list[Path]) -> None:
    """Copies with other bytes (a changed first pixel row would change the decode: append a byte instead —
    every accepted format ignores trailing data), so the repeated uploads are new images, not duplicates."""
    for prefix in ("b-", "c-", "d-"):
        for p in paths:
            q = p.with_name(prefix + p.name)
            q.write_bytes(p.read_bytes() + prefix.encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--skip-processes", action="store_true", help="only the per-stage figures")
    ap.add_argument("--skip-stages", action="store_true", help="only the processes")
    ap.add_argument("--inference-pool", default="threads", choices=["threads", "solo"],
                    help="the inference worker's pool: threads (two batches in flight, as deployed) or solo")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="semtag-mem-") as d:
        tmp = Path(d)
        print(f"worst allowed images ({MAX_PIXELS / 1e6:.0f} M pixels, {MAX_DECODED / 2**20:.0f} MiB decoded):",
              flush=True)
        paths = worst_images(tmp / "images")
        if not args.skip_stages:
            print("per stage, fresh process, growth of peak RSS:", flush=True)
            stages(paths)
        if args.skip_processes:
            return
        model = args.model or _model(tmp / "model")
        _variants(paths)
        print("processes:", flush=True)
        res = processes(paths, model, tmp, args.inference_pool)
        print(f"\n{'process':18s} {'idle MB':>8s} {'peak MB':>8s}  target < 600")
        for n, r in res.items():
            print(f"{n:18s} {r['idle_mb']:8.0f} {r['peak_mb']:8.0f}  {'ok' if r['peak_mb'] < 600 else 'OVER'}")


if __name__ == "__main__":
    main()
