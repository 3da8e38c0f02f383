"""The ``semtag`` command: serve, worker, db, apikey (and the domain commands of services/)."""

from __future__ import annotations

import argparse
import os
import sys


def _settings():  # noqa: ANN202
    from semtag.settings import get_settings

    return get_settings()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from services import migrate

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    mode = "embedded (in-process tasks)" if s.embedded_tasks else f"Celery broker {s.broker_url}"
    print(f"semtag: database {s.effective_database_url}, blobs {s.blob_dir.resolve()}, {mode}", file=sys.stderr)
    uvicorn.run("api.main:app_factory", factory=True, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    s = _settings()
    if not s.broker_url:
        print("semtag worker needs SEMTAG_BROKER_URL (e.g. redis://127.0.0.1:6379/0); "
              "without it `semtag serve` runs tasks in-process", file=sys.stderr)
        return 2
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    from workers.app import QUEUES, app

    bad = [q for q in queues if q not in QUEUES]
    if bad:
        print(f"unknown queue(s) {', '.join(bad)}; choose from {', '.join(QUEUES)}", file=sys.stderr)
        return 2
    if args.metrics_port or s.worker_metrics_port:
        from prometheus_client import start_http_server

        import workers.metrics  # noqa: F401

        start_http_server(args.metrics_port or s.worker_metrics_port)
    if "inference" in queues:
        # celery-batches caps a batch at prefetch × concurrency: prefetch enough to fill two batches.
        app.conf.worker_prefetch_multiplier = max(1, 2 * s.inference_batch_size)
        app.conf.semtag_warm_inference = s.inference_warmup
    argv = ["worker", "-Q", ",".join(queues), "--loglevel", args.loglevel, "-c", str(args.concurrency),
            "-n", args.name or f"semtag-{'-'.join(queues)}@%h", "--pool", args.pool]
    if args.beat:
        argv.append("-B")
    app.worker_main(argv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from services import migrate

    url = _settings().effective_database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "-1")
    elif args.action == "check":
        diff = migrate.drift(url)
        if diff:
            print(f"schema drift: {diff}", file=sys.stderr)
            return 1
        print("schema matches the models")
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    from services import auth, migrate
    from services.db import session_scope

    url = _settings().effective_database_url
    migrate.upgrade(url)
    with session_scope(url) as s:
        if args.action == "create":
            row, key = auth.create_key(s, args.role, args.name)
            print(f"created API key {row.id} ({row.prefix}…) with role {row.role}; it is shown only once:")
            print(key, flush=True)
        elif args.action == "revoke":
            if not auth.revoke_key(s, args.id):
                print(f"no API key {args.id}", file=sys.stderr)
                return 1
        elif args.action == "list":
            from sqlalchemy import select

            from services.tables import ApiKey

            for k in s.scalars(select(ApiKey).order_by(ApiKey.id)):
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id}\t{k.prefix}…\t{k.role}\t{state}\t{k.name}")
    return 0


def _iter_images(paths: list[str]):  # noqa: ANN202
    from pathlib import Path

    from services.datasets import IMAGE_EXTS

    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS)
        else:
            yield p


def cmd_scale(args: argparse.Namespace) -> int:
    """One JSON object per image; exit 1 only when some file could not be read at all."""
    import json

    from services.imaging import ImageRejected
    from services.scale.reader import read_scale, sidecar_for

    unreadable = 0
    for path in _iter_images(args.paths):
        try:
            if not path.exists():
                raise ImageRejected("not_found", "no such file")
            res = read_scale(path, sidecar=sidecar_for(path), max_pixels=_settings().max_pixels)
        except ImageRejected as exc:
            unreadable += 1
            print(f"semtag scale: {path}: cannot be read: {exc.message}", file=sys.stderr)
            continue
        except OSError as exc:
            unreadable += 1
            print(f"semtag scale: {path}: cannot be read: {exc}", file=sys.stderr)
            continue
        row = {"file": str(path), "scale_value": res.scale_value, "scale_unit": res.scale_unit,
               "bar_px": res.bar_px, "pixel_size_nm": res.pixel_size_nm, "source": res.source,
               "confidence": res.confidence, "fields": res.fields, "databar_box": res.databar_box}
        if args.json:
            row["scale_bin"], row["reason"] = res.scale_bin, res.reason
            print(json.dumps(row, ensure_ascii=False, default=float), flush=True)
        else:
            value = f"{res.scale_value:g} {res.scale_unit}" if res.scale_value is not None else "-"
            px = f"{res.pixel_size_nm:.4g} nm/px" if res.pixel_size_nm else "-"
            conf = f"{res.confidence:.2f}" if res.confidence is not None else "-"
            print(f"{path}\t{res.source}\t{value}\t{px}\tconfidence {conf}\t{res.reason or ''}", flush=True)
    return 1 if unreadable else 0


