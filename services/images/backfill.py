"""Backfill: push an existing archive (a folder, or a manifest CSV) into semtag, resumably and in parallel.

The run hashes every file first, asks semtag which digests it stores already (``known_images``, the
function behind ``POST /v1/images/lookup``) and sends only what is missing: a second run over the same
archive uploads nothing, and an interrupted run resumes where it stopped. Files go through a
:class:`Target`: :class:`LocalTarget` calls the ingest service the API calls (same checks, same rows,
same queue), ``semtag.remote.RemoteTarget`` posts to a semtag over HTTP. Each file that cannot be stored
is a :class:`Failure` with the API's error code; one bad file never stops the run.

Manifest CSV (UTF-8, a header row; columns in any order):

========== ======== ====================================================================================
column     required meaning
========== ======== ====================================================================================
path       yes      the image file; a relative path is taken from the manifest's folder
record_id  no       the repository record the image belongs to (empty: none)
record_version no   the record's version (needs record_id)
sidecar    no       the instrument's .txt sidecar; empty: a .txt of the same stem beside the image, if any
========== ======== ====================================================================================
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from services.errors import BadInput, BadParams, SemtagError, is_transient
from services.images.schemas import MAX_LOOKUP, LookupResponse
from services.storage import sha256_file

log = logging.getLogger(__name__)

RecordFrom = Literal["dirname", "column"]
MANIFEST_COLUMNS = ("path", "record_id", "record_version", "sidecar")
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class ArchiveItem:
    """One image of the archive, as it will be sent."""

    path: Path
    record_id: str | None = None
    record_version: str | None = None
    sidecar: Path | None = None
    origin: str = ""                # where it came from, for messages: the path, or 'manifest line 7'
    sha256: str | None = None

    @property
    def label(self) -> str:
        return self.origin or str(self.path)


@dataclass
class Failure:
    """A file that was not stored: the API's error code and message (``missing_file``/``unreadable`` for
    files the client cannot read itself)."""

    file: str
    code: str
    message: str
    status: int | None = None


@dataclass
class Sent:
    """What the service answered for one file."""

    image_id: int
    duplicate: bool            # the bytes were stored already
    record_added: bool = False  # the image gained the item's record (version) now


class Target(Protocol):
    """Where the archive goes: this machine's database and blob store, or a semtag over HTTP."""

    description: str

    def lookup(self, sha256s: list[str]) -> LookupResponse: ...

    def send(self, item: ArchiveItem) -> Sent:
        """Store one file; raises :class:`~services.errors.SemtagError` with the API's code when it is refused
        (a final failure for this file) and :class:`TargetUnusable` when no further file can succeed."""
        ...


class TargetUnusable(SemtagError):
    """The target refuses everything (a bad key, a missing endpoint): the run stops."""

    code = "target_unusable"


