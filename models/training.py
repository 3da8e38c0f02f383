"""Training runs: the paper's modes on a deduplicated, group-split dataset, written to a run folder.

Modes
  ``scratch``             random initialisation, all layers trained;
  ``feature-extraction``  backbone from a checkpoint and frozen, the last layer re-initialised and trained;
  ``fine-tuning``         backbone from a checkpoint, the last layer re-initialised, all layers trained;
  ``fe+ft``               the paper's combination: feature extraction, then fine tuning from its result.

A checkpoint (``init``) is an ImageNet weights file without top (given by path; nothing is
downloaded) or an earlier run (its folder or ``model.keras``): the "SEM checkpoint".

A run folder holds ``config.json``, ``manifest.json``, ``metrics.jsonl`` (one line per epoch:
loss/accuracy on train, validation and test, seconds), TensorBoard logs in ``tb/``,
``model.keras`` and ``report.json`` (confusion matrix, per-class P/R/F1, macro-F1, temperature
and ECE before/after calibration on validation).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.classify.evaluation import classification_report, fit_temperature
from services.classify.schemas import MODE_NAMES as MODES
from services.classify.schemas import checkpoint_file
from services.data.categories import NAMES, SLUGS
from services.data.datasets import Manifest, load_manifest_or_scan
from services.errors import BadInput, BadParams
from services.images.preprocess import Preprocessing
from services.plotting import png_figure
from services.storage import sha256_file

DEFAULT_LR = {"scratch": 1e-3, "feature-extraction": 1e-3, "fine-tuning": 1e-4}


@dataclass
class TrainConfig:
    data: str
    arch: str
    mode: str = "scratch"
    out: str = "runs/run"
    init: str | None = None
    epochs: int = 10
    fe_epochs: int | None = None     # fe+ft: epochs of the feature-extraction stage (default: epochs // 2)
    batch_size: int = 32
    image_size: int | None = None
    lr: float | None = None
    seed: int = 0
    augment: bool = True
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    mixed_precision: bool | None = None  # None: on when a GPU is present
    xla: bool | None = None              # None: on when a GPU is present
    bn_momentum: float = 0.9
    schedule: str = "cosine"             # learning rate: "cosine" decay over each stage, or "constant"
    verbose: int | None = None           # Keras progress: 1 bar, 2 a line per epoch (default: bar on a TTY)
    extra: dict = field(default_factory=dict)


ProgressFn = Callable[[int, int, dict], None]


def config_from_params(p: dict[str, Any], out: str, **extra: Any) -> TrainConfig:
    """The training configuration of validated :class:`~services.classify.schemas.TrainingParams`
    (the job's and the CLI's one contract); ``extra`` sets the internal knobs (verbose, split…)."""
    return TrainConfig(data=p["data"], arch=p["arch"], mode=p["mode"], out=out, init=p["init"], epochs=p["epochs"],
                       fe_epochs=p["fe_epochs"], batch_size=p["batch_size"], image_size=p["image_size"], lr=p["lr"],
                       seed=p["seed"], augment=p["augment"], **extra)


def validate(cfg: TrainConfig) -> None:
    from models.architectures import BACKBONES, MIN_SIZE

    if cfg.arch not in BACKBONES:
        raise BadParams(f"unknown architecture {cfg.arch!r}; choose from {', '.join(BACKBONES)}")
    if cfg.mode not in MODES:
        raise BadParams(f"unknown mode {cfg.mode!r}; choose from {', '.join(MODES)}")
    if cfg.schedule not in ("cosine", "constant"):
        raise BadParams("schedule must be cosine or constant")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise BadParams("epochs and batch size must be at least 1")
    if cfg.image_size is not None and cfg.image_size < MIN_SIZE[cfg.arch]:
        raise BadParams(f"{cfg.arch} needs an image size of at least {MIN_SIZE[cfg.arch]}")
    if cfg.mode == "scratch" and cfg.init:
        raise BadParams("mode scratch starts from random weights; drop --init or choose another mode")
    if cfg.mode != "scratch":
        resolve_init(cfg.arch, cfg.init)


def resolve_init(arch: str, init: str | None) -> tuple[str, Path]:
    """('run', model.keras) or ('weights', file); a missing checkpoint is a clear error."""
    try:
        p = checkpoint_file(arch, init)
    except ValueError as exc:
        raise BadInput(str(exc), "missing_checkpoint") from None
    return ("run", p) if p.suffix == ".keras" else ("weights", p)


def load_init(model, arch: str, init: str) -> dict:  # noqa: ANN001
    """Copy checkpoint weights into ``model``'s backbone (the head stays freshly initialised)."""
    import keras

    from models.architectures import backbone_of

    kind, path = resolve_init(arch, init)
    backbone = backbone_of(model)
    try:
        if kind == "run":
            cfg_path = path.parent / "config.json"
            if cfg_path.is_file():
                run_arch = json.loads(cfg_path.read_text())["arch"]
                if run_arch != arch:
                    raise BadInput(f"checkpoint {path} is a {run_arch} run, not {arch}", "bad_checkpoint")
            old = keras.models.load_model(path, compile=False)
            src = backbone_of(old).get_weights()
            dst = backbone.get_weights()
            if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
                raise BadInput(f"checkpoint {path} does not fit this {arch} (different image size or layout)",
                               "bad_checkpoint")
            backbone.set_weights(src)
        else:
            backbone.load_weights(str(path))
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"checkpoint {path} cannot be loaded into the {arch} backbone: {exc}", "bad_checkpoint") from exc
    return {"kind": kind, "path": str(path.resolve()), "sha256": sha256_file(path)}


