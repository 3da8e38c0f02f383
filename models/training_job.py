"""The admin ``training`` job: dataset → training → ONNX export (+ INT8) → registry, with progress per epoch.

Runs on the batch queue. Activation stays a separate, explicit admin call. A job whose worker
died is run again: a finished training (report.json present) is reused, a partial one restarted.
"""

from __future__ import annotations

import shutil
from typing import Any

from services.errors import BadInput
from services.jobs.service import JobContext


def run_training(ctx: JobContext) -> dict[str, Any]:
    """The ``training`` job's handler; ``ctx.params`` is a validated :class:`TrainingParams` dump."""
    from models.export import export_run
    from models.training import config_from_params, train
    from services.classify import registry
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
        cfg = config_from_params(p, str(out), verbose=0)

        def on_epoch(epoch: int, total: int, rec: dict) -> None:
            acc = rec.get("test_accuracy", rec.get("val_accuracy"))
            msg = f"epoch {epoch}/{total}: loss {rec['loss']:.3f}"
            msg += f", test accuracy {acc:.3f}" if acc is not None else ""
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
