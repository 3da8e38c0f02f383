"""The ``semtag`` command: serve, worker, db, apikey (and the domain commands of services/)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Any, get_args

from services.clustering.schemas import Method

if TYPE_CHECKING:
    from semtag.settings import Settings


def _settings():  # noqa: ANN202
    from semtag.settings import get_settings
    from services.images import imaging

    s = get_settings()
    imaging.configure(s.max_decoded_bytes)  # commands that decode without a Runtime keep the same budget
    return s


def _where(s: Settings) -> str:
    """The database a command uses, as a person reads it (a path for SQLite, the URL without password)."""
    from sqlalchemy.engine import make_url

    url = make_url(s.effective_database_url)
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return _hide_password(s.effective_database_url)


def _hide_password(url: str | None) -> str:
    """A database or broker URL as it may be printed: the password masked."""
    from urllib.parse import urlsplit

    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from services import migrate

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    mode = "embedded (in-process tasks)" if s.embedded_tasks else f"Celery broker {_hide_password(s.broker_url)}"
    print(f"semtag: database {_where(s)}, blobs {s.blob_location}, {mode}", file=sys.stderr)
    from api.server import GuardedH11Protocol

    uvicorn.run("api.main:app_factory", factory=True, host=args.host, port=args.port, workers=args.workers,
                http=GuardedH11Protocol,
                timeout_keep_alive=s.http_keep_alive_s, limit_concurrency=s.http_max_connections)
    return 0


def worker_pool(queues: list[str], pool: str | None, concurrency: int | None) -> tuple[str, int]:
    """The Celery pool and its size where the command line leaves them out. The inference queue alone: one
    process (one ONNX Runtime session on all its cores) with two threads, one batch in the model while the other
    reads its inputs and stores its predictions (workers/batching.py). Otherwise a process per CPU."""
    inference_alone = queues == ["inference"]
    pool = pool or ("threads" if inference_alone else "prefork")
    if pool == "solo":  # runs one task at a time whatever -c says (and celery-batches' limit follows it)
        return pool, 1
    if concurrency is None:
        concurrency = 2 if inference_alone and pool == "threads" else max(1, os.cpu_count() or 1)
    return pool, max(1, concurrency)


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
    if args.beat and "maintenance" not in queues:
        # the beat schedules the reconciler on the maintenance queue: whoever schedules it also runs it
        queues.append("maintenance")
        print("semtag worker: --beat also consumes the maintenance queue (the reconciler)", file=sys.stderr)
    pool, concurrency = worker_pool(queues, args.pool, args.concurrency)
    if args.metrics_port or s.worker_metrics_port:
        from prometheus_client import start_http_server

        import workers.metrics  # noqa: F401

        start_http_server(args.metrics_port or s.worker_metrics_port)
    if "inference" in queues:
        # celery-batches caps the messages a worker holds at prefetch × concurrency: one task's worth more than the
        # tasks that can run at once, so that under the threads pool the next task's messages are fetched while
        # the model runs (workers.batching)
        per_task = max(1, s.inference_batch_size) * max(1, s.inference_batches_per_task)
        app.conf.worker_prefetch_multiplier = math.ceil((concurrency + 1) * per_task / concurrency)
        app.conf.semtag_warm_inference = s.inference_warmup
        # its threads around the model yield to the model's (workers.tasks); not under prefork, whose children are
        # forked from the main thread, which would have yielded too
        app.conf.semtag_inference_worker = pool in ("threads", "solo")
    argv = ["worker", "-Q", ",".join(queues), "--loglevel", args.loglevel, "-c", str(concurrency),
            "-n", args.name or f"semtag-{'-'.join(queues)}@%h", "--pool", pool]
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
    from services import migrate
    from services.access import auth
    from services.db import session_scope

    url = _settings().effective_database_url
    migrate.upgrade(url)
    with session_scope(url) as s:
        if args.action == "create":
            row, key = auth.create_key(s, args.role, args.name)
            print(f"created API key {row.id} ({row.prefix}…) with role {row.role}; it is shown only once:")
            print(key, flush=True)
            # A key works only against the database it was written to: say which, so that a key made
            # from another folder (another ./var) is not a mystery 401.
            print(f"semtag: key stored in {_where(_settings())}; the service must run with the same "
                  "SEMTAG_DATA_DIR / SEMTAG_DATABASE_URL", file=sys.stderr)
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

    from services.data.datasets import IMAGE_EXTS

    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS)
        else:
            yield p


def cmd_scale(args: argparse.Namespace) -> int:
    """One JSON object per image; exit 1 only when some file could not be read at all."""
    import json

    from services.images.imaging import ImageRejected
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

    from services.classify.inference import Engine

    s = _settings()
    model_path = args.model
    version = None
    if model_path is None:
        from services import migrate
        from services.classify import registry
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
            out = {"file": str(path), **res.to_dict(), "probabilities": dict(zip(engine.classes, res.probabilities)),
                   "model": version}
            if args.json:
                print(json.dumps(out), flush=True)
            else:
                flag = "  needs review" if res.needs_review else ""
                print(f"{path}\t{res.category}\t{res.confidence:.3f}{flag}", flush=True)
    return 1 if unreadable else 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Subcategory analysis: from saved features (--features), an image folder (--images), or the database."""
    import json
    from pathlib import Path

    import numpy as np

    from services.clustering.analysis import analyse
    from services.clustering.subcategories import analysis_config, clustering_params

    def say(f: float, m: str) -> None:
        print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True)

    given = {"scale_min_nm": None if args.all_scales else args.scale_min_nm,
             "scale_max_nm": None if args.all_scales else args.scale_max_nm,
             "output": args.output, "within": args.within, "method": args.method, "k": args.k,
             "autoencoder": not args.no_autoencoder, "code_dim": args.code_dim,
             "complete_sample": args.complete_sample, "dp_k": args.dp_k}
    if args.methods:
        given["methods"] = [m.strip() for m in args.methods.split(",")]
    params = clustering_params(given)  # the job's parameter model: one set of defaults and checks
    if args.features or args.images:
        cfg = analysis_config(params)
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
    from semtag.bootstrap import build_runtime
    from services import migrate
    from services.clustering.subcategories import run_clustering

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    result = run_clustering(build_runtime(s, run_tasks=False), params, Path(args.out), progress=say)
    print(json.dumps(result))
    return 0