def _configure_device(cfg: TrainConfig) -> dict:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    mp = bool(gpus) if cfg.mixed_precision is None else cfg.mixed_precision
    xla = bool(gpus) if cfg.xla is None else cfg.xla
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    return {"gpus": len(gpus), "mixed_precision": mp, "xla": xla}


def _batchnorms(layer) -> list:  # noqa: ANN001
    import keras

    found = []
    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
        else:
            found.extend(_batchnorms(sub))
    return found


def _epoch_log(*a, **k):  # noqa: ANN002, ANN003, ANN202 — the class is built here so importing needs no TF
    """Keras callback: evaluates validation and test after every epoch, logs JSON lines + TensorBoard."""
    import keras
    import tensorflow as tf

    class EpochLog(keras.callbacks.Callback):
        def __init__(self, val_ds: Any, test_ds: Any, metrics_path: Path, tb_dir: Path, stage: str,
                     epoch_offset: int, total_epochs: int, progress: ProgressFn | None) -> None:
            super().__init__()
            self.val_ds, self.test_ds = val_ds, test_ds
            self.metrics_path, self.stage = metrics_path, stage
            self.offset, self.total, self.progress = epoch_offset, total_epochs, progress
            self.writer = tf.summary.create_file_writer(str(tb_dir / "eval"))
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs=None) -> None:  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs=None) -> None:  # noqa: ANN001
            seconds = time.perf_counter() - self.t0
            rec: dict[str, Any] = {"epoch": self.offset + epoch + 1, "stage": self.stage,
                   "loss": float(logs.get("loss", np.nan)), "accuracy": float(logs.get("accuracy", np.nan)),
                   "train_seconds": round(seconds, 3)}
            for name, ds in (("val", self.val_ds), ("test", self.test_ds)):
                if ds is not None:
                    loss, acc = self.model.evaluate(ds, verbose=0)
                    rec[f"{name}_loss"], rec[f"{name}_accuracy"] = float(loss), float(acc)
            rec["seconds"] = round(time.perf_counter() - self.t0, 3)
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            with self.writer.as_default(step=rec["epoch"]):
                for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
                    if key in rec:
                        tf.summary.scalar(key, rec[key])
            if self.progress is not None:
                self.progress(rec["epoch"], self.total, rec)

    return EpochLog(*a, **k)


def _predict_logits(model, ds) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    logits, labels = [], []
    for x, y in ds:
        logits.append(np.asarray(model(x, training=False), np.float32))
        labels.append(np.asarray(y))
    return np.concatenate(logits), np.concatenate(labels)