def cmd_classify(args: argparse.Namespace) -> int:
    """One JSON object per image with the given or the active model; exit 1 when some file could not be read."""
    import json

    from services.inference import Engine

    s = _settings()
    model_path = args.model
    version = None
    if model_path is None:
        from models import registry
        from services import migrate
        from services.db import session_scope

        migrate.upgrade(s.effective_database_url)
        with session_scope(s.effective_database_url) as session:
            row = registry.active(session)
            if row is None:
                print("semtag classify: no active model; give --model FILE.onnx or activate one with "
                      "`semtag models activate VERSION`", file=sys.stderr)
                return 2
            model_path, version = row.file_path, row.version
    engine = Engine(model_path, threads=args.threads, review_threshold=s.review_confidence_threshold,
                    max_pixels=s.max_pixels)
    version = version or engine.version_hint
    paths = list(_iter_images(args.paths))
    unreadable = 0
    with _bar(len(paths), "classify") as bar:
        for path, res, err in engine.classify_paths(paths, batch_size=args.batch_size):
            bar.update(1)
            if res is None:
                unreadable += 1
                print(f"semtag classify: {path}: cannot be read: {err}", file=sys.stderr)
                continue
            row = {"file": str(path), **res.to_dict(), "probabilities": dict(zip(engine.classes, res.probabilities)),
                   "model": version}
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                flag = "  needs review" if res.needs_review else ""
                print(f"{path}\t{res.category}\t{res.confidence:.3f}{flag}", flush=True)
    return 1 if unreadable else 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Subcategory analysis: from saved features (--features), an image folder (--images), or the database."""
    import json
    from pathlib import Path

    import numpy as np

    from services.clustering.analysis import ALL_METHODS, AnalysisConfig, analyse

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else ALL_METHODS
    say = (lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    if args.features or args.images:
        cfg = AnalysisConfig(methods=methods, autoencoder=not args.no_autoencoder, code_dim=args.code_dim,
                             complete_sample=args.complete_sample, dp_k=args.dp_k)
        if args.features:
            X = np.load(args.features)
            labels = np.load(args.labels) if args.labels else np.full(len(X), -1)
        else:
            X, labels = _folder_features(args)
        report = analyse(X, labels, cfg, Path(args.out), say)
        summary = {"report": str(Path(args.out) / "report.html"), "n": report["n"],
                   "intrinsic_dimension": report["intrinsic_dimension"]["estimate"],
                   "methods": {m: (e.get("error") or (e.get("scores") or [{}])[0].get("nmi"))
                               for m, e in report["methods"].items()}}
        print(json.dumps(summary))
        return 0
    from services import migrate
    from services.runtime import Runtime
    from services.subcategories import run_clustering

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    params = {"scale_min_nm": None if args.all_scales else args.scale_min_nm,
              "scale_max_nm": None if args.all_scales else args.scale_max_nm,
              "output": args.output, "within": args.within, "method": args.method, "k": args.k,
              "methods": list(methods), "autoencoder": not args.no_autoencoder, "code_dim": args.code_dim,
              "complete_sample": args.complete_sample, "dp_k": args.dp_k}
    result = run_clustering(Runtime(s), params, Path(args.out), progress=say)
    print(json.dumps(result))
    return 0


def _folder_features(args: argparse.Namespace):  # noqa: ANN202
    """Features of a folder's images with --model; labels from category folders when the layout has them."""
    import numpy as np

    from services.categories import index_of, to_slug
    from services.errors import BadInput
    from services.inference import Engine
    from services.scale.reader import read_scale, sidecar_for

    if not args.model:
        raise BadInput("--images needs --model FILE.onnx (the features' source)", "bad_params")
    eng = Engine(args.model)
    xs, labels = [], []
    for path in _iter_images([args.images]):
        if not args.all_scales and (args.scale_min_nm or args.scale_max_nm):
            nm = read_scale(path, sidecar=sidecar_for(path)).scale_nm
            if nm is None or (args.scale_min_nm and nm < args.scale_min_nm) or (
                    args.scale_max_nm and nm > args.scale_max_nm):
                continue
        try:
            x = eng.decode(path)[0]
        except Exception as exc:  # noqa: BLE001
            print(f"semtag cluster: {path}: skipped: {exc}", file=sys.stderr)
            continue
        xs.append(eng.run(x[None], outputs=(args.output,))[args.output][0])
        try:
            labels.append(index_of(to_slug(path.parent.name)))
        except BadInput:
            labels.append(-1)
    if not xs:
        raise BadInput(f"no readable images in {args.images} within the scale range", "empty_selection")
    return np.stack(xs), np.array(labels)