class Progress(Protocol):
    """A progress display: a phase with a known total, advanced as work finishes (the CLI uses tqdm)."""

    def start(self, phase: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


# ---- reading the archive ----------------------------------------------------------------------------

def _sidecar_beside(path: Path) -> Path | None:
    """The instrument's text sidecar beside an image: same stem, .txt (the scale reader's rule)."""
    from services.scale.reader import sidecar_for

    return sidecar_for(path)


def scan_folder(root: Path, record_from: RecordFrom | None = None,
                record_version: str | None = None) -> list[ArchiveItem]:
    """Every image under ``root`` (recursively, sorted), with its .txt sidecar when one lies beside it.
    ``record_from='dirname'``: the record id is the name of the folder holding the image."""
    if record_from == "column":
        raise BadParams("--record-id-from column needs a manifest CSV (a folder has no columns)")
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    else:
        raise BadInput(f"{root} is neither a folder nor a file", "not_found")
    items = []
    for p in files:
        record = p.parent.name if record_from == "dirname" else None
        items.append(ArchiveItem(p, record or None, record_version if record else None, _sidecar_beside(p), str(p)))
    return items


def read_manifest(manifest: Path, record_from: RecordFrom | None = None,
                  record_version: str | None = None) -> tuple[list[ArchiveItem], list[Failure]]:
    """The manifest's rows as items (relative paths from the manifest's folder), and a failure for each
    row that names no file or a file that does not exist. Unknown columns are refused (a misspelt
    ``record_id`` would otherwise ingest everything without its record). ``record_from``: ``column``
    (the default when there is a record_id column) or ``dirname``."""
    manifest = Path(manifest)
    base = manifest.parent
    try:
        fh = open(manifest, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise BadInput(f"cannot read the manifest {manifest}: {exc.strerror or exc}", "not_found") from None
    with fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
        if "path" not in columns or unknown:
            problems = (["no 'path' column"] if "path" not in columns else []) + (
                [f"unknown column(s) {', '.join(map(repr, unknown))}"] if unknown else [])
            raise BadParams(f"manifest {manifest}: {'; '.join(problems)}; the columns are "
                            f"{', '.join(MANIFEST_COLUMNS)} (only path is required)")
        if record_from is None and "record_id" in columns:
            record_from = "column"
        if record_from == "column" and "record_id" not in columns:
            raise BadParams(f"manifest {manifest} has no record_id column (--record-id-from column)")
        reader.fieldnames = columns
        items: list[ArchiveItem] = []
        failures: list[Failure] = []
        try:
            for row in reader:
                line = reader.line_num
                origin = f"{manifest.name} line {line}"
                raw = (row.get("path") or "").strip()
                if not raw:
                    failures.append(Failure(origin, "missing_path", "the row has no path"))
                    continue
                path = Path(raw) if Path(raw).is_absolute() else base / raw
                origin = f"{raw} ({manifest.name} line {line})"
                if not path.is_file():
                    failures.append(Failure(origin, "missing_file", f"no such file: {path}"))
                    continue
                side_raw = (row.get("sidecar") or "").strip()
                sidecar = (Path(side_raw) if Path(side_raw).is_absolute() else base / side_raw) if side_raw \
                    else _sidecar_beside(path)
                if sidecar is not None and not sidecar.is_file():
                    failures.append(Failure(origin, "missing_file", f"no such sidecar: {sidecar}"))
                    continue
                if record_from == "column":
                    record = (row.get("record_id") or "").strip() or None
                elif record_from == "dirname":
                    record = path.parent.name or None
                else:
                    record = None
                version = (row.get("record_version") or "").strip() or record_version
                items.append(ArchiveItem(path, record, version, sidecar, origin))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BadInput(f"manifest {manifest} cannot be read near line {reader.line_num}: {exc}",
                           "bad_manifest") from None
    return items, failures


def read_archive(source: Path, record_from: RecordFrom | None = None,
                 record_version: str | None = None) -> tuple[list[ArchiveItem], list[Failure]]:
    """A manifest (``*.csv``), a folder or one image file."""
    source = Path(source)
    if source.suffix.lower() == ".csv" and source.is_file():
        return read_manifest(source, record_from, record_version)
    return scan_folder(source, record_from, record_version), []


# ---- running it --------------------------------------------------------------------------------------

@dataclass
class BackfillReport:
    files: int = 0                # items read from the archive (failed rows of the manifest included)
    new: int = 0                  # stored as new images
    linked: int = 0               # known bytes that gained the item's record (version)
    sent_known: int = 0           # sent, and the service had them already (a race or an earlier partial run)
    skipped_known: int = 0        # known with this record and sidecar: not sent at all
    skipped_repeated: int = 0     # the same bytes, record and sidecar twice in the archive: sent once
    failures: list[Failure] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None    # why the run stopped early (the target refuses everything: a bad key…)
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: hashing, lookup, sending

    @property
    def sent(self) -> int:
        return self.new + self.linked + self.sent_known

    def failure_counts(self) -> Counter[str]:
        return Counter(f.code for f in self.failures)

    def summary(self, examples: int = 10) -> list[str]:
        lines = [f"{self.files} file(s): {self.new} new, {self.linked} linked to their record, "
                 f"{self.skipped_known} already known (not sent), {self.skipped_repeated} repeated in the archive, "
                 f"{self.sent_known} sent but already stored, {len(self.failures)} failed"]
        if self.interrupted:
            lines.append("interrupted: run the same command again to resume (known files are skipped)")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        if self.failures:
            lines.append("failures by reason: " + ", ".join(f"{code} {n}" for code, n in
                                                           self.failure_counts().most_common()))
            for f in self.failures[:examples]:
                lines.append(f"  {f.file}: {f.code}: {f.message}")
            if len(self.failures) > examples:
                lines.append(f"  … and {len(self.failures) - examples} more")
        return lines


def _hash(item: ArchiveItem) -> ArchiveItem | Failure:
    try:
        item.sha256 = sha256_file(item.path)
    except OSError as exc:
        return Failure(item.label, "unreadable", f"cannot read {item.path}: {exc.strerror or exc}")
    return item


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, limit: int) -> Iterator:
    """``fn`` over ``items`` with at most ``limit`` calls queued at once; results as they finish."""
    pending: set[Future] = set()
    for it in items:
        pending.add(pool.submit(fn, it))
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
    for f in list(pending):
        yield f.result()


def _needs_sending(item: ArchiveItem, known: dict) -> bool:
    img = known.get(item.sha256)
    if img is None:
        return True
    if item.record_id is not None and not any(r.record_id == item.record_id and r.record_version == item.record_version
                                              for r in img.records):
        return True  # the upload is what links known bytes to another record
    return item.sidecar is not None and not img.has_sidecar


def run_backfill(items: list[ArchiveItem], target: Target, workers: int = 4, progress: Progress | None = None,
                 failures: list[Failure] | None = None) -> BackfillReport:
    """Hash, ask, send what is missing with ``workers`` in parallel; a report with every failure.
    KeyboardInterrupt stops the run between files (what was sent stays) and is reported, not raised."""
    bar = progress or NoProgress()
    report = BackfillReport(files=len(items) + len(failures or []), failures=list(failures or []))
    workers = max(1, workers)
    hashed: list[ArchiveItem] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="semtag-ingest") as pool:
        try:
            t = time.perf_counter()
            bar.start("hashing", len(items))
            for res in _bounded_map(pool, _hash, items, 4 * workers):
                if isinstance(res, Failure):
                    report.failures.append(res)
                else:
                    hashed.append(res)
                bar.advance()
            bar.finish()
            report.seconds["hashing"] = time.perf_counter() - t

            t = time.perf_counter()
            known: dict = {}
            digests = list(dict.fromkeys(i.sha256 for i in hashed if i.sha256))
            for k in range(0, len(digests), MAX_LOOKUP):
                for img in target.lookup(digests[k:k + MAX_LOOKUP]).known:
                    known[img.sha256] = img
            report.seconds["lookup"] = time.perf_counter() - t

            todo: list[ArchiveItem] = []
            seen: set[tuple] = set()
            for it in hashed:
                if not _needs_sending(it, known):
                    report.skipped_known += 1
                    continue
                key = (it.sha256, it.record_id, it.record_version, it.sidecar is not None)
                if key in seen:
                    report.skipped_repeated += 1
                    continue
                seen.add(key)
                todo.append(it)

            t = time.perf_counter()
            bar.start("sending", len(todo))
            _send_all(pool, target, todo, 2 * workers, report, bar)
            bar.finish()
            report.seconds["sending"] = time.perf_counter() - t
        except SemtagError as exc:  # at the lookup (a bad key, an outage that outlasted the retries)
            report.stopped = exc.message
        except KeyboardInterrupt:
            report.interrupted = True
            bar.finish()
    return report


