"""Issue 4's benchmark: training images/s per architecture, and Keras vs ONNX FP32 vs INT8 inference.

1. Training throughput of each architecture at a small size (default 96², batch 16, a few steps,
   random synthetic inputs; the first step, which traces the graph, is not timed).
2. Inference at 299² (default) with a randomly initialised Inception-v3: Keras ``predict`` vs ONNX
   Runtime FP32 vs static INT8 (QDQ), images/s at one batch size, and the INT8/FP32 ratio.
3. INT8 accuracy change on a *trained* model: give ``--run runs/NAME`` (a semtag training run);
   its test split is classified with both files. Without it, no accuracy is reported (random
   weights have no accuracy to lose). Synthetic-data accuracy is not accuracy on real SEM images.

Usage: python bench/models_speed.py [--size 299] [--batch 16] [--train-size 96] [--run RUN]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def train_speed(size: int, batch: int, steps: int) -> dict[str, float]:
    import keras

    from models.architectures import build

    out = {}
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    y = np.arange(batch) % 10
    for arch in ("alexnet", "inception_v3", "inception_v4", "inception_resnet_v2"):
        m = build(arch, size)
        m.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.train_on_batch(x, y)  # trace
        t = time.perf_counter()
        for _ in range(steps):
            m.train_on_batch(x, y)
        out[arch] = steps * batch / (time.perf_counter() - t)
        print(f"train {arch:22s} {size}²  batch {batch}: {out[arch]:7.1f} images/s", flush=True)
    return out


def _untrained_run(size: int, root: Path) -> Path:
    """A run folder holding an untrained Inception-v3 (for speed only), with synthetic images for parity."""
    from models.architectures import build
    from services.data.categories import NAMES, SLUGS
    from services.data.datasets import build_manifest, scan_folder
    from services.data.synth import write_dataset
    from services.images.preprocess import Preprocessing

    data = root / "data"
    write_dataset(data, per_class=4, width=400, height=320, seed=1)
    run = root / "run"
    run.mkdir()
    m = build_manifest(scan_folder(data), data, seed=0)
    sha = m.save(run / "manifest.json")
    build("inception_v3", size).save(run / "model.keras")
    cfg = {"arch": "inception_v3", "mode": "scratch", "manifest_sha256": sha, "classes": list(SLUGS),
           "class_names": [NAMES[s] for s in SLUGS], "preprocessing": Preprocessing(input_size=size).to_dict()}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def _ort_speed(path: Path, x: np.ndarray, repeats: int) -> float:
    from services.classify.inference import Engine

    eng = Engine(path, warmup=(len(x),))
    t = time.perf_counter()
    for _ in range(repeats):
        eng.run(x, outputs=("logits",))
    return repeats * len(x) / (time.perf_counter() - t)


def inference_speed(size: int, batch: int, repeats: int, run: Path | None) -> dict:
    import keras

    from models.export import export_run

    tmp = Path(tempfile.mkdtemp(prefix="semtag-bench-"))
    try:
        rnd = _untrained_run(size, tmp)
        t = time.perf_counter()
        res = export_run(rnd, int8=True, calibration_images=16)
        print(f"export Inception-v3 {size}² (FP32 + INT8): {time.perf_counter() - t:.0f} s, parity "
              f"{res['parity']['max_abs_logit_delta']:.2g}", flush=True)
        x = np.random.default_rng(1).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
        model = keras.models.load_model(rnd / "model.keras", compile=False)
        model.predict(x, batch_size=batch, verbose=0)
        t = time.perf_counter()
        for _ in range(repeats):
            model.predict(x, batch_size=batch, verbose=0)
        k = repeats * batch / (time.perf_counter() - t)
        fp32 = _ort_speed(rnd / "model.onnx", x, repeats)
        int8 = _ort_speed(rnd / "model.int8.onnx", x, repeats)
        print(f"infer {size}² batch {batch}: Keras {k:.1f}, ONNX FP32 {fp32:.1f}, ONNX INT8 {int8:.1f} images/s; "
              f"INT8/FP32 {int8 / fp32:.2f}x, FP32/Keras {fp32 / k:.2f}x", flush=True)
        out = {"keras": k, "onnx_fp32": fp32, "onnx_int8": int8, "int8_over_fp32": int8 / fp32}
        if run is not None:
            work = tmp / "trained"
            shutil.copytree(run, work)
            for f in ("model.onnx", "model.int8.onnx"):
                (work / f).unlink(missing_ok=True)
            q = export_run(work, int8=True)["quantization"]
            print(f"INT8 accuracy change on {run} (test split, {q['eval_images']} images): "
                  f"{q['accuracy_fp32']:.4f} → {q['accuracy_int8']:.4f} ({q['accuracy_change_points']:+.2f} points)")
            out["quantization"] = q
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--train-size", type=int, default=96)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--run", type=Path, default=None, help="a trained run, for the INT8 accuracy change")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if not args.skip_train:
        train_speed(args.train_size, args.batch, args.train_steps)
    inference_speed(args.size, args.batch, args.repeats, args.run)


if __name__ == "__main__":
    main()