def train(cfg: TrainConfig, progress: ProgressFn | None = None, manifest: Manifest | None = None) -> dict:
    """Run one training; returns the summary also written to ``report.json``."""
    validate(cfg)
    out = Path(cfg.out)
    if (out / "model.keras").exists():
        raise BadInput(f"run folder {out} already holds a trained model; choose another --out", "run_exists")
    out.mkdir(parents=True, exist_ok=True)
    import keras
    import tensorflow as tf

    from models.architectures import DEFAULT_SIZE, backbone_of, build
    from models.input_pipeline import make_dataset

    manifest = manifest or load_manifest_or_scan(cfg.data, seed=cfg.seed, fractions=cfg.split)
    manifest_sha = manifest.save(out / "manifest.json")
    train_items, val_items, test_items = (manifest.split(s) for s in ("train", "val", "test"))
    if not train_items:
        raise BadInput("the dataset's training split is empty", "empty_dataset")
    keras.utils.set_random_seed(cfg.seed)
    device = _configure_device(cfg)
    size = cfg.image_size or DEFAULT_SIZE[cfg.arch]
    pp = Preprocessing(input_size=size)

    def ds(items, training):  # noqa: ANN001, ANN202
        if not items:
            return None
        return make_dataset([str(manifest.resolve(i)) for i in items], [i.label for i in items], pp,
                            cfg.batch_size, training, cfg.augment, cfg.seed)

    train_ds, val_ds, test_ds = ds(train_items, True), ds(val_items, False), ds(test_items, False)
    model = build(cfg.arch, size, classes=len(SLUGS))
    for bn in _batchnorms(model):  # Keras' 0.99 forgets its initial statistics too slowly for short runs
        bn.momentum = min(bn.momentum, cfg.bn_momentum)
    init_info = load_init(model, cfg.arch, cfg.init) if cfg.mode != "scratch" and cfg.init else None
    config = {**asdict(cfg), "image_size": size, "manifest_sha256": manifest_sha, "init_info": init_info,
              "preprocessing": pp.to_dict(), "classes": list(SLUGS), "class_names": [NAMES[s] for s in SLUGS],
              "device": device, "tensorflow": tf.__version__, "keras": keras.__version__}
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("", encoding="utf-8")
    verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stderr.isatty() else 2)

    stages: list[tuple[str, int, bool, float]] = []  # (name, epochs, backbone trainable, lr)
    if cfg.mode == "fe+ft":
        fe = cfg.fe_epochs if cfg.fe_epochs is not None else max(1, cfg.epochs // 2)
        stages = [("feature-extraction", fe, False, cfg.lr or DEFAULT_LR["feature-extraction"]),
                  ("fine-tuning", max(0, cfg.epochs - fe), True, (cfg.lr or DEFAULT_LR["fine-tuning"]))]
    else:
        stages = [(cfg.mode, cfg.epochs, cfg.mode != "feature-extraction", cfg.lr or DEFAULT_LR[cfg.mode])]
    total = sum(s[1] for s in stages)
    done = 0
    t_start = time.perf_counter()
    for name, epochs, trainable, lr in stages:
        if epochs == 0:
            continue
        backbone_of(model).trainable = trainable
        steps = epochs * -(-len(train_items) // cfg.batch_size)
        rate = (keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.02)
                if cfg.schedule == "cosine" else lr)
        model.compile(optimizer=keras.optimizers.Adam(rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=device["xla"])
        callbacks = [_epoch_log(val_ds, test_ds, metrics_path, out / "tb", name, done, total, progress),
                     keras.callbacks.TensorBoard(log_dir=str(out / "tb"), write_graph=False, profile_batch=0)]
        model.fit(train_ds, epochs=epochs, verbose=verbose, callbacks=callbacks)
        done += epochs
    train_seconds = time.perf_counter() - t_start
    backbone_of(model).trainable = True
    model.save(out / "model.keras")

    report: dict = {"arch": cfg.arch, "mode": cfg.mode, "epochs": total, "train_seconds": round(train_seconds, 2),
                    "manifest_sha256": manifest_sha, "counts": manifest.counts()}
    temperature = 1.0
    if val_ds is not None:
        vl, vy = _predict_logits(model, val_ds)
        temperature = fit_temperature(vl, vy)
        report["validation"] = classification_report(vl, vy, list(SLUGS))
    report["temperature"] = temperature
    if test_ds is not None:
        tl, ty = _predict_logits(model, test_ds)
        before = classification_report(tl, ty, list(SLUGS))
        after = classification_report(tl, ty, list(SLUGS), temperature)
        report["test"] = before
        report["calibration"] = {"temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"],
                                 "nll_before": before["nll"], "nll_after": after["nll"]}
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def read_metrics(run: Path | str) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise BadInput(f"{run} is not a training run (no metrics.jsonl)", "not_a_run")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


SPLIT_CURVES = (("train", "", "-"), ("validation", "val_", "--"), ("test", "test_", ":"))  # label, key prefix, style


def _run_label(run: Path) -> str:
    cfg_path = run / "config.json"
    if cfg_path.is_file():
        c = json.loads(cfg_path.read_text(encoding="utf-8"))
        return f"{run.name} ({c.get('arch', '?')}, {c.get('mode', '?')})"
    return run.name


def is_synthetic_run(run: Path | str) -> bool:
    """Whether the run trained on ``semtag synth`` output: the dataset root recorded in the run's
    manifest.json (or its config's ``data`` folder) holds the MANIFEST.tsv that services/data/synth.py
    writes beside its images (first columns file, category, category_index, style)."""
    run = Path(run)
    roots = []
    for name, key in (("manifest.json", "root"), ("config.json", "data")):
        try:
            roots.append(Path(json.loads((run / name).read_text(encoding="utf-8"))[key]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for root in roots:
        try:
            with open(root / "MANIFEST.tsv", encoding="utf-8") as fh:
                header = fh.readline().rstrip("\n").split("\t")
        except OSError:
            continue
        if header[:4] == ["file", "category", "category_index", "style"]:
            return True
    return False


def draw_training(axes, runs: list[str], title: str | None = None) -> None:  # noqa: ANN001
    """Draw the runs' accuracy (``axes[0]``) and loss (``axes[1]``) per epoch on train, validation and
    test: one colour per run, one line style per split."""
    from matplotlib.ticker import MaxNLocator

    if not runs:
        raise BadParams("give at least one run folder")
    ax_acc, ax_loss = axes
    fig = ax_acc.figure
    labels, synthetic, max_loss = [], False, 0.0
    for n, run in enumerate(map(Path, runs)):
        rows = read_metrics(run)
        if not any("accuracy" in r or "test_accuracy" in r for r in rows):
            raise BadParams(f"{run} has no accuracy values in metrics.jsonl")
        label, colour = _run_label(run), f"C{n % 10}"
        labels.append(label)
        synthetic = synthetic or is_synthetic_run(run)
        for split, prefix, style in SPLIT_CURVES:
            for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
                pts = [(r["epoch"], r[prefix + metric]) for r in rows if r.get(prefix + metric) is not None]
                pts = [(e, v) for e, v in pts if np.isfinite(v)]
                if not pts:
                    continue
                if metric == "loss":
                    max_loss = max(max_loss, max(v for _, v in pts))
                ax.plot(*zip(*pts), style, color=colour, marker="o", ms=3, label=f"{label}, {split}")
    for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(0, 1)
    ax_loss.set_ylim(0, max_loss * 1.05 if max_loss > 0 else 1)
    ax_acc.set_title("accuracy")
    ax_loss.set_title("loss")
    ax_loss.legend(fontsize=7, loc="best")
    if title is None:
        title = "training: " + "; ".join(labels)
    if synthetic:
        title += "\nsynthetic data (semtag synth): not accuracy on real SEM images"
    fig.suptitle(title, fontsize=10)


def plot_training(runs: list[str], out: Path | str, title: str | None = None) -> Path:
    """The paper's Figures 1–2 as PNG: accuracy and loss against epoch, each on train, validation
    and test, for every run; titled, and marked when the data is synthetic."""
    if not runs:
        raise BadParams("give at least one run folder")
    for run in runs:
        read_metrics(run)  # a folder that is not a run fails before anything is drawn
    out = Path(out)
    with png_figure(out, (11, 4.5), dpi=120, ncols=2) as (_, axes):
        draw_training(axes, runs, title)
    return out
