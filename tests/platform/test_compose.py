"""docker-compose.yml cannot run here (no Docker engine): check that it refers to real code."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from semtag.cli import build_parser
from semtag.settings import Settings
from workers.app import QUEUES

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_production_services_present():
    services = _compose()["services"]
    assert {"postgres", "redis", "api", "worker-inference", "worker-ocr", "worker-batch", "flower"} <= set(services)
    gpu = services["worker-inference"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]


def test_commands_parse_with_the_real_cli_and_queues_exist():
    services = _compose()["services"]
    worker_queues = set()
    for name, svc in services.items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "semtag":
            continue
        args = build_parser().parse_args(cmd[1:])  # exits (fails the test) on an unknown option
        assert callable(args.func), name
        if args.command == "worker":
            queues = args.queues.split(",")
            assert set(queues) <= set(QUEUES), name
            worker_queues |= set(queues)
    assert worker_queues == set(QUEUES)  # every queue has a worker
    flower = services["flower"]["command"]
    module = flower[flower.index("--app") + 1]
    assert hasattr(importlib.import_module(module), "app")


def test_environment_names_are_settings():
    compose = _compose()
    fields = {f"SEMTAG_{name.upper()}" for name in Settings.model_fields}
    for name, svc in compose["services"].items():
        for key in (svc.get("environment") or {}):
            if key.startswith("SEMTAG_"):
                assert key in fields, f"{name}: {key} is not a setting"
    assert compose["services"]["api"]["environment"]["SEMTAG_BROKER_URL"].startswith("redis://")


def test_dockerfile_copies_every_package():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("api", "workers", "services", "models", "migrations", "semtag"):
        assert f"COPY {pkg} {pkg}" in text


def test_serving_images_use_the_slim_install():
    """The API and the inference/OCR workers build without TensorFlow; only the batch worker trains."""
    services = _compose()["services"]
    targets = {name: (svc.get("build") or {}).get("target") for name, svc in services.items() if "build" in svc}
    assert targets["api"] == "serve" and targets["worker-ocr"] == "serve"
    assert targets["worker-inference"] == "serve-gpu" and targets["worker-batch"] == "train"
    text = (ROOT / "Dockerfile").read_text()
    serve = text[text.index("AS serve\n"):text.index("AS serve-gpu")]
    assert "[train]" not in serve and "tensorflow" not in serve.lower()
    assert '".[train]"' in text[text.index("AS train"):]


def test_services_keep_their_blobs_in_the_minio_service():
    """Every semtag service uses the object store (MinIO, a pinned release), with credentials of its own user."""
    from urllib.parse import urlsplit

    services = _compose()["services"]
    minio, setup = services["minio"], services["minio-setup"]
    for svc in (minio, setup):
        image, _, tag = svc["image"].partition(":")
        assert image.startswith("minio/") and tag.startswith("RELEASE.")  # pinned, never latest
    semtag = {name: svc for name, svc in services.items() if (svc.get("command") or [""])[0] == "semtag"}
    assert {"api", "worker-inference", "worker-ocr", "worker-batch"} <= set(semtag)
    for name, svc in semtag.items():
        env = svc["environment"]
        assert env["SEMTAG_BLOB_URL"].startswith("s3://"), name
        assert urlsplit(env["SEMTAG_S3_ENDPOINT_URL"]).hostname == "minio", name
        assert env["AWS_ACCESS_KEY_ID"] != minio["environment"]["MINIO_ROOT_USER"], name
    bucket = urlsplit(services["api"]["environment"]["SEMTAG_BLOB_URL"]).hostname
    assert f"mc mb --ignore-existing local/{bucket}" in " ".join(setup["entrypoint"])
    assert services["api"]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