def _bar(total: int, desc: str):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None)


def cmd_synth(args: argparse.Namespace) -> int:
    from services.synth import write_dataset

    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"semtag synth: --size must look like 1024x768, got {args.size!r}", file=sys.stderr)
        return 2
    with _bar(args.per_class * 10, "synth") as bar:
        rows = write_dataset(args.out, args.per_class, w, h, args.seed, args.format,
                             progress=lambda n, total: bar.update(1))
    print(f"wrote {len(rows)} synthetic images (10 categories) and MANIFEST.tsv to {args.out}; "
          "synthetic data: its accuracy is not accuracy on real SEM images")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from models.training import TrainConfig, train

    cfg = TrainConfig(data=args.data, arch=args.arch, mode=args.mode, out=args.out, init=args.init,
                      epochs=args.epochs, fe_epochs=args.fe_epochs, batch_size=args.batch_size,
                      image_size=args.image_size, lr=args.lr, seed=args.seed, augment=not args.no_augment)
    report = train(cfg)
    summary = {k: report[k] for k in ("arch", "mode", "epochs", "train_seconds", "temperature") if k in report}
    if "test" in report:
        summary["test_accuracy"], summary["test_macro_f1"] = report["test"]["accuracy"], report["test"]["macro_f1"]
        summary["ece_before"] = report["calibration"]["ece_before"]
        summary["ece_after"] = report["calibration"]["ece_after"]
    print(json.dumps({"run": args.out, **summary}))
    return 0