def _send_all(pool: ThreadPoolExecutor, target: Target, todo: list[ArchiveItem], limit: int, report: BackfillReport,
              bar: Progress) -> None:
    """Send with at most ``limit`` files in flight, counting each outcome. On an interruption (or when the
    target becomes unusable) nothing more is started and the files in flight are still counted."""
    pending: set[Future] = set()
    interrupted = False

    def count(done: Iterable[Future]) -> None:
        nonlocal interrupted
        for f in done:
            try:
                outcome = f.result()
            except KeyboardInterrupt:  # raised inside a send: the same as at the keyboard
                interrupted = True
                continue
            if isinstance(outcome, TargetUnusable):
                report.stopped = report.stopped or outcome.message
            elif isinstance(outcome, Failure):
                report.failures.append(outcome)
            elif not outcome.duplicate:
                report.new += 1
            elif outcome.record_added:
                report.linked += 1
            else:
                report.sent_known += 1
            bar.advance()

    try:
        for item in todo:
            if interrupted or report.stopped:
                break
            pending.add(pool.submit(_send, target, item))
            if len(pending) >= limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                count(done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            count(done)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        for f in pending:
            f.cancel()
        count(f for f in pending if not f.cancelled())  # they finish: what they stored is counted
        raise KeyboardInterrupt


def _send(target: Target, item: ArchiveItem) -> Sent | Failure | TargetUnusable:
    try:
        return target.send(item)
    except TargetUnusable as exc:
        return exc
    except SemtagError as exc:
        return Failure(item.label, exc.code, exc.message, exc.status)
    except OSError as exc:
        return Failure(item.label, "unreadable", f"cannot read {item.path}: {exc.strerror or exc}")


# ---- straight into this installation's database and blob store -------------------------------------

class LocalTarget:
    """The ingest service in this process: the checks, rows, blobs and queued steps of an API upload.
    A database outage is retried with backoff (1, 2, 4… s, ``retries`` times), then the run stops (the
    next run resumes); every other refusal is final for its file."""

    def __init__(self, rt, retries: int = 5, sleep: Callable[[float], None] = time.sleep) -> None:  # noqa: ANN001
        from services.runtime import Runtime

        self.rt: Runtime = rt
        self.retries = retries
        self.sleep = sleep
        self.description = f"this installation ({rt.settings.effective_database_url.split('://', 1)[0]})"

    def _retrying(self, fn: Callable):  # noqa: ANN202
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == self.retries:
                    # every later file would wait the same way: the run stops, and the next one resumes
                    raise TargetUnusable(f"the database stayed unavailable after {self.retries + 1} tries "
                                         f"({type(exc).__name__})") from exc
                log.warning("backfill: %s, retrying", type(exc).__name__)
                self.sleep(min(30.0, 2.0 ** attempt))
        raise AssertionError("unreachable")

    def lookup(self, sha256s: list[str]) -> LookupResponse:
        from services.images.queries import known_images

        def ask() -> LookupResponse:
            with self.rt.session() as s:
                return known_images(s, sha256s)

        return self._retrying(ask)

    def send(self, item: ArchiveItem) -> Sent:
        from services.images.ingest import MAX_SIDECAR_BYTES, ingest_file
        from services.storage import writing

        def once() -> Sent:
            with ExitStack() as stack:
                w = stack.enter_context(writing(self.rt.store, self.rt.settings.max_upload_bytes))
                _copy(item.path, w)
                sw = None
                if item.sidecar is not None:
                    sw = stack.enter_context(writing(self.rt.store, MAX_SIDECAR_BYTES))
                    _copy(item.sidecar, sw)
                res = ingest_file(self.rt, w, item.path.name, item.record_id, sw, item.record_version)
            return Sent(res.image_id, res.duplicate, res.record_added)

        return self._retrying(once)


def _copy(path: Path, writer) -> None:  # noqa: ANN001
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            writer.write(chunk)
    writer.close()


def default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 1)))
