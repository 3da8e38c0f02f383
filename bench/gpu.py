"""Issue 15's GPU bench, one command on a CUDA machine (and a CPU fallback that CI runs).

    python bench/gpu.py [--model FILE.onnx] [--out results.json]

1. Model: the ONNX file given, or an untrained Inception-v3 at 299² exported here (speed only; its
   predictions mean nothing). Nothing is downloaded.
2. Raw engine, images/s at batch 1 … 256 on preprocessed inputs already in device memory (IO binding, so
   the host copy is not timed), for each precision this machine offers:
   * CUDA FP32, and CUDA FP16 (the model converted with ONNX Runtime's float16 tool, inputs kept FP32);
   * TensorRT FP16 (``trt_fp16_enable``) and TensorRT INT8 with the calibration table written by semtag's
     calibrator (``models.export.tensorrt_calibration_table``, the inputs that calibrate the QDQ model);
   * on a machine without CUDA (the fallback): CPU FP32 and the QDQ INT8 model, at small batches.
   Each point is warmed up (TensorRT builds its engine there), then timed for at least --seconds.
3. Pipeline: --images JPEGs (1024×768, synthetic SEM-like) decoded and preprocessed on a thread pool
   with one thread per CPU core, batched and run on each precision's engine, decoding overlapped with
   the model run; images/s from the first file read to the last result, its ratio to that precision's
   best raw figure, and the decode rate per core measured alone (the pipeline cannot beat
   cores × that rate). HTTP upload and PostgreSQL writes are bench/inference_pipeline.py's job.
4. Training: one epoch of random inputs (--train-images at --train-size², batch --train-batch, Inception-v3
   unless --train-arch) in FP32 and in mixed precision with XLA, images/s of each (a first, compiling
   epoch of one batch not timed) and the ratio. `--quick` trains AlexNet at 64²: XLA compiles
   Inception-v3 for minutes on a CPU.

Prints a table and writes every figure to --out (JSON). Needs onnxruntime-gpu (and TensorRT for the
TensorRT rows) and tensorflow[and-cuda] for the training rows on a GPU machine; `--cpu` forces the
fallback, and `--quick` makes it small enough for the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import export_untrained

GPU_BATCHES = (1, 8, 16, 32, 64, 128, 256)


def machine(force_cpu: bool) -> dict:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    cuda = not force_cpu and "CUDAExecutionProvider" in providers
    card = None
    if cuda and shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.strip()
        card = out.splitlines()[0] if out else None
    return {"cuda": cuda, "tensorrt": cuda and "TensorrtExecutionProvider" in providers, "card": card,
            "providers": providers, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "onnxruntime": ort.__version__}


def export_model(tmp: Path, size: int) -> tuple[Path, Path]:
    """(FP32, QDQ INT8) files of an untrained Inception-v3 exported the way `semtag export` does."""
    run = export_untrained(tmp, size, int8=True)
    return run / "model.onnx", run / "model.int8.onnx"


def input_shape(model: Path) -> tuple[str, int, int]:
    import onnx

    inp = onnx.load(str(model), load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims[1], dims[3]


def fp16_model(fp32: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    return out


def calibration_inputs(size: int, channels: int, n: int = 32) -> np.ndarray:
    """Preprocessed synthetic SEM images, the calibrator's inputs (as `semtag export` calibrates on images)."""
    from services.data.synth import make_image
    from services.images.preprocess import Preprocessing, prepare_gray

    pp = Preprocessing(input_size=size, channels=channels)
    return np.stack([prepare_gray(make_image(k % 10, 400, 320, seed=100 + k)[0], pp) for k in range(n)])


def variants(m: dict, fp32: Path, int8: Path, tmp: Path, calib: np.ndarray) -> list[tuple[str, Path, list]]:
    """(name, model file, providers with options) for each precision this machine offers."""
    if not m["cuda"]:
        return [("CPU FP32", fp32, ["CPUExecutionProvider"]), ("CPU INT8 (QDQ)", int8, ["CPUExecutionProvider"])]
    cuda = ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"})
    out = [("CUDA FP32", fp32, [cuda]), ("CUDA FP16", fp16_model(fp32, tmp / "model.fp16.onnx"), [cuda])]
    if m["tensorrt"]:
        from models.export import tensorrt_calibration_table

        table = tensorrt_calibration_table(fp32, calib, tmp / "trt")
        common = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp / "trt"),
                  "trt_max_workspace_size": 8 << 30, "trt_builder_optimization_level": 3}
        out.append(("TensorRT FP16", fp32, [("TensorrtExecutionProvider", {**common, "trt_fp16_enable": True}),
                                            cuda]))
        out.append(("TensorRT INT8", fp32, [("TensorrtExecutionProvider", {
            **common, "trt_fp16_enable": True, "trt_int8_enable": True,
            "trt_int8_calibration_table_name": table.name, "trt_int8_use_native_calibration_table": False}),
            cuda]))
    return out