def cmd_plot_training(args: argparse.Namespace) -> int:
    from models.training import plot_training

    print(plot_training(args.runs, args.out, title=args.title))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from models.export import export_run

    result = export_run(args.run, int8=args.int8)
    if not args.no_register:
        from models import registry
        from services import migrate
        from services.db import session_scope

        s = _settings()
        migrate.upgrade(s.effective_database_url)
        with session_scope(s.effective_database_url) as session:
            for key in ("fp32", "int8"):
                if key in result:
                    row = registry.register(session, result[key], s.data_dir / "models")
                    result[f"{key}_version"] = row.version
    print(json.dumps(result))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from models import registry
    from services import migrate
    from services.db import session_scope

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    with session_scope(s.effective_database_url) as session:
        if args.action == "list":
            for m in registry.list_models(session):
                if args.json:
                    print(json.dumps(m))
                else:
                    acc = (m["metrics"] or {}).get("test_accuracy")
                    acc = f"{acc:.3f}" if isinstance(acc, float) else "-"
                    print(f"{'*' if m['active'] else ' '} {m['version']}\t{m['architecture']}\t{m['mode']}\t"
                          f"test_acc {acc}\t{m['created_at']}")
            return 0
        if not args.target:
            print(f"semtag models {args.action}: give a {'version' if args.action == 'activate' else 'FILE.onnx'}",
                  file=sys.stderr)
            return 2
        if args.action == "import":
            row = registry.register(session, args.target, s.data_dir / "models")
            print(f"registered {row.version} ({row.architecture}); activate it with `semtag models activate "
                  f"{row.version}`")
            return 0
    from services.runtime import Runtime
    from workers.dispatch import CeleryQueue

    rt = Runtime(s, queue=CeleryQueue(s.broker_url)) if s.broker_url else Runtime(s)
    info = registry.activate_and_requeue(rt, args.target, args.reclassify)
    print(f"active model: {info['version']}; {info['queued_images']} waiting image(s) queued for classification")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semtag", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("serve", help="run the HTTP API (embedded defaults: SQLite, ./var, in-process tasks)")
    sp.add_argument("--host", default=os.environ.get("SEMTAG_HOST", "127.0.0.1"))
    sp.add_argument("--port", type=int, default=int(os.environ.get("SEMTAG_PORT", "8000")))
    sp.add_argument("--workers", type=int, default=1)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("worker", help="run a Celery worker")
    sp.add_argument("--queues", default="inference,ocr,batch")
    sp.add_argument("--concurrency", type=int, default=max(1, os.cpu_count() or 1))
    sp.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    sp.add_argument("--loglevel", default="INFO")
    sp.add_argument("--name", default=None)
    sp.add_argument("--beat", action="store_true", help="also run the periodic reconciler (one worker only)")
    sp.add_argument("--metrics-port", type=int, default=None)
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("db", help="database migrations")
    sp.add_argument("action", choices=["upgrade", "downgrade", "check"])
    sp.add_argument("revision", nargs="?")
    sp.set_defaults(func=cmd_db)

    sp = sub.add_parser("scale", help="read the scale of images (metadata first, then OCR of the data bar)")
    sp.add_argument("paths", nargs="+", help="image files or folders")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_scale)

    sp = sub.add_parser("classify", help="classify images with the active model (or --model FILE.onnx)")
    sp.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    sp.add_argument("--model", default=None, help="an exported .onnx file instead of the active registry model")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_classify)

    sp = sub.add_parser("cluster", help="discover subcategories (features → ID → autoencoder → clusterings → NMI)")
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--features", help="a saved (N, D) .npy feature matrix (analysis only, nothing written to the db)")
    src.add_argument("--images", help="an image folder (with --model); category folders give labels")
    sp.add_argument("--labels", help="with --features: (N,) .npy of labels 0–9, -1 where unknown")
    sp.add_argument("--model", help="with --images: the exported .onnx model")
    sp.add_argument("--out", default="clustering", help="folder for the figures, analysis.json and report.html")
    sp.add_argument("--scale-min-nm", type=float, default=1000.0)
    sp.add_argument("--scale-max-nm", type=float, default=2000.0)
    sp.add_argument("--all-scales", action="store_true", help="no scale selection")
    sp.add_argument("--output", default="logits", choices=["logits", "features"])
    sp.add_argument("--within", default="category", choices=["category", "all"])
    sp.add_argument("--method", default="ward", help="the method whose hierarchy becomes subcategories")
    sp.add_argument("--k", type=int, default=5, help="subcategories per category (or in all, with --within all)")
    sp.add_argument("--methods", default=None, help="comma-separated; default all five")
    sp.add_argument("--no-autoencoder", action="store_true")
    sp.add_argument("--code-dim", type=int, default=10)
    sp.add_argument("--complete-sample", type=int, default=None)
    sp.add_argument("--dp-k", type=int, default=30)
    sp.set_defaults(func=cmd_cluster)

    sp = sub.add_parser("synth", help="write synthetic SEM-like images of the ten categories (tests, demos)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--per-class", type=int, default=20)
    sp.add_argument("--size", default="1024x768", help="WxH including the data bar")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--format", default="png", choices=["png", "jpg", "tif"])
    sp.set_defaults(func=cmd_synth)

    from models.archs import ARCH_NAMES, MODE_NAMES

    sp = sub.add_parser("train", help="train a classifier on a labelled folder or a dataset manifest")
    sp.add_argument("--data", required=True, help="one folder per category, or a manifest.json of an earlier run")
    sp.add_argument("--arch", required=True, choices=ARCH_NAMES)
    sp.add_argument("--mode", default="scratch", choices=MODE_NAMES)
    sp.add_argument("--init", default=None, help="checkpoint: ImageNet weights file (no top) or a run folder")
    sp.add_argument("--epochs", type=int, default=10)
    sp.add_argument("--fe-epochs", type=int, default=None, help="fe+ft: epochs of feature extraction first")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--image-size", type=int, default=None, help="input side (default 299; 227 for AlexNet)")
    sp.add_argument("--lr", type=float, default=None)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-augment", action="store_true")
    sp.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("plot-training", help="accuracy and loss against epoch on train, validation and test (PNG)")
    sp.add_argument("runs", nargs="+")
    sp.add_argument("--out", default="training.png")
    sp.add_argument("--title", default=None, help="figure title (default: the architectures and modes of the runs)")
    sp.set_defaults(func=cmd_plot_training)

    sp = sub.add_parser("export", help="export a run to ONNX (parity-checked) and register it")
    sp.add_argument("run")
    sp.add_argument("--int8", action="store_true", help="also write a static INT8 (QDQ) model")
    sp.add_argument("--no-register", action="store_true")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("models", help="the model registry: list, activate VERSION, import FILE.onnx")
    sp.add_argument("action", choices=["list", "activate", "import"])
    sp.add_argument("target", nargs="?")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--reclassify", action="store_true", help="activate: classify every image again with it")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("apikey", help="API keys (the new key is printed as the last line)")
    sp.add_argument("action", choices=["create", "list", "revoke"])
    sp.add_argument("--role", choices=["ingest", "read", "curator", "admin"], default="read")
    sp.add_argument("--name", default=None)
    sp.add_argument("--id", type=int, default=None)
    sp.set_defaults(func=cmd_apikey)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from services.errors import SemtagError

    try:
        return int(args.func(args) or 0)
    except SemtagError as exc:
        print(f"semtag: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