def _folder_features(args: argparse.Namespace):  # noqa: ANN202
    """Features of a folder's images with --model; labels from category folders when the layout has them."""
    import numpy as np

    from services.classify.inference import Engine
    from services.data.categories import index_of, to_slug
    from services.errors import BadInput, BadParams
    from services.scale.reader import read_scale, sidecar_for
    from services.scale.units import in_scale_range

    if not args.model:
        raise BadParams("--images needs --model FILE.onnx (the features' source)")
    eng = Engine(args.model)
    xs, labels = [], []
    for path in _iter_images([args.images]):
        if not args.all_scales and (args.scale_min_nm or args.scale_max_nm):
            nm = read_scale(path, sidecar=sidecar_for(path)).scale_nm
            if not in_scale_range(nm, args.scale_min_nm or None, args.scale_max_nm or None):  # [min, max)
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
    from services.data.synth import write_dataset

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

    from services.classify.schemas import TrainingParams
    from services.errors import parse_params

    # The training job's parameter model: the same defaults and checks as POST /v1/admin/jobs
    params = parse_params(TrainingParams, {
        "data": args.data, "arch": args.arch, "mode": args.mode, "init": args.init, "epochs": args.epochs,
        "fe_epochs": args.fe_epochs, "batch_size": args.batch_size, "image_size": args.image_size, "lr": args.lr,
        "seed": args.seed, "augment": not args.no_augment}, "train").model_dump()
    from models.training import config_from_params, train

    report = train(config_from_params(params, args.out))
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
        from services import migrate
        from services.classify import registry
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


