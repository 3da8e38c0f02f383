"""The admin ``training`` job: dataset → training → ONNX export (+ INT8) → registry, with progress per epoch.

Runs on the batch queue. Activation stays a separate, explicit admin call. A job whose worker
died is run again: a finished training (report.json present) is reused, a partial one restarted.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from models.archs import ARCH_NAMES, MODE_NAMES
from services.errors import BadInput
from services.jobs.params import int_param

_KEYS = {"data", "arch", "mode", "init", "epochs", "fe_epochs", "batch_size", "image_size", "lr", "seed", "int8",
         "name", "augment"}


def validate_training(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - _KEYS
    if unknown:
        raise BadInput(f"unknown params for training: {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}",
                       "bad_params")
    data = params.get("data")
    if not isinstance(data, str) or not data:
        raise BadInput("param 'data' is required: a dataset folder (one folder per category) or a manifest "
                       "on the worker, or \"labels\" for the curators' labels in the database", "bad_params")
    if data != "labels" and not Path(data).exists():
        raise BadInput(f"dataset {data} does not exist on this machine", "bad_params")
    arch = params.get("arch", "inception_v3")
    if arch not in ARCH_NAMES:
        raise BadInput(f"param 'arch' must be one of {', '.join(ARCH_NAMES)}", "bad_params")
    mode = params.get("mode", "scratch")
    if mode not in MODE_NAMES:
        raise BadInput(f"param 'mode' must be one of {', '.join(MODE_NAMES)}", "bad_params")
    init = params.get("init")
    if mode != "scratch":
        if not isinstance(init, str) or not Path(init).exists():
            raise BadInput(f"mode {mode} needs param 'init': an existing checkpoint path on the worker "
                           f"(got {init!r}); nothing is downloaded", "missing_checkpoint")
    elif init is not None:
        raise BadInput("mode scratch takes no 'init'", "bad_params")
    name = params.get("name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{0,40}", name):
        raise BadInput("param 'name' must be up to 40 letters, digits, '_', '.', '-'", "bad_params")
    lr = params.get("lr")
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < 1):
        raise BadInput("param 'lr' must be a number between 0 and 1", "bad_params")
    for key in ("int8", "augment"):
        if key in params and not isinstance(params[key], bool):
            raise BadInput(f"param {key!r} must be true or false", "bad_params")
    return {"data": data, "arch": arch, "mode": mode, "init": init, "name": name,
            "epochs": int_param(params, "epochs", 10, 1, 1000),
            "fe_epochs": int_param(params, "fe_epochs", None, 0, 1000, optional=True),
            "batch_size": int_param(params, "batch_size", 32, 1, 4096),
            "image_size": int_param(params, "image_size", None, 32, 1024, optional=True),
            "seed": int_param(params, "seed", 0, 0, 2**31 - 1), "lr": lr, "int8": params.get("int8", False),
            "augment": params.get("augment", True)}


def run_training(ctx) -> dict[str, Any]:  # noqa: ANN001
    from services.classify import registry
    from models.export import export_run
    from models.training import TrainConfig, train
    from services.data.datasets import build_manifest, labelled_from_db

    p = ctx.params
    out = ctx.rt.settings.data_dir / "runs" / f"job-{ctx.job_id}{'-' + p['name'] if p['name'] else ''}"
    manifest = None
    if p["data"] == "labels":
        with ctx.rt.session() as s:
            items = labelled_from_db(s, ctx.rt.store)
        if len(items) < 10:
            raise BadInput(f"only {len(items)} labelled images in the database; label more before training",
                           "empty_dataset")
        manifest = build_manifest(items, ctx.rt.store.root, seed=p["seed"])
    if not (out / "report.json").is_file():
        shutil.rmtree(out, ignore_errors=True)  # a partial run from a worker that died
        ctx.progress(0.0, "preparing data")
        cfg = TrainConfig(data=p["data"], arch=p["arch"], mode=p["mode"], out=str(out), init=p["init"],
                          epochs=p["epochs"], fe_epochs=p["fe_epochs"], batch_size=p["batch_size"],
                          image_size=p["image_size"], lr=p["lr"], seed=p["seed"], augment=p["augment"], verbose=0)

        def on_epoch(epoch: int, total: int, rec: dict) -> None:
            acc = rec.get("test_accuracy", rec.get("val_accuracy"))
            msg = f"epoch {epoch}/{total}: loss {rec['loss']:.3f}" + (f", test accuracy {acc:.3f}" if acc is not None else "")
            ctx.progress(0.85 * epoch / total, msg)

        report = train(cfg, progress=on_epoch, manifest=manifest)
    else:
        import json

        report = json.loads((out / "report.json").read_text())
    ctx.progress(0.87, "exporting to ONNX")
    exported = export_run(out, int8=p["int8"])
    ctx.progress(0.97, "registering")
    versions = {}
    with ctx.rt.session() as s:
        for key in ("fp32", "int8"):
            if key in exported:
                versions[key] = registry.register(s, exported[key], ctx.rt.settings.data_dir / "models").version
    test = report.get("test", {})
    return {"run": str(out), "versions": versions, "test_accuracy": test.get("accuracy"),
            "test_macro_f1": test.get("macro_f1"), "temperature": report.get("temperature"),
            "calibration": report.get("calibration"), "parity": exported["parity"],
            "quantization": exported.get("quantization"),
            "note": "activate a version with POST /v1/admin/models/{version}/activate or `semtag models activate`"}
