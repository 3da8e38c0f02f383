"""Export a training run to ONNX (tf2onnx), with parity checked against Keras, and optionally INT8.

The exported graph takes the preprocessed image batch ``input`` (dynamic batch axis) and gives
``logits``, ``features`` (the pooled penultimate layer, for clustering) and ``probabilities``
(softmax of logits / T, the temperature fitted on validation). The file's ``semtag`` metadata
carries the preprocessing, class names, temperature and output names, so a server reading it
cannot diverge from training.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.classify.registry import META_KEY
from services.data.datasets import Manifest
from services.errors import BadInput, SemtagError
from services.images.preprocess import Preprocessing

PARITY_TOLERANCE = 1e-4
OUTPUTS = {"logits": "logits", "features": "features", "probabilities": "probabilities"}


class ParityError(SemtagError):
    code = "parity_failed"


def _run_files(run: Path) -> tuple[dict, Manifest, dict]:
    for name in ("config.json", "manifest.json", "model.keras"):
        if not (run / name).is_file():
            raise BadInput(f"{run} is not a finished training run (no {name})", "not_a_run")
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    return config, Manifest.load(run / "manifest.json"), report


def _sample_paths(manifest: Manifest, n: int, splits: tuple[str, ...]) -> list[str]:
    for split in splits:
        items = manifest.split(split)
        if items:
            return [str(manifest.resolve(i)) for i in items[:n]]
    return []


def serving_model(model, temperature: float):  # noqa: ANN001, ANN201
    """The trained classifier rewired to output logits, features and calibrated probabilities."""
    import keras
    from keras import layers

    backbone = model.get_layer("backbone")
    inp = keras.Input(model.input_shape[1:], name="input")
    feats = backbone(inp, training=False)
    trained = model.get_layer("logits")
    head = layers.Dense(trained.units, name="classifier")  # a copy: the name "logits" is the output's
    logits = head(feats)
    head.set_weights(trained.get_weights())
    logits = layers.Activation("linear", dtype="float32", name=OUTPUTS["logits"])(logits)
    features = layers.Activation("linear", dtype="float32", name=OUTPUTS["features"])(feats)
    scaled = layers.Rescaling(1.0 / float(temperature), name="temperature")(logits)
    probs = layers.Softmax(dtype="float32", name=OUTPUTS["probabilities"])(scaled)
    return keras.Model(inp, [logits, features, probs], name="semtag_serving")


def _session(model_bytes_or_path: bytes | str):  # noqa: ANN202
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def _accuracy(session, x: np.ndarray, y: np.ndarray, batch: int = 32) -> float:  # noqa: ANN001
    preds = []
    for i in range(0, len(x), batch):
        preds.append(session.run([OUTPUTS["logits"]], {"input": x[i:i + batch]})[0].argmax(1))
    return float((np.concatenate(preds) == y).mean())


def _write(model_proto, path: Path, meta: dict) -> None:  # noqa: ANN001
    import onnx

    del model_proto.metadata_props[:]
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    tmp = path.with_suffix(".part")
    onnx.save(model_proto, str(tmp))
    tmp.replace(path)


def calibration_reader(calibration: np.ndarray, input_name: str = "input"):  # noqa: ANN201
    """semtag's calibrator: ONNX Runtime's data reader over preprocessed inputs, one image per step (the same
    inputs serve the QDQ model and TensorRT's calibration table)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{input_name: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    return Reader()


def tensorrt_calibration_table(fp32_path: Path, calibration: np.ndarray, out_dir: Path) -> Path:
    """The INT8 calibration table TensorRT reads (``trt_int8_calibration_table_name``) for the FP32 model,
    from semtag's calibrator (min/max of every tensor over ``calibration``). Returns the flatbuffers file."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.quant_utils import write_calibration_table

    out_dir.mkdir(parents=True, exist_ok=True)
    cal = create_calibrator(str(fp32_path), None, augmented_model_path=str(out_dir / "augmented.onnx"),
                            calibrate_method=CalibrationMethod.MinMax)
    cal.collect_data(calibration_reader(calibration))
    data = cal.compute_data()
    write_calibration_table({k: data[k] for k in data.data}, dir=str(out_dir))
    (out_dir / "augmented.onnx").unlink(missing_ok=True)
    return out_dir / "calibration.flatbuffers"


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Static INT8 quantisation (QDQ, per-channel weights), calibrated on ``calibration`` inputs.

    The first convolution (it sees raw pixels) and the classifier (logits decide the category and
    the calibrated probabilities) stay in FP32, the usual practice: on the synthetic benchmark
    quantising them cost 5 accuracy points, keeping them cost none.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        nodes = onnx.load(str(pre)).graph.node
        keep = [n.name for n in nodes if n.op_type == "Conv"][:1]
        keep += [n.name for n in nodes if n.op_type in ("MatMul", "Gemm")][-1:]
        quantize_static(str(pre), str(out_path), calibration_reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep)
    finally:
        pre.unlink(missing_ok=True)


def export_run(run: Path | str, int8: bool = False, parity_images: int = 16, calibration_images: int = 32,
               opset: int = 17, progress=None) -> dict[str, Any]:  # noqa: ANN001
    """Write ``model.onnx`` (and ``model.int8.onnx``) in the run folder; returns what was checked."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from models.input_pipeline import images_array

    run = Path(run)
    config, manifest, report = _run_files(run)
    pp = Preprocessing.from_dict(config["preprocessing"])
    keras.mixed_precision.set_global_policy("float32")
    trained = keras.models.load_model(run / "model.keras", compile=False)
    # Rebuilt in float32 (a GPU run trains in mixed precision; its variables are float32 anyway).
    from models.architectures import build

    model = build(config["arch"], pp.input_size, classes=len(config["classes"]))
    model.set_weights(trained.get_weights())
    temperature = float(report.get("temperature", 1.0))
    serving = serving_model(model, temperature)
    t0 = time.perf_counter()
    spec = (tf.TensorSpec((None, pp.input_size, pp.input_size, pp.channels), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(serving, input_signature=spec, opset=opset)
    names = [o.name for o in proto.graph.output]
    if sorted(names) != sorted(OUTPUTS.values()):
        raise SemtagError(f"exported graph has outputs {names}, expected {sorted(OUTPUTS.values())}", "export_failed")
    if progress:
        progress("converted")
    test = report.get("test", {})
    meta: dict[str, Any] = {
        "format_version": 1, "arch": config["arch"], "mode": config["mode"], "run_name": run.name,
        "parent": (config.get("init_info") or {}).get("path"), "manifest_sha256": config["manifest_sha256"],
        "classes": config["classes"], "class_names": config["class_names"], "preprocessing": pp.to_dict(),
        "temperature": temperature, "input": "input", "outputs": OUTPUTS, "precision": "fp32",
        "created": datetime.now(UTC).isoformat(), "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
        "metrics": {"test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
                    **({k: v for k, v in report.get("calibration", {}).items()})},
    }
    # Parity on held-out images: the exported graph must reproduce Keras' logits.
    paths = _sample_paths(manifest, parity_images, ("test", "val", "train"))
    x = images_array(paths, pp)
    ref_logits, _, ref_probs = (np.asarray(t) for t in serving(x, training=False))
    sess = _session(proto.SerializeToString())
    got_logits, got_feats, got_probs = sess.run([OUTPUTS["logits"], OUTPUTS["features"], OUTPUTS["probabilities"]],
                                                {"input": x})
    delta = float(np.max(np.abs(got_logits - ref_logits)))
    delta_p = float(np.max(np.abs(got_probs - ref_probs)))
    if not (delta < PARITY_TOLERANCE) or not np.isfinite(got_feats).all():
        raise ParityError(f"ONNX logits differ from Keras by {delta:.3g} (limit {PARITY_TOLERANCE:g}) on "
                          f"{len(paths)} held-out images; nothing was written")
    meta["parity"] = {"images": len(paths), "max_abs_logit_delta": delta, "max_abs_probability_delta": delta_p}
    # The validation images' logit energy, the reference for the out-of-distribution score.
    ref_paths = _sample_paths(manifest, 256, ("val", "test", "train"))
    ref_logits = np.concatenate([sess.run([OUTPUTS["logits"]], {"input": images_array(ref_paths[i:i + 32], pp)})[0]
                                 for i in range(0, len(ref_paths), 32)])
    m = ref_logits.max(1, keepdims=True)
    energy = -(m[:, 0] + np.log(np.exp(ref_logits - m).sum(1)))
    meta["energy"] = {"mean": float(energy.mean()), "std": float(max(energy.std(), 1e-3)), "images": len(ref_paths)}
    fp32_path = run / "model.onnx"
    _write(proto, fp32_path, meta)
    result: dict[str, Any] = {"fp32": str(fp32_path), "parity": meta["parity"], "seconds": 0.0}
    if int8:
        calib_paths = _sample_paths(manifest, calibration_images, ("train",))
        calib = images_array(calib_paths, pp)
        int8_path = run / "model.int8.onnx"
        quantize_int8(fp32_path, int8_path, calib)
        test_items = manifest.split("test") or manifest.split("val")
        tx = images_array([str(manifest.resolve(i)) for i in test_items], pp)
        ty = np.array([i.label for i in test_items])
        acc32 = _accuracy(_session(str(fp32_path)), tx, ty)
        acc8 = _accuracy(_session(str(int8_path)), tx, ty)
        q = {"calibration_images": len(calib_paths), "eval_images": len(ty), "accuracy_fp32": acc32,
             "accuracy_int8": acc8, "accuracy_change_points": round(100 * (acc8 - acc32), 3)}
        import onnx

        qproto = onnx.load(str(int8_path))
        meta8 = {**meta, "precision": "int8", "quantization": q, "parent": str(fp32_path.resolve()),
                 "metrics": {**meta["metrics"], "int8": q}}
        _write(qproto, int8_path, meta8)
        result["int8"] = str(int8_path)
        result["quantization"] = q
    result["seconds"] = round(time.perf_counter() - t0, 2)
    (run / "export.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result
