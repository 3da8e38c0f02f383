"""Ingest: a streamed file becomes a stored blob, an ``images`` row, its record link and queued work.

Idempotent by content: the same bytes return the existing image and queue nothing; under another
record (or record version) they gain that record too. Bytes and row are committed before anything is
enqueued. The blob is moved into the store inside the transaction that inserts its row, so a takedown
of the same bytes running at the same time (``services.records``) cannot erase a blob a new row needs.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.errors import BadInput, QueueUnavailable
from services.images import prepared
from services.images.imaging import EmptyFile, probe_keeping
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, Runtime
from services.storage import BlobWriter
from services.tables import Image, ImageRecord, ImageStatus, StepState

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


MAX_VERSION = 64


def clean_record_version(version: str | None, record_id: str | None) -> str:
    """The stored form of a record version: ``""`` for none."""
    if version is None or version == "":
        return ""
    if record_id is None:
        raise BadInput("record_version needs a record_id", "bad_record_version")
    if len(version) > MAX_VERSION or any(unicodedata.category(ch) == "Cc" for ch in version):
        raise BadInput(f"record_version must be at most {MAX_VERSION} printable characters", "bad_record_version")
    return version


@dataclass
class IngestResult:
    image_id: int
    sha256: str
    filename: str
    status: str
    duplicate: bool
    record_id: str | None = None          # the record this upload named (now linked to the image)
    record_version: str | None = None
    record_added: bool = False            # this upload linked the image to that record (version) anew
    records: list[tuple[str, str | None]] | None = None  # every (record, version) the image belongs to


def _link(s: Session, image: Image, record_id: str | None, version: str) -> bool:
    """Link the image to the record version; False when it already was."""
    if record_id is None:
        return False
    exists = s.scalar(select(ImageRecord.id).where(ImageRecord.image_id == image.id,
                                                  ImageRecord.record_id == record_id,
                                                  ImageRecord.record_version == version))
    if exists is not None:
        return False
    s.add(ImageRecord(image_id=image.id, record_id=record_id, record_version=version))
    s.flush()
    return True


def records_of(s: Session, image_id: int) -> list[tuple[str, str | None]]:
    rows = s.execute(select(ImageRecord.record_id, ImageRecord.record_version)
                     .where(ImageRecord.image_id == image_id).order_by(ImageRecord.id)).all()
    return [(r, v or None) for r, v in rows]


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
    record_version: str | None = None,
) -> IngestResult:
    """Validate the streamed file in ``writer``, store it and its row, then enqueue its processing.

    Raises :class:`~services.images.imaging.ImageRejected` / :class:`BadInput`; the writer's
    temporary file is then left for the caller to discard.
    """
    name = clean_filename(filename)
    record_id = clean_record_id(record_id)
    version = clean_record_version(record_version, record_id)
    writer.close()
    if writer.size == 0:
        raise EmptyFile("the file is empty")
    # a grey JPEG's check decodes it at the classifier's scale: those pixels are kept (services.images.prepared)
    info, kept = probe_keeping(writer.path, rt.settings.max_pixels, rt.settings.max_decoded_bytes,
                               keep_min_side=rt.settings.inference_input_side or None)
    sha = writer.sha256

    known = _add_to_known(rt, sha, record_id, version, sidecar)
    if known is not None:
        return known
    try:
        with rt.session() as s:
            image = Image(
                sha256=sha, filename=name, bytes=writer.size,
                width=info.width, height=info.height, format=info.format, bit_depth=info.bit_depth,
                pages=info.pages, mode=info.mode, storage_key="", sidecar_key=None,
                status=ImageStatus.pending.value, scale_state=StepState.pending.value,
                inference_state=StepState.pending.value,
            )
            s.add(image)
            s.flush()  # holds the sha256's unique slot (and, on SQLite, the write lock) from here to commit
            image.storage_key = rt.store.commit(writer, _SUFFIX.get(info.format, ""))
            image.sidecar_key = _store_sidecar(rt, sidecar)
            image.input_key = prepared.store(rt.store, kept) if kept is not None else None
            _link(s, image, record_id, version)
            image_id = image.id
    except IntegrityError:  # the same bytes arrived concurrently: the other upload won
        known = _add_to_known(rt, sha, record_id, version, sidecar)
        if known is None:
            raise
        return known

    enqueue_processing(rt, image_id)
    return IngestResult(image_id, sha, name, ImageStatus.pending.value, False, record_id, version or None,
                        record_id is not None, [(record_id, version or None)] if record_id else [])


def _add_to_known(rt: Runtime, sha: str, record_id: str | None, version: str,
                  sidecar: BlobWriter | None) -> IngestResult | None:
    """For bytes already stored: link them to the record, keep a sidecar they lacked; None when unknown.
    The row is locked (PostgreSQL) so that a takedown of the image waits for, or is seen by, this link."""
    for _attempt in range(3):
        try:
            with rt.session() as s:
                existing = s.scalar(select(Image).where(Image.sha256 == sha).with_for_update())
                if existing is None:
                    return None
                if existing.sidecar_key is None and sidecar is not None:
                    existing.sidecar_key = _store_sidecar(rt, sidecar)
                added = _link(s, existing, record_id, version)
                return IngestResult(existing.id, sha, existing.filename, existing.status, True, record_id,
                                    version or None, added, records_of(s, existing.id))
        except IntegrityError:  # the same link was added concurrently: it exists now
            continue
    raise BadInput("the image could not be linked to the record; retry", "link_conflict")


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
