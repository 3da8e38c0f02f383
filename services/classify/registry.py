"""The model registry: exported ONNX files, their provenance and metrics, and which one is active.

The one place that knows what an exported model carries (:data:`META_KEY`) and which model is
active (:func:`active`); the engine, the pipeline, the queries and the training code ask here.

A registered file is copied into ``<data_dir>/models/`` under its version name, so the registry
never points at a run folder that may be moved or deleted. Exactly one model per task is active
(enforced by a partial unique index as well as by :func:`activate`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.errors import BadInput, NotFound
from services.storage import sha256_file
from services.tables import ModelVersion

# The ONNX metadata entry that holds semtag's description of a model (preprocessing, classes, temperature…).
META_KEY = "semtag"


def read_meta(path: Path | str) -> dict[str, Any]:
    """The semtag metadata an exported model carries (preprocessing, classes, temperature, outputs)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInput(f"{path} is not an ONNX model: {exc}", "bad_model") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise BadInput(f"{path} has no '{META_KEY}' metadata (preprocessing, classes); export it with "
                       "`semtag export RUN`", "bad_model")
    try:
        meta = json.loads(props[META_KEY])
    except ValueError as exc:
        raise BadInput(f"{path}: its '{META_KEY}' metadata is not JSON", "bad_model") from exc
    for key in ("classes", "preprocessing", "outputs", "arch"):
        if key not in meta:
            raise BadInput(f"{path}: metadata lacks {key!r}", "bad_model")
    return meta


def _version_name(meta: dict[str, Any], sha: str) -> str:
    run = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(meta.get("run_name") or meta["arch"]))[:36]
    precision = meta.get("precision", "fp32")
    return f"{run}-{precision}-{sha[:8]}"


def register(session: Session, path: Path | str, models_dir: Path | str, task: str = "classification") -> ModelVersion:
    """Register an exported model (idempotent by file sha256); returns the row."""
    meta = read_meta(path)
    sha = sha256_file(path)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.file_sha256 == sha))
    if existing is not None:
        return existing
    version = _version_name(meta, sha)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / f"{version}.onnx"
    tmp = dest.with_suffix(".onnx.part")
    shutil.copyfile(path, tmp)
    tmp.replace(dest)
    row = ModelVersion(version=version, task=task, architecture=meta["arch"], mode=meta.get("mode"),
                       parent=meta.get("parent"), dataset_manifest_sha256=meta.get("manifest_sha256"),
                       metrics=meta.get("metrics", {}), file_path=str(dest.resolve()), file_sha256=sha, active=False)
    session.add(row)
    session.flush()
    return row


def get(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None and version.isascii() and version.isdigit() and len(version) <= 18:
        row = session.get(ModelVersion, int(version))
    if row is None:
        raise NotFound(f"no model {version!r} in the registry")
    return row


def active(session: Session, task: str = "classification") -> ModelVersion | None:
    """The one active model of ``task`` (the registry keeps at most one), or None."""
    return session.scalar(select(ModelVersion).where(ModelVersion.task == task, ModelVersion.active.is_(True)))


def activate(session: Session, version: str) -> ModelVersion:
    """Make ``version`` the one active model of its task (the previous one is deactivated)."""
    row = get(session, version)
    if not Path(row.file_path).is_file():
        raise BadInput(f"model {row.version}: its file {row.file_path} is missing", "model_file_missing")
    if sha256_file(row.file_path) != row.file_sha256:
        raise BadInput(f"model {row.version}: its file {row.file_path} changed since it was registered",
                       "model_file_changed")
    previous = active(session, row.task)
    session.execute(update(ModelVersion).where(ModelVersion.task == row.task, ModelVersion.id != row.id)
                    .values(active=False))
    session.flush()
    row.active = True
    session.flush()
    if previous is None or previous.id != row.id:
        from services.events import outbox as events  # here: the events domain reads images, which reads us

        events.model_activated(session, row, previous.version if previous is not None else None)
    return row


def list_models(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))
