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

    exts = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() in exts)
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
