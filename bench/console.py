"""The curator console's speed targets, measured in-process on embedded defaults (SQLite, one uvicorn-less
ASGI app through Starlette's TestClient, so every figure includes routing, the key or session lookup in
the database and the response; not the network).

1. A cached thumbnail (256 px JPEG): the full request, and a revalidation (If-None-Match → 304).
2. The first rendition of a 2048 × 2048 16-bit TIFF (decode, display stretch, resize, encode), on one
   core (OpenCV and the BLAS limited to one thread), the cache emptied before each run.
3. The review page with 50 cards rendered server-side (50 predictions of an active model, each card with
   its top 3 and scale reading).

Usage: python bench/console.py [REPEATS]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import io
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
from fastapi.testclient import TestClient

from api.main import create_app
from semtag.settings import Settings
from services.access import auth
from services.images import renditions
from services.tables import Image, ModelVersion, Prediction


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e3:.1f} ms, p90 {np.percentile(samples, 90) * 1e3:.1f} ms"


def _tiff16(side: int) -> bytes:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 6)
    arr = np.clip(20000 + 4000 * base / base.std() + rng.normal(0, 300, (side, side)), 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack")
    return buf.getvalue()


def main(repeats: int) -> None:
    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="semtag-bench-console-"))
    settings = Settings(data_dir=work / "var", reconcile_every_s=3600)
    app = create_app(settings)
    with TestClient(app) as http:
        rt = app.state.runtime
        with rt.session() as s:
            key = auth.create_key(s, "admin")[1]
        h = {"Authorization": f"Bearer {key}"}
        up = http.post("/v1/images", files=[("file", ("big.tif", _tiff16(2048)))], headers=h)
        iid = up.json()["items"][0]["id"]
        join = getattr(rt.queue, "join", None)
        if join:
            join(timeout=300)
        print(f"machine: {os.cpu_count()} cores; {sys.version.split()[0]}; image 2048×2048 uint16 TIFF "
              f"({len(_tiff16(2048)) / 2**20:.1f} MiB)")

        # 2. first rendition, cache emptied each time (the service function, then the request around it)
        cache = settings.data_dir / "renditions"
        for kind, size in (("preview", 1024), ("thumbnail", 256)):
            cold = []
            for _ in range(repeats):
                shutil.rmtree(cache, ignore_errors=True)
                with rt.session() as s:
                    t = time.perf_counter()
                    renditions.rendition(rt, s, iid, kind, size)
                    cold.append(time.perf_counter() - t)
            print(f"first {kind} {size} px of the 16-bit TIFF, one core: {_ms(cold)}")
        with rt.session() as s:
            path = rt.store.local_path(s.get(Image, iid).storage_key)
        decode = []
        for _ in range(repeats):
            t = time.perf_counter()
            renditions.decode_for_display(path, settings.max_pixels, 1024)
            decode.append(time.perf_counter() - t)
        print(f"  of which decoding and the display stretch (imaging.load_gray): {_ms(decode)}")

        # 1. cached thumbnail through the whole request
        r = http.get(f"/v1/images/{iid}/thumbnail", headers=h)
        etag = r.headers["etag"]
        warm, revalidate = [], []
        for _ in range(repeats * 10):
            t = time.perf_counter()
            assert http.get(f"/v1/images/{iid}/thumbnail", headers=h).status_code == 200
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert http.get(f"/v1/images/{iid}/thumbnail", headers={**h, "If-None-Match": etag}).status_code == 304
            revalidate.append(time.perf_counter() - t)
        print(f"cached thumbnail, whole request: {_ms(warm)}; revalidated (304): {_ms(revalidate)}")

        # 3. the 50-card review page
        rng = np.random.default_rng(1)
        files = [("file", (f"p{n}.png", cv2.imencode(".png", rng.integers(0, 255, (64, 64), dtype=np.uint8))[1]
                           .tobytes())) for n in range(60)]
        pids = [it["id"] for it in http.post("/v1/images", files=files, headers=h).json()["items"]]
        if join:
            join(timeout=300)
        with rt.session() as s:
            model = ModelVersion(version="bench-model", architecture="bench", file_path="-", file_sha256="0" * 64,
                                 active=True, metrics={})
            s.add(model)
            s.flush()
            for pid in pids:
                p = rng.dirichlet(np.ones(10)).tolist()
                s.add(Prediction(image_id=pid, model_id=model.id, model_version=model.version,
                                 category="particles", category_index=2, probabilities=p, confidence=max(p),
                                 margin=0.01, needs_review=True, ood_score=float(rng.uniform())))
        form = http.get("/ui/login")
        token = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
        http.post("/ui/login", data={"key": key, "login_csrf": token}, follow_redirects=False)
        page = []
        for _ in range(repeats * 2):
            t = time.perf_counter()
            r = http.get("/ui/review")
            page.append(time.perf_counter() - t)
        cards = r.text.count('<article class="card')
        assert r.status_code == 200 and cards == 50, (r.status_code, cards)
        print(f"review page, {cards} cards, server-side: {_ms(page)} ({len(r.content) / 1024:.0f} KiB of HTML)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