def cmd_export_metadata(args: argparse.Namespace) -> int:
    from services import migrate
    from services.export.bulk import write_export
    from services.images.queries import ImageFilter
    from services.runtime import Runtime

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    flt = ImageFilter(category=args.category, subcategory=args.subcategory, status=args.status,
                      record_id=args.record_id, record_version=args.record_version, scale_bin=args.scale_bin,
                      pixel_size_min_nm=args.pixel_size_min_nm, pixel_size_max_nm=args.pixel_size_max_nm,
                      min_confidence=args.min_confidence)
    rt = Runtime(s)
    if args.out == "-":
        n = write_export(rt, flt, args.format, sys.stdout)
    else:
        tmp = f"{args.out}.partial"
        with open(tmp, "w", encoding="utf-8", newline="") as fh:  # a failed export leaves no half file behind
            n = write_export(rt, flt, args.format, fh)
        os.replace(tmp, args.out)
    print(f"semtag: {n} image(s) exported as {args.format} to {args.out} (database {_where(s)})", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from services import migrate
    from services.classify import registry
    from services.classify.schemas import ModelRead
    from services.db import session_scope

    s = _settings()
    migrate.upgrade(s.effective_database_url)
    with session_scope(s.effective_database_url) as session:
        if args.action == "list":
            for row in registry.list_models(session):
                m = ModelRead.model_validate(row).model_dump(mode="json")
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
    from semtag.bootstrap import build_runtime
    from services.images.pipeline import activate_model

    done = activate_model(build_runtime(s, run_tasks=False), args.target, args.reclassify)
    if s.embedded_tasks:  # this process runs no tasks: say honestly who classifies them, and when
        print(f"active model: {done.model.version}; {done.queued_images} image(s) marked for classification. "
              f"Embedded mode: the running `semtag serve` classifies them when its reconciler next finds them "
              f"(within about {s.reconcile_after_s + s.reconcile_every_s} s); activating through the API "
              "(POST /v1/admin/models/VERSION/activate) starts them at once")
    else:
        print(f"active model: {done.model.version}; {done.queued_images} waiting image(s) queued for classification")
    return 0


class _Bars:
    """tqdm bars for the phases of a backfill (rate and ETA; off when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, phase: str, total: int) -> None:
        from tqdm import tqdm

        self.finish()
        self.bar = tqdm(total=total, desc=phase, unit="file", file=sys.stderr, disable=None, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _LeftForTheService:
    """Embedded mode: nothing is queued from this process; the service's reconciler finds the pending images
    (unlike NullQueue, this keeps no list of what it was given: an archive may have a million images)."""

    def enqueue(self, task: str, *args: int) -> None:
        pass


def _api_key(args: argparse.Namespace) -> str | None:
    key = args.key or os.environ.get("SEMTAG_API_KEY")
    if args.api and not key:
        print(f"semtag {args.command}: --api needs a key: --key KEY or SEMTAG_API_KEY", file=sys.stderr)
        return None
    return key


def cmd_ingest(args: argparse.Namespace) -> int:
    """Backfill an archive: hash, ask which files semtag knows, send the rest; a summary of failures."""
    import csv
    from pathlib import Path

    from services.images.backfill import LocalTarget, Target, read_archive, run_backfill

    key = _api_key(args)
    if args.api and key is None:
        return 2
    items, failures = read_archive(Path(args.source), args.record_id_from, args.record_version)
    target: Target
    s = None
    if args.api:
        from semtag.remote import RemoteTarget

        target = RemoteTarget(args.api, key or "", retries=args.retries)
    else:
        from semtag.bootstrap import build_runtime
        from services import migrate

        s = _settings()
        migrate.upgrade(s.effective_database_url)
        rt = build_runtime(s, run_tasks=False)
        if s.embedded_tasks:
            rt.queue = _LeftForTheService()
        target = LocalTarget(rt, retries=args.retries)
    print(f"semtag ingest: {len(items)} file(s) from {args.source} into {target.description}", file=sys.stderr)
    report = run_backfill(items, target, workers=args.workers, progress=_Bars(), failures=failures)
    for line in report.summary(examples=args.show_failures):
        print(line, flush=True)
    if args.failures_csv:
        with open(args.failures_csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "code", "message"])
            w.writerows([f.file, f.code, f.message] for f in report.failures)
        print(f"semtag ingest: {len(report.failures)} failure(s) written to {args.failures_csv}", file=sys.stderr)
    if s is not None and report.sent:
        if s.embedded_tasks:
            print(f"semtag ingest: embedded mode: the images wait in the database {_where(s)}; the semtag serve "
                  "of this data folder reads and classifies them (at its start, or within about "
                  f"{s.reconcile_after_s + s.reconcile_every_s} s)", file=sys.stderr)
        else:
            print("semtag ingest: the images are queued for the ocr and inference workers", file=sys.stderr)
    if report.interrupted:
        return 130
    if report.stopped:
        return 2
    return 1 if report.failures else 0


def _reprocess_params(args: argparse.Namespace) -> dict[str, Any]:
    from services.errors import parse_params
    from services.images.schemas import ReprocessParams

    given: dict[str, Any] = {"steps": [x.strip() for x in args.steps.split(",") if x.strip()],
                             "dry_run": args.dry_run}
    for name in ("record_id", "record_version", "uploaded_from", "uploaded_before", "model_version"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    for name in ("status", "scale_source"):
        if getattr(args, name):
            given[name] = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
    # the job's parameter model: the same checks and defaults as POST /v1/admin/jobs
    return parse_params(ReprocessParams, given, "reprocess").model_dump(mode="json")


def _watch(read: Any, interval_s: float = 0.5) -> dict[str, Any]:
    """Poll a job (``read()`` → JobRead-shaped dict) until it finishes, with a progress bar."""
    import time

    from tqdm import tqdm

    with tqdm(total=1000, desc="reprocess", file=sys.stderr, disable=None, dynamic_ncols=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}") as bar:
        while True:
            job = read()
            bar.n = int(1000 * float(job.get("progress") or 0.0))
            bar.set_postfix_str(job.get("message") or "", refresh=True)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(interval_s)


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Read scales / classify again: a reprocess job, on the service (--api), on the workers, or in this process."""
    import json
    import threading

    params = _reprocess_params(args)
    key = _api_key(args)
    if args.api:
        if key is None:
            return 2
        from semtag.remote import RemoteTarget

        api = RemoteTarget(args.api, key, retries=args.retries)
        job = api.call("POST", "/v1/admin/jobs", {"kind": "reprocess", "params": params})
        print(f"semtag reprocess: job {job['id']} on {args.api}", file=sys.stderr)
        if not args.no_wait:
            job = _watch(lambda: api.call("GET", f"/v1/admin/jobs/{job['id']}"))
    else:
        from semtag.bootstrap import build_runtime
        from services import migrate
        from services.jobs.schemas import JobRead
        from services.jobs.service import cancel_job, create_job, get_job, run_job

        s = _settings()
        migrate.upgrade(s.effective_database_url)
        rt = build_runtime(s, run_tasks=False)
        row = create_job(rt, "reprocess", params, created_by="semtag reprocess")
        inline = s.embedded_tasks
        where = "running in this process (embedded mode)" if inline else "queued on the batch queue"
        print(f"semtag reprocess: job {row.id}, {where}; database {_where(s)}", file=sys.stderr)

        def read() -> dict[str, Any]:
            return JobRead.model_validate(get_job(rt, row.id)).model_dump(mode="json")

        runner = threading.Thread(target=run_job, args=(rt, row.id), daemon=True) if inline else None
        if runner is not None:
            runner.start()
        if args.no_wait and not inline:
            job = read()
        else:
            try:
                job = _watch(read)
            except KeyboardInterrupt:
                cancel_job(rt, row.id)
                print(f"semtag reprocess: job {row.id} cancelled (what it did so far stays)", file=sys.stderr)
                if runner is not None:
                    runner.join()
                return 130
            if runner is not None:
                runner.join()
                job = read()
    print(json.dumps({k: job.get(k) for k in ("id", "status", "error", "result")}))
    if job["status"] in ("queued", "running"):
        return 0
    return 0 if job["status"] == "succeeded" else 1


DESCRIPTION = """\
semtag reads the scale of scanning electron microscope (SEM) images and sorts them into the ten
categories of the NFFA-EUROPE SEM dataset and into subcategories. Run it as an HTTP service
(serve, worker) or straight on image files (scale, classify, cluster), and train, export and
register the classifier it uses (synth, train, plot-training, export, models)."""

EPILOG = """\
common commands:
  semtag scale IMAGE_OR_FOLDER ...            read the scale bar / metadata of images
  semtag classify IMAGE_OR_FOLDER ...         classify images with the active model
  semtag serve                                run the HTTP API on 127.0.0.1:8000
  semtag ingest FOLDER_OR_MANIFEST.csv        backfill an archive (resumable; --api URL for a remote one)
  semtag synth --out data/synth               write a small synthetic data set (demos, tests)
  semtag train --data DIR --arch alexnet --out runs/NAME
                                              train a classifier
  semtag export runs/NAME                     export a run to ONNX and register it
  semtag models list                          the registered models; activate one with
                                              semtag models activate VERSION

Run "semtag COMMAND --help" for the options of a command.
Settings come from SEMTAG_* environment variables (e.g. SEMTAG_DATA_DIR, default ./var)."""

# The analysis methods, from the clustering job's parameter model (light: no clustering code is imported;
# tests/platform/test_cli.py checks they agree with services.clustering.analysis.ALL_METHODS).
CLUSTER_METHODS: tuple[str, ...] = get_args(Method)

# Third-party libraries that log (at ERROR level, too) about files they can still partly read or that
# semtag reports itself, e.g. tifffile on a truncated TIFF. Quiet unless -v is given.
LIBRARY_LOGGERS = ("tifffile", "PIL", "imagecodecs")
IMAGE_COMMANDS = ("scale", "classify", "cluster", "train", "export")  # the ones that read images
VERBOSE_HELP = ("also show the warnings of the image libraries (tifffile, Pillow); "
                "semtag's own messages are always shown")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in the help, except for flags, options without a default and help texts that
    already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class TopHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``semtag --help``: the description and the epilog's command list printed as written."""


def _add(sub, name: str, help: str, func, **kw: Any) -> argparse.ArgumentParser:  # noqa: A002, ANN001
    """A subcommand whose --help starts with the same sentence as its line in ``semtag --help``."""
    sp = sub.add_parser(name, help=help, description=kw.pop("description", help[0].upper() + help[1:] + "."),
                        formatter_class=HelpFormatter, **kw)
    sp.set_defaults(func=func)
    if name in IMAGE_COMMANDS:  # also after the command: semtag scale -v FILE
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return sp


def build_parser() -> argparse.ArgumentParser:
    from semtag import __version__
    from services.clustering.schemas import ClusteringParams

    p = argparse.ArgumentParser(prog="semtag", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=TopHelpFormatter)
    p.add_argument("--version", action="version", version=f"semtag {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    sp = _add(sub, "serve", "run the HTTP API (embedded defaults: SQLite, ./var, in-process tasks)", cmd_serve)
    sp.add_argument("--host", default=os.environ.get("SEMTAG_HOST", "127.0.0.1"),
                    help="address to listen on (0.0.0.0: all interfaces); environment SEMTAG_HOST")
    sp.add_argument("--port", type=int, default=int(os.environ.get("SEMTAG_PORT", "8000")),
                    help="TCP port to listen on; environment SEMTAG_PORT")
    sp.add_argument("--workers", type=int, default=1, help="number of server processes")

    sp = _add(sub, "worker", "run a Celery worker (needs SEMTAG_BROKER_URL, e.g. a Redis URL)", cmd_worker)
    sp.add_argument("--queues", default="inference,ocr,batch,maintenance",
                    help="comma-separated queues to consume, from inference, ocr, batch, maintenance "
                         "(the reconciler and the events dispatcher; --beat adds it)")
    sp.add_argument("--concurrency", type=int, default=None,
                    help="worker processes or threads (default: one per CPU; 2 for the inference queue alone)")
    sp.add_argument("--pool", default=None, choices=["prefork", "solo", "threads"],
                    help="Celery execution pool (default: threads for the inference queue alone, else prefork)")
    sp.add_argument("--loglevel", default="INFO", help="Celery log level (DEBUG, INFO, WARNING, ERROR)")
    sp.add_argument("--name", default=None, help="worker node name (default: semtag-QUEUES@HOSTNAME)")
    sp.add_argument("--beat", action="store_true",
                    help="also schedule the periodic reconciler and events dispatcher (one worker only)")
    sp.add_argument("--metrics-port", type=int, default=None,
                    help="serve Prometheus metrics on this port (default: SEMTAG_WORKER_METRICS_PORT, or none)")

    sp = _add(sub, "db", "database migrations: upgrade, downgrade or check the schema", cmd_db)
    sp.add_argument("action", choices=["upgrade", "downgrade", "check"],
                    help="upgrade: migrate to REVISION (default head); downgrade: go back to REVISION "
                         "(default one step); check: compare the schema with the models, exit 1 on drift")
    sp.add_argument("revision", nargs="?", help="Alembic revision: an id, head, or a relative step such as -1")

    sp = _add(sub, "scale", "read the scale of images (metadata first, then OCR of the data bar)", cmd_scale)
    sp.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line instead of tab-separated text")

    sp = _add(sub, "classify", "classify images with the active model (or --model FILE.onnx)", cmd_classify)
    sp.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    sp.add_argument("--model", default=None, help="an exported .onnx file instead of the active registry model")
    sp.add_argument("--batch-size", type=int, default=32, help="images per inference batch")
    sp.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: its own choice)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line instead of tab-separated text")

    CP = ClusteringParams.model_fields  # the clustering job's defaults are the command's
    sp = _add(sub, "cluster", "discover subcategories (features, intrinsic dimension, autoencoder, clusterings, NMI)",
              cmd_cluster, description=(
                  "Discover subcategories. Without --features or --images: the classified images in the "
                  "database, with the active model's features, and the subcategories are written back. "
                  "With --features or --images: the analysis only, nothing is written to the database."))
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--features", help="a saved (N, D) .npy feature matrix (analysis only, nothing written to the db)")
    src.add_argument("--images", help="an image folder (with --model); category folders give labels")
    sp.add_argument("--labels", help="with --features: (N,) .npy of labels 0-9, -1 where unknown")
    sp.add_argument("--model", help="with --images: the exported .onnx model")
    sp.add_argument("--out", default="clustering", help="folder for the figures, analysis.json and report.html")
    sp.add_argument("--scale-min-nm", type=float, default=CP["scale_min_nm"].default,
                    help="only images whose scale bar stands for at least this many nanometres")
    sp.add_argument("--scale-max-nm", type=float, default=CP["scale_max_nm"].default,
                    help="only images whose scale bar stands for less than this many nanometres (excluded, as "
                         "in the scale bins: a 2000 nm bar is in 2 µm–5 µm)")
    sp.add_argument("--all-scales", action="store_true",
                    help="no scale selection: ignore --scale-min-nm and --scale-max-nm")
    sp.add_argument("--output", default=CP["output"].default, choices=["logits", "features"],
                    help="the model output used as features: logits (the paper's choice) or the pooled "
                         "penultimate layer")
    sp.add_argument("--within", default=CP["within"].default, choices=["category", "all"],
                    help="cut subcategories within each category, or over all selected images together")
    sp.add_argument("--method", default=CP["method"].default, choices=CLUSTER_METHODS,
                    help="the method whose hierarchy becomes the subcategories")
    sp.add_argument("--k", type=int, default=CP["k"].default,
                    help="subcategories per category (or in all, with --within all)")
    sp.add_argument("--methods", default=None,
                    help="comma-separated methods to analyse and compare (default: all five: "
                         f"{', '.join(CLUSTER_METHODS)})")
    sp.add_argument("--no-autoencoder", action="store_true",
                    help="cluster the features as they are, without the autoencoder's reduction")
    sp.add_argument("--code-dim", type=int, default=CP["code_dim"].default, help="size of the autoencoder's code")
    sp.add_argument("--complete-sample", type=int, default=None,
                    help="complete linkage on a random sample of this many images (default: all, if they "
                         "fit the memory budget)")
    sp.add_argument("--dp-k", type=int, default=CP["dp_k"].default,
                    help="neighbours used by the density-peaks density estimate")

    sp = _add(sub, "synth", "write synthetic SEM-like images of the ten categories (tests, demos)", cmd_synth)
    sp.add_argument("--out", required=True, help="folder to write (one subfolder per category, and MANIFEST.tsv)")
    sp.add_argument("--per-class", type=int, default=20, help="images per category")
    sp.add_argument("--size", default="1024x768", help="image size WxH in pixels, data bar included")
    sp.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    sp.add_argument("--format", default="png", choices=["png", "jpg", "tif"], help="image file format")

    from services.classify.schemas import ARCH_NAMES, MODE_NAMES, TrainingParams
    TP = TrainingParams.model_fields  # the training job's defaults are the command's

    sp = _add(sub, "train", "train a classifier on a labelled folder or a dataset manifest", cmd_train)
    sp.add_argument("--data", required=True, help="one folder per category, or a manifest.json of an earlier run")
    sp.add_argument("--arch", required=True, choices=ARCH_NAMES, help="network architecture")
    sp.add_argument("--mode", default=TP["mode"].default, choices=MODE_NAMES,
                    help="scratch: random start; feature-extraction: train the last layer of a checkpoint; "
                         "fine-tuning: train all layers of a checkpoint; fe+ft: the two in turn")
    sp.add_argument("--init", default=None,
                    help="checkpoint for the modes other than scratch: ImageNet weights file (no top) or a "
                         "run folder; nothing is downloaded")
    sp.add_argument("--epochs", type=int, default=TP["epochs"].default, help="training epochs (all stages together)")
    sp.add_argument("--fe-epochs", type=int, default=None,
                    help="fe+ft: epochs of feature extraction first (default: half of --epochs)")
    sp.add_argument("--batch-size", type=int, default=TP["batch_size"].default, help="images per training batch")
    sp.add_argument("--image-size", type=int, default=None,
                    help="input side in pixels (default: 299, the paper's size, meant for a GPU; 227 for "
                         "AlexNet; 64-75 trains in minutes on a CPU)")
    sp.add_argument("--lr", type=float, default=None,
                    help="learning rate (default 1e-3 from scratch and for feature extraction, 1e-4 for "
                         "fine tuning)")
    sp.add_argument("--seed", type=int, default=TP["seed"].default,
                    help="random seed of the split, initialisation and augmentation")
    sp.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    sp.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")

    sp = _add(sub, "plot-training", "accuracy and loss against epoch on train, validation and test (PNG)",
              cmd_plot_training)
    sp.add_argument("runs", nargs="+", help="run folders written by semtag train")
    sp.add_argument("--out", default="training.png", help="PNG file to write")
    sp.add_argument("--title", default=None,
                    help="figure title (default: the architectures and modes of the runs)")

    sp = _add(sub, "export", "export a run to ONNX (parity-checked) and register it", cmd_export)
    sp.add_argument("run", help="run folder written by semtag train")
    sp.add_argument("--int8", action="store_true", help="also write a static INT8 (QDQ) model")
    sp.add_argument("--no-register", action="store_true",
                    help="only write the .onnx file(s) into the run folder, do not add them to the registry")

    sp = _add(sub, "models", "the model registry: list, activate VERSION, import FILE.onnx", cmd_models)
    sp.add_argument("action", choices=["list", "activate", "import"],
                    help="list the registered models (* marks the active one), activate one, or register "
                         "an exported .onnx file")
    sp.add_argument("target", nargs="?", help="activate: a version from models list; import: a FILE.onnx")
    sp.add_argument("--json", action="store_true", help="list: one JSON object per line")
    sp.add_argument("--reclassify", action="store_true", help="activate: classify every image again with it")

    sp = _add(sub, "export-metadata", "write every image's metadata to a file: kit-sem, jsonld or semtag "
              "(NDJSON), or csv", cmd_export_metadata)
    sp.add_argument("--format", choices=["kit-sem", "jsonld", "semtag", "csv"], default="kit-sem",
                    help="kit-sem: KIT Data Manager SEM schema; jsonld: schema.org; semtag: the API's image record "
                         "(one JSON document a line); csv: one image a row")
    sp.add_argument("--out", required=True, help="the file to write (- for standard output)")
    sp.add_argument("--record-id", default=None, help="only the images of this record")
    sp.add_argument("--record-version", default=None, help="with --record-id: that version only")
    sp.add_argument("--category", default=None, help="only this category (slug, name or 0-9)")
    sp.add_argument("--subcategory", type=int, default=None, help="only this subcategory id")
    sp.add_argument("--status", default=None, help="only images in this status (pending, processing, done, failed)")
    sp.add_argument("--scale-bin", default=None, help="only this 1-2-5 scale-bar bin, e.g. 1um-2um")
    sp.add_argument("--pixel-size-min-nm", type=float, default=None, help="smallest pixel size")
    sp.add_argument("--pixel-size-max-nm", type=float, default=None, help="largest pixel size")
    sp.add_argument("--min-confidence", type=float, default=None, help="smallest category confidence")

    sp = _add(sub, "ingest", "backfill an archive (a folder or a manifest CSV) into semtag, resumably", cmd_ingest,
              description=(
                  "Backfill an archive into semtag: every image under a folder, or every row of a manifest CSV "
                  "(columns path, record_id, record_version, sidecar; only path is required; relative paths "
                  "from the manifest's folder). Files are hashed first and semtag is asked which it stores, so "
                  "a second run sends nothing and an interrupted run resumes. Without --api the files go "
                  "straight into this installation's database and blob store through the same ingest service "
                  "as an upload; with --api to a semtag over HTTP. Exits 1 when a file failed."))
    sp.add_argument("source", help="a folder of images (searched recursively), one image, or a manifest .csv")
    sp.add_argument("--record-id-from", choices=["dirname", "column"], default=None,
                    help="where each image's record id comes from: the name of its folder, or the manifest's "
                         "record_id column (default: the column when the manifest has one, else no record)")
    sp.add_argument("--record-version", default=None,
                    help="the record version for images whose manifest row names none")
    sp.add_argument("--api", default=None, help="a remote semtag, e.g. https://semtag.example.org (default: "
                                                "this installation, from the SEMTAG_* settings)")
    sp.add_argument("--key", default=None, help="with --api: an ingest API key (default: SEMTAG_API_KEY)")
    sp.add_argument("--workers", type=int, default=4, help="files hashed and sent in parallel")
    sp.add_argument("--retries", type=int, default=8,
                    help="tries again after an outage (503 with Retry-After, connection errors, a database outage) "
                         "before a file fails")
    sp.add_argument("--failures-csv", default=None, help="also write every failure (file, code, message) to this CSV")
    sp.add_argument("--show-failures", type=int, default=20, help="failures listed in the summary")

    sp = _add(sub, "reprocess", "read scales and/or classify again the images a filter selects (a reprocess job)",
              cmd_reprocess, description=(
                  "Read scales and/or classify again, as the reprocess job does: the images matching every "
                  "filter given (none: all). Reclassifying adds the active model's prediction; human labels "
                  "and curators' scale readings stay. With --api the job runs on that semtag; with a broker it "
                  "is queued for the batch worker; in embedded mode it runs in this process."))
    sp.add_argument("--steps", default="scale,classify", help="comma-separated: scale, classify")
    sp.add_argument("--record-id", default=None, help="only the images of this record")
    sp.add_argument("--record-version", default=None, help="with --record-id: that version only")
    sp.add_argument("--uploaded-from", default=None, help="uploaded at or after, e.g. 2026-01-31 (UTC)")
    sp.add_argument("--uploaded-before", default=None, help="uploaded before, e.g. 2026-02-01T00:00:00Z")
    sp.add_argument("--status", default=None, help="comma-separated image states: pending, processing, done, failed")
    sp.add_argument("--scale-source", default=None,
                    help="comma-separated: metadata, ocr, none (no scale found), unread (no reading stored)")
    sp.add_argument("--model-version", default=None, help="only images a prediction of this model version exists for")
    sp.add_argument("--dry-run", action="store_true", help="count what would be done, change nothing")
    sp.add_argument("--api", default=None, help="a remote semtag to run the job on (needs an admin key)")
    sp.add_argument("--key", default=None, help="with --api: an admin API key (default: SEMTAG_API_KEY)")
    sp.add_argument("--retries", type=int, default=8, help="with --api: tries again after an outage")
    sp.add_argument("--no-wait", action="store_true",
                    help="with --api or a broker: print the queued job and return instead of following it")

    sp = _add(sub, "apikey", "API keys (the new key is printed as the last line)", cmd_apikey)
    sp.add_argument("action", choices=["create", "list", "revoke"], help="create a key, list keys, or revoke --id")
    sp.add_argument("--role", choices=["ingest", "read", "curator", "admin"], default="read",
                    help="create: what the key may do")
    sp.add_argument("--name", default=None, help="create: a note to recognise the key by")
    sp.add_argument("--id", type=int, default=None, help="revoke: the key's id, from apikey list")
    return p


def _quiet_library_logs(verbose: bool) -> None:
    """tifffile and friends log through ``logging``; with no handler configured Python prints those
    records raw on stderr (e.g. ``<TiffTag.fromfile> raised TiffFileError(...)`` for a truncated TIFF),
    next to semtag's own message about the same file. Hide them, or with -v show them labelled."""
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if getattr(h, "semtag_cli", False)]:  # main() called again
            lg.removeHandler(h)
        if verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("semtag: %(name)s: %(message)s"))
            handler.semtag_cli = True  # type: ignore[attr-defined]
            lg.addHandler(handler)
            lg.propagate = False
            lg.setLevel(logging.WARNING)
        else:
            lg.propagate = True
            lg.setLevel(logging.CRITICAL + 1)


def _stdout_closed() -> int:
    """The reader of our stdout went away (``semtag classify ... | head``): stop quietly, as a
    command killed by SIGPIPE would. Python's "Note on SIGPIPE" recipe: point stdout at devnull so
    the flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests capturing it)
        pass
    return 128 + 13  # 141, the shell's status for a command ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    from services.errors import SemtagError, missing_extra

    try:
        args = build_parser().parse_args(argv)  # inside the try: semtag --help | head
        if args.command not in ("serve", "worker"):  # the services keep the libraries' logs for their operators
            _quiet_library_logs(args.verbose)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here rather than at exit
        return rc
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("semtag: interrupted", file=sys.stderr)
        return 130
    except SemtagError as exc:
        print(f"semtag: {exc.message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a training command in the slim serving install
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"semtag: {extra.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