def session(path: Path, providers: list):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=providers)


def time_runs(fn, seconds: float, min_reps: int = 3) -> float:
    """Seconds per call: two warm-up calls, then calls until ``seconds`` have passed (at least ``min_reps``)."""
    fn()
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps


def raw_engine(sess, name: str, batch: int, size: int, channels: int, on_gpu: bool, seconds: float) -> float:
    import onnxruntime as ort

    x = np.random.default_rng(batch).uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)
    outputs = [o.name for o in sess.get_outputs()]
    if on_gpu:
        io = sess.io_binding()
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for o in outputs:
            io.bind_output(o, "cuda")

        def call() -> None:
            sess.run_with_iobinding(io)
    else:
        def call() -> None:
            sess.run(outputs, {name: x})
    return batch / time_runs(call, seconds)


def write_jpegs(n: int, out: Path) -> list[Path]:
    import cv2

    from services.data.synth import make_image

    out.mkdir(parents=True, exist_ok=True)
    base = [make_image(k % 10, 1024, 768, seed=k)[0] for k in range(min(n, 20))]
    paths = []
    for i in range(n):
        p = out / f"img{i:05d}.jpg"
        cv2.imwrite(str(p), base[i % len(base)], [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def decoder(size: int, channels: int):
    from services.images.imaging import decode_gray
    from services.images.preprocess import Preprocessing, prepare_gray

    pp = Preprocessing(input_size=size, channels=channels)

    def decode(p: Path) -> np.ndarray:
        return prepare_gray(decode_gray(p, 100_000_000, min_side=size).gray, pp)

    return decode


def decode_rate_per_core(paths: list[Path], size: int, channels: int) -> float:
    import cv2

    decode = decoder(size, channels)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core: OpenCV's own threads would count other cores
    try:
        decode(paths[0])
        t = time.perf_counter()
        for p in paths:
            decode(p)
        return len(paths) / (time.perf_counter() - t)
    finally:
        cv2.setNumThreads(threads)


def pipeline(sess, name: str, paths: list[Path], batch: int, size: int, channels: int, cores: int) -> float:
    """Images/s from the first file read to the last result: decoding on ``cores`` threads, batch k+1 decoded
    while batch k runs."""
    decode = decoder(size, channels)
    outputs = [o.name for o in sess.get_outputs()]
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    n = 0
    with ThreadPoolExecutor(max_workers=cores) as pool:
        t0 = time.perf_counter()
        pending = [pool.submit(decode, p) for p in chunks[0]]
        for k in range(len(chunks)):
            x = np.stack([f.result() for f in pending])
            pending = [pool.submit(decode, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
            res = sess.run(outputs, {name: x})
            n += len(res[0])
        return n / (time.perf_counter() - t0)


def training(size: int, batch: int, images: int, arch: str = "inception_v3") -> dict:
    """One epoch of random inputs, FP32 vs mixed precision + XLA: images/s (first step excluded)."""
    import keras

    from models.architectures import build

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (images, size, size, 3)).astype(np.float32)
    y = (np.arange(images) % 10).astype(np.int32)
    out = {}
    for label, policy, xla in (("FP32", "float32", False), ("mixed FP16 + XLA", "mixed_float16", True)):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = build(arch, size)
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=xla)
            t = time.perf_counter()
            model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # traces, compiles: not timed
            compile_s = time.perf_counter() - t
            t = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            out[label] = {"images_per_s": images / (time.perf_counter() - t), "first_step_s": compile_s}
        except Exception as exc:  # noqa: BLE001 — e.g. XLA missing from the build: say so in the table
            out[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            keras.mixed_precision.set_global_policy("float32")
            keras.backend.clear_session()
    return out


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"machine: {m['card'] or 'no CUDA device'}; {m['cores']} CPU cores ({m['cpu']}); "
             f"onnxruntime {m['onnxruntime']}; {'GPU run' if m['cuda'] else 'CPU fallback'}", "",
             "| engine | " + " | ".join(f"batch {b}" for b in res["batches"]) + " | best raw | pipeline | ratio |",
             "|---|" + "---|" * (len(res["batches"]) + 3)]
    for v in res["engines"]:
        cells = [f"{v['raw'][str(b)]:.1f}" if str(b) in v["raw"] else "–" for b in res["batches"]]
        lines.append(f"| {v['name']} | " + " | ".join(cells) +
                     f" | {v['best_raw']:.1f} (b{v['best_batch']}) | {v['pipeline']:.1f} | {v['ratio']:.2f} |")
    d = res["decode"]
    lines += ["", f"decode + preprocess (1024×768 JPEG → {res['size']}²): {d['per_core']:.1f} images/s per core, "
              f"bound {d['bound']:.0f} images/s on {m['cores']} cores"]
    for label, t in res.get("training", {}).items():
        figure = f"{t['images_per_s']:.1f} images/s" if "images_per_s" in t else t["error"]
        lines.append(f"training {res['training_arch']} {label}: {figure}")
    if "training_speedup" in res:
        lines.append(f"mixed precision + XLA / FP32: {res['training_speedup']:.2f}×")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="an exported FP32 model (default: export an untrained one)")
    ap.add_argument("--int8-model", type=Path, help="the QDQ INT8 file beside --model (CPU fallback)")
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--batches", default=None, help="comma-separated (default 1…256 on a GPU, 1,8,32 on CPU)")
    ap.add_argument("--pipeline-batch", type=int, default=None, help="default: the best raw batch")
    ap.add_argument("--images", type=int, default=None, help="pipeline images (default 4096 GPU, 128 CPU)")
    ap.add_argument("--seconds", type=float, default=None, help="timing per raw point (default 3 GPU, 1 CPU)")
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--train-images", type=int, default=None)
    ap.add_argument("--train-arch", default="inception_v3")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="the CPU fallback even where CUDA exists")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    m = machine(a.cpu)
    gpu = m["cuda"]
    if a.quick:
        a.size, a.images, a.seconds = a.size if a.model else 75, a.images or 24, a.seconds or 0.2
        a.batches = a.batches or "1,4"
        a.train_size, a.train_batch, a.train_images, a.train_arch = 64, 4, 8, "alexnet"  # XLA on CPU: minutes
    batches = [int(b) for b in a.batches.split(",")] if a.batches else list(GPU_BATCHES if gpu else (1, 8, 32))
    seconds = a.seconds or (3.0 if gpu else 1.0)
    tmp = Path(tempfile.mkdtemp(prefix="semtag-gpu-"))
    try:
        if a.model:
            fp32, int8 = a.model, a.int8_model or a.model.with_name("model.int8.onnx")
        else:
            t = time.perf_counter()
            fp32, int8 = export_model(tmp, a.size)
            print(f"exported an untrained Inception-v3 at {a.size}² in {time.perf_counter() - t:.0f} s", flush=True)
        name, size, channels = input_shape(fp32)
        paths = write_jpegs(a.images or (4096 if gpu else 128), tmp / "jpegs")
        per_core = decode_rate_per_core(paths[:32], size, channels)
        res: dict = {"machine": m, "size": size, "batches": batches,
                     "decode": {"per_core": per_core, "bound": per_core * (m["cores"] or 1)}, "engines": []}
        for label, path, providers in variants(m, fp32, int8, tmp, calibration_inputs(size, channels)):
            if not path.is_file():
                print(f"{label}: {path} does not exist, skipped", flush=True)
                continue
            sess = session(path, providers)
            raw = {}
            for b in batches:
                raw[str(b)] = raw_engine(sess, name, b, size, channels, gpu, seconds)
                print(f"{label} batch {b}: {raw[str(b)]:.1f} images/s", flush=True)
            best_b = max(batches, key=lambda b: raw[str(b)])
            pb = a.pipeline_batch or best_b
            pipe = pipeline(sess, name, paths, pb, size, channels, m["cores"] or 1)
            best = raw[str(best_b)]
            res["engines"].append({"name": label, "raw": raw, "best_raw": best, "best_batch": best_b,
                                   "pipeline_batch": pb, "pipeline": pipe, "ratio": pipe / best})
            print(f"{label} pipeline at batch {pb}: {pipe:.1f} images/s = {pipe / best:.2f} of the best raw",
                  flush=True)
            del sess
        if not a.skip_train:
            res["training"] = training(a.train_size or (299 if gpu else 96), a.train_batch or (64 if gpu else 8),
                                       a.train_images or (4096 if gpu else 32), a.train_arch)
            res["training_arch"] = a.train_arch
            t = res["training"]
            if all("images_per_s" in v for v in t.values()):
                res["training_speedup"] = t["mixed FP16 + XLA"]["images_per_s"] / t["FP32"]["images_per_s"]
        print(table(res))
        if a.out:
            a.out.write_text(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
