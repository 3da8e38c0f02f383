"""Ingest: a streamed file becomes a stored blob, an ``images`` row and queued work.

Idempotent by content: the same bytes return the existing image and queue nothing.
Bytes and row are committed before anything is enqueued.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.errors import BadInput, QueueUnavailable
from services.images.imaging import EmptyFile, probe
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, Runtime
from services.storage import BlobWriter
from services.tables import Image, ImageStatus, StepState

MAX_FILENAME = 255
log = logging.getLogger(__name__)
MAX_SIDECAR_BYTES = 1024 * 1024


# Embeddings, overrides and isolates can make 'gpj.exe' read as 'exe.jpg'; marks (LRM, RLM) and the
# zero-width joiner of emoji sequences are harmless and stay.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_filename(name: str | None) -> str:
    """The file's base name, or a clear error for path traversal and control characters."""
    if name is None or name == "":
        return "upload"
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS for ch in name):
        raise BadInput("filename contains control or bidirectional-override characters", "bad_filename")
    parts = set(PurePosixPath(name).parts) | set(PureWindowsPath(name).parts)
    if ".." in parts or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise BadInput(f"filename {name!r} contains a path; send a plain file name", "bad_filename")
    base = PureWindowsPath(PurePosixPath(name).name).name
    if base in ("", ".", ".."):
        raise BadInput(f"filename {name!r} is not a file name", "bad_filename")
    if len(base) > MAX_FILENAME:
        raise BadInput(f"filename is longer than {MAX_FILENAME} characters", "bad_filename")
    return base


def clean_record_id(record_id: str | None) -> str | None:
    if record_id is None or record_id == "":
        return None
    if len(record_id) > 255 or any(unicodedata.category(ch) == "Cc" for ch in record_id):
        raise BadInput("record_id must be at most 255 printable characters", "bad_record_id")
    return record_id


@dataclass
class IngestResult:
    image_id: int
    sha256: str
    filename: str
    status: str
    duplicate: bool
    record_id: str | None = None  # the record the stored image belongs to (for known bytes: the first one)


_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp"}


def _store_sidecar(rt: Runtime, sidecar: BlobWriter | None) -> str | None:
    if sidecar is None:
        return None
    if sidecar.size == 0:
        raise BadInput("the sidecar file is empty", "empty_sidecar")
    return rt.store.commit(sidecar, ".txt")


def ingest_file(
    rt: Runtime,
    writer: BlobWriter,
    filename: str | None,
    record_id: str | None = None,
    sidecar: BlobWriter | None = None,
) -> IngestResult:
    """Validate the streamed file in ``writer``, store it and its row, then enqueue its processing.

    Raises :class:`~services.images.imaging.ImageRejected` / :class:`BadInput`; the writer's
    temporary file is then left for the caller to discard.
    """
    name = clean_filename(filename)
    record_id = clean_record_id(record_id)
    writer.close()
    if writer.size == 0:
        raise EmptyFile("the file is empty")
    info = probe(writer.path, rt.settings.max_pixels)
    sha = writer.sha256

    with rt.session() as s:
        existing = s.scalar(select(Image).where(Image.sha256 == sha))
        if existing is not None:
            if existing.sidecar_key is None and sidecar is not None:
                existing.sidecar_key = _store_sidecar(rt, sidecar)
            if existing.record_id is None and record_id:
                existing.record_id = record_id
            return IngestResult(existing.id, sha, existing.filename, existing.status, True, existing.record_id)

    key = rt.store.commit(writer, _SUFFIX.get(info.format, ""))
    sidecar_key = _store_sidecar(rt, sidecar)
    try:
        with rt.session() as s:
            image = Image(
                sha256=sha, filename=name, record_id=record_id, bytes=writer.size,
                width=info.width, height=info.height, format=info.format, bit_depth=info.bit_depth,
                pages=info.pages, mode=info.mode, storage_key=key, sidecar_key=sidecar_key,
                status=ImageStatus.pending.value, scale_state=StepState.pending.value,
                inference_state=StepState.pending.value,
            )
            s.add(image)
            s.flush()
            image_id = image.id
    except IntegrityError:  # the same bytes arrived concurrently: the other upload won
        with rt.session() as s:
            existing = s.scalars(select(Image).where(Image.sha256 == sha)).one()
            return IngestResult(existing.id, sha, existing.filename, existing.status, True, existing.record_id)

    enqueue_processing(rt, image_id)
    return IngestResult(image_id, sha, name, ImageStatus.pending.value, False, record_id)


def enqueue_processing(rt: Runtime, image_id: int, steps: tuple[str, ...] = (TASK_READ_SCALE, TASK_CLASSIFY)) -> bool:
    """Queue the image's steps. With the broker unavailable the image stays pending, stored and committed,
    and the reconciler queues it once the broker is back: the upload still succeeded. False then."""
    for task in steps:
        try:
            rt.queue.enqueue(task, image_id)
        except QueueUnavailable:
            log.warning("image %s stays pending: the queue is unavailable; the reconciler will queue it", image_id)
            return False
    return True
