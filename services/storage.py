"""Content-addressed blob store.

Blobs are written through a :class:`BlobWriter` (streamed to a local spool file, hashed and
size-limited as they arrive) and committed under their sha256: the key is
``<aa>/<bb>/<sha256><suffix>`` in every store, so a tree of blobs can move between them as it is.
:class:`BlobStore` is the interface; :class:`LocalBlobStore` keeps files under a folder and
:class:`S3BlobStore` in an S3-compatible object store (``SEMTAG_BLOB_URL=s3://bucket/prefix``).

Readers never take a path for granted. ``local_file(key)`` / ``local_files(keys)`` give a file on
local disk for as long as the ``with`` block lasts (the blob itself, or an S3 object in a
size-bounded cache: :class:`DiskCache`); ``open(key)`` is a seekable file that reads only the
byte ranges asked for, and ``read_range`` one range, for work that needs part of a file
(a TIFF's tags, one band of strips).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from services.errors import BlobStoreUnavailable, PayloadTooLarge

log = logging.getLogger(__name__)


def sha256_file(path: Path | str) -> str:
    """sha256 of a file on disk, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BlobTooLarge(PayloadTooLarge):
    code = "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"file exceeds the size limit of {limit} bytes")
        self.limit = limit


class BlobMissing(FileNotFoundError):
    """No blob under this key (never stored, or deleted): a fault of the image, not an outage."""

    def __init__(self, key: str, where: str = "") -> None:
        super().__init__(errno.ENOENT, f"blob {key} is not in the blob store{' ' + where if where else ''}")
        self.key = key


class BlobCorrupt(OSError):
    """The bytes read back do not hash to the sha256 in their key."""


class BlobWriter:
    """A temporary file being filled chunk by chunk, with its running sha256 and size."""

    def __init__(self, path: Path, max_bytes: int | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._fh: BinaryIO | None = open(path, "wb")

    def write(self, chunk: bytes) -> None:
        if self._fh is None:
            raise ValueError("writer is closed")
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise BlobTooLarge(self.max_bytes)
        self._hash.update(chunk)
        self._fh.write(chunk)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class BlobStore(Protocol):
    root: Path  # the local folder of this store's files (local blobs; for S3, the long-lived copies)
    tmp: Path   # where writers spool uploads before commit

    def new_writer(self, max_bytes: int | None = None) -> BlobWriter: ...
    def commit(self, writer: BlobWriter, suffix: str = "") -> str: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def local_files(self, keys: Sequence[str | None],
                    missing_ok: bool = False) -> AbstractContextManager[list[Path | None]]: ...
    def local_file(self, key: str) -> AbstractContextManager[Path]: ...
    def local_copy(self, key: str) -> Path: ...
    def open(self, key: str) -> BinaryIO: ...
    def read_range(self, key: str, start: int, length: int) -> bytes: ...
    def check(self) -> None: ...
    def describe(self) -> str: ...


def key_for(sha256: str, suffix: str = "") -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"invalid blob key {key!r}")
    return key


def sha_of_key(key: str) -> str:
    """The sha256 a content-addressed key names (its file name up to the suffix)."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


class _Reads:
    """What every store shares: uploads spooled under ``tmp``, content-addressed keys, and what derives
    from ``local_files``."""

    tmp: Path

    def new_writer(self, max_bytes: int | None = None) -> BlobWriter:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        os.close(fd)
        return BlobWriter(Path(name), max_bytes)

    def key_for(self, sha256: str, suffix: str = "") -> str:
        return key_for(sha256, suffix)


    def local_files(self, keys: Sequence[str | None],
                    missing_ok: bool = False) -> AbstractContextManager[list[Path | None]]:
        raise NotImplementedError

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """The blob as a file on local disk while the block runs; :class:`BlobMissing` when there is none."""
        with self.local_files([key]) as paths:
            path = paths[0]
            assert path is not None
            yield path


class LocalBlobStore(_Reads):
    """Blobs as files ``<root>/<aa>/<bb>/<sha256><suffix>``; temporary files in ``<root>/tmp``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def commit(self, writer: BlobWriter, suffix: str = "") -> str:
        """Move the finished temporary file into place; idempotent for identical content."""
        writer.close()
        key = self.key_for(writer.sha256, suffix)
        dest = self.local_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            writer.path.unlink(missing_ok=True)
        else:
            with open(writer.path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(writer.path, dest)
        return key

    def local_path(self, key: str) -> Path:
        """Where the blob lies (this store only: an S3 store has no such path)."""
        return self.root / check_key(key)

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    @contextmanager
    def local_files(self, keys: Sequence[str | None], missing_ok: bool = False) -> Iterator[list[Path | None]]:
        """The blobs' own paths. With ``missing_ok`` a missing blob's path is given all the same (opening it
        raises FileNotFoundError), so that a batch can fail that image alone."""
        paths: list[Path | None] = [None if k is None else self.local_path(k) for k in keys]
        if not missing_ok:
            for k, p in zip(keys, paths):
                if k is not None and p is not None and not p.is_file():
                    raise BlobMissing(k, f"({self.root})")
        yield paths

    def local_copy(self, key: str) -> Path:
        """A local file with the blob's bytes that stays: here, the blob itself."""
        path = self.local_path(key)
        if not path.is_file():
            raise BlobMissing(key, f"({self.root})")
        return path

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.local_path(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(key, f"({self.root})") from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with self.open(key) as fh:
            fh.seek(start)
            return fh.read(length)

    def check(self) -> None:
        probe = self.tmp / f"check-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"ok")
        probe.unlink()

    def describe(self) -> str:
        return str(self.root.resolve())


@contextmanager
def writing(store: BlobStore, max_bytes: int | None = None) -> Iterator[BlobWriter]:
    """A writer whose temporary file is removed unless committed."""
    writer = store.new_writer(max_bytes)
    try:
        yield writer
    finally:
        writer.discard()  # no-op after commit: the file was moved away


# ---- the local disk cache ----------------------------------------------------------------------

class DiskCache:
    """Files under ``root`` by key, at most ``max_bytes`` of them, least recently used evicted first.

    Shared by every process that uses the same folder (the workers of one host). A file in use is
    *pinned*: its reader holds a shared ``flock`` on it from before it becomes visible until the
    ``with`` block ends, and eviction (which takes an exclusive lock without waiting) passes it over.
    So a decoder can open the path as often as it likes; the bound is exceeded only by files in use.
    Last use is the file's mtime (touched on every hit); each insertion scans the folder, so the cost
    of an insertion grows with the number of cached files (a few ms per thousand).

    Why not the ``diskcache`` package: it hands out values or open handles and may delete a file that
    a reader still opens by path; decoders here (tifffile, Pillow, OpenCV) open paths, several times.
    """

    PART = ".part"

    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / self.PART).mkdir(parents=True, exist_ok=True)
        self._clean_parts(older_than_s=3600)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _clean_parts(self, older_than_s: float) -> None:
        cutoff = time.time() - older_than_s
        for entry in os.scandir(self.root / self.PART):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    @staticmethod
    def _open_pinned(path: Path) -> int | None:
        """A descriptor of the file at ``path`` holding a shared lock, or None when it is not there."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:  # evicted (and perhaps fetched again) meanwhile
                os.close(fd)
                return None
            os.utime(path)  # last use, for LRU
            return fd
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def pin(self, key: str, fetch: Callable[[Path], None] | None = None,
            revalidate: Callable[[], bool] | None = None) -> tuple[Path, int] | None:
        """The cached file for ``key`` and a descriptor that pins it (close it when done).

        When not cached, ``fetch(part)`` writes the bytes to ``part`` (None: give up and return None).
        ``revalidate()`` is asked on a hit; False drops the cached copy (the blob was deleted).
        """
        path = self.path(key)
        fd = self._open_pinned(path)
        if fd is not None:
            try:
                valid = revalidate is None or revalidate()
            except BaseException:
                os.close(fd)
                raise
            if valid:
                return path, fd
            os.close(fd)
            self.discard(key)
            return None
        if fetch is None:
            return None
        part = self.root / self.PART / f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        taken = False
        try:
            fetch(part)
            fd = os.open(part, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH)  # pinned before anyone can see it
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(part, path)  # never replaces: a file someone else pinned stays the one at the path
            taken = True
        except FileExistsError:
            pass  # another process fetched it first; take theirs
        finally:
            part.unlink(missing_ok=True)
            if fd is not None and not taken:
                os.close(fd)
        if not taken or fd is None:
            return self.pin(key, fetch, None)
        self.evict()
        return path, fd

    def adopt(self, key: str, src: Path) -> None:
        """Move a file that already holds the key's bytes (a committed upload) into the cache."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, path)
        except FileExistsError:
            pass
        except OSError as exc:  # another file system (EXDEV) or no hard links: just not cached
            log.debug("blob cache: cannot adopt %s: %s", src, exc)
            return
        finally:
            src.unlink(missing_ok=True)
        self.evict()

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def _entries(self) -> list[tuple[float, int, str]]:
        out = []
        stack = [str(self.root)]
        while stack:
            for entry in os.scandir(stack.pop()):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != self.PART:
                        stack.append(entry.path)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, entry.path))
        return out

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self) -> int:
        """Remove least recently used files that nobody has pinned until the cache fits; bytes left."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _mtime, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                total -= size
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # in use
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
                total -= size
            except FileNotFoundError:
                total -= size
            finally:
                os.close(fd)
        return total


# ---- S3 ------------------------------------------------------------------------------------------

def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (``bucket``, ``some/prefix``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"blob URL {url!r} is not of the form s3://bucket/prefix")
    bucket = parts.netloc
    if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in ".-" for c in bucket):
        raise ValueError(f"blob URL {url!r}: {bucket!r} is not an S3 bucket name (3–63 of a-z 0-9 . -)")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError:
            raise ValueError(f"blob URL {url!r}: the prefix {prefix!r} is not a plain path") from None
    return bucket, prefix


def _unavailable(exc: Exception, what: str) -> BlobStoreUnavailable:
    return BlobStoreUnavailable(f"the object store is unavailable ({what}: {type(exc).__name__}: {exc}); retry later",
                                headers={"Retry-After": "30"})


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _RangeReader(io.RawIOBase):
    """A seekable read-only view of one object: every read is one ranged GET."""

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        super().__init__()
        self._store, self.key, self.size, self._pos = store, key, size, 0
        self.name = f"s3://{store.bucket}/{store.object_key(key)}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self._pos)
        if n <= 0:
            return 0
        data = self._store._get_range(self.key, self._pos, n)
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)


class S3BlobStore(_Reads):
    """Blobs as objects ``<prefix>/<aa>/<bb>/<sha256><suffix>`` in an S3 bucket (AWS, MinIO, Ceph…), via boto3.

    * **Writes** spool to a local file (``tmp``) while the sha256 and the size are computed, so that the
      upload can be probed and refused before anything is sent; :meth:`commit` then uploads it under its
      content address (one PUT, or a multipart upload in ``part_size`` parts sent concurrently, by
      s3transfer), skips the upload when the object is already there, and moves the spool file into the
      cache, since this host is likely to read it next.
    * **Whole reads** (decoding) go through the :class:`DiskCache`: a hit costs one HEAD (so a deleted
      blob is not served from any host's cache), a miss a download that is checked against the sha256.
    * **Partial reads**: :meth:`open` (a seekable file that fetches only the ranges read, in
      ``block_size`` steps) and :meth:`read_range`.
    * Endpoint from ``endpoint_url`` (MinIO's, say); region and credentials from the standard AWS
      sources (``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, web identity,
      instance roles). An unreachable store raises :class:`BlobStoreUnavailable` (503, transient).
    """

    def __init__(self, bucket: str, prefix: str, *, cache: DiskCache, spool_dir: Path | str,
                 copies_dir: Path | str, endpoint_url: str | None = None, part_size: int = 16 * 1024 * 1024,
                 max_concurrency: int = 8, client_factory: Callable[[], Any] | None = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.cache = cache
        self.tmp = Path(spool_dir)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.root = Path(copies_dir)
        self.part_size = max(5 * 1024 * 1024, part_size)  # S3's smallest part
        self.max_concurrency = max_concurrency
        self._client_factory = client_factory or self._default_client
        self._client_obj: Any = None
        self._client_pid = -1
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> S3BlobStore:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **kw)

    # -- plumbing

    def _default_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=60,
                        max_pool_connections=max(10, 2 * self.max_concurrency),
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    @property
    def client(self) -> Any:
        """One boto3 client per process (clients are thread-safe but must not cross a fork)."""
        if self._client_pid != os.getpid():
            with self._lock:
                if self._client_pid != os.getpid():
                    self._client_obj = self._client_factory()
                    self._client_pid = os.getpid()
        return self._client_obj

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                              max_concurrency=self.max_concurrency, use_threads=True)

    def _call(self, what: str, key: str | None, fn: Callable[[], Any]) -> Any:
        """Run one request, translating botocore's errors into the core's."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            code = _error_code(exc)
            if key is not None and code in ("404", "NoSuchKey", "NotFound"):
                raise BlobMissing(key, f"(s3://{self.bucket}/{self.prefix})") from None
            raise _unavailable(exc, what) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise _unavailable(exc, what) from exc

    def _head(self, key: str) -> dict[str, Any]:
        return self._call("HEAD", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self.object_key(key)))

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        def get() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key),
                                          Range=f"bytes={start}-{start + length - 1}")["Body"]
            try:
                return body.read()
            finally:
                body.close()
        return self._call("ranged GET", key, get)

    def _download(self, key: str, dest: Path) -> None:
        """One streamed GET into ``dest``, hashed on the way and checked against the key's sha256."""
        h = hashlib.sha256()

        def get() -> None:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
            try:
                with open(dest, "wb") as out:
                    for chunk in body.iter_chunks(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
            finally:
                body.close()
        self._call("GET", key, get)
        want = sha_of_key(key)
        if len(want) == 64 and h.hexdigest() != want:
            raise BlobCorrupt(f"blob {key}: the bytes read from the object store do not match its sha256")

    # -- the store

    def commit(self, writer: BlobWriter, suffix: str = "") -> str:
        """Upload the spooled file under its content address (multipart above ``part_size``); idempotent."""
        writer.close()
        key = self.key_for(writer.sha256, suffix)
        if not self.exists(key):
            extra = {"Metadata": {"sha256": writer.sha256}, "ContentType": _CONTENT_TYPES.get(suffix,
                                                                                              "application/octet-stream")}
            self._call("upload", None, lambda: self.client.upload_file(
                str(writer.path), self.bucket, self.object_key(key), ExtraArgs=extra, Config=self._transfer_config()))
        self.cache.adopt(key, writer.path)
        return key

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except BlobMissing:
            return False

    def delete(self, key: str) -> None:
        """Erase the object (and this host's cached and long-lived copies). Other hosts' caches drop their
        copy at its next use (every hit is checked) or when evicted."""
        self._call("DELETE", None, lambda: self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key)))
        self.cache.discard(key)
        (self.root / check_key(key)).unlink(missing_ok=True)

    def _pin(self, key: str) -> tuple[Path, int]:
        got = self.cache.pin(key, lambda part: self._download(key, part), lambda: self.exists(key))
        if got is None:  # dropped on revalidation: deleted
            raise BlobMissing(key, f"(s3://{self.bucket}/{self.prefix})")
        return got

    @contextmanager
    def local_files(self, keys: Sequence[str | None], missing_ok: bool = False) -> Iterator[list[Path | None]]:
        """The blobs in the local cache, pinned while the block runs; those not cached are downloaded
        concurrently. With ``missing_ok`` a missing blob's entry is a path that does not exist (under
        ``<cache>/.missing/``), so that opening it fails that image alone."""
        wanted = [k for k in dict.fromkeys(keys) if k is not None]

        def one(key: str) -> tuple[Path, int | None]:
            try:
                return self._pin(key)
            except BlobMissing:
                if missing_ok:
                    return self.cache.root / ".missing" / key, None
                raise

        got: dict[str, tuple[Path, int | None]] = {}
        errors: list[BaseException] = []
        try:
            if len(wanted) <= 1:
                for k in wanted:
                    got[k] = one(k)
            else:
                with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(wanted)),
                                        thread_name_prefix="semtag-blob") as pool:
                    futures = {k: pool.submit(one, k) for k in wanted}
                    for k, f in futures.items():
                        try:
                            got[k] = f.result()
                        except BaseException as exc:  # noqa: BLE001 — re-raised below, after every pin is kept
                            errors.append(exc)
            if errors:
                raise errors[0]
            yield [None if k is None else got[k][0] for k in keys]
        finally:
            for _path, fd in got.values():
                if fd is not None:
                    os.close(fd)

    def local_copy(self, key: str) -> Path:
        """A local file with the blob's bytes that stays (under ``root``, outside the cache's bound) until
        the blob is deleted: for work that reads files for a long time, such as training."""
        dest = self.root / check_key(key)
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            self._download(key, part)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        return dest

    def open(self, key: str, block_size: int = 64 * 1024) -> BinaryIO:
        """A seekable read-only file: the cached copy when this host has one, else ranged GETs of
        ``block_size`` (or what one read asks for, if more) per read."""
        got = self.cache.pin(key)
        if got is not None:
            path, fd = got
            return os.fdopen(fd, "rb")  # the descriptor holds the pin until the file is closed
        size = int(self._head(key)["ContentLength"])
        return io.BufferedReader(_RangeReader(self, key, size), buffer_size=block_size)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object), one ranged GET."""
        if start < 0 or length < 0:
            raise ValueError("start and length must be non-negative")
        if length == 0:
            return b""
        try:
            return self._get_range(key, start, length)
        except BlobStoreUnavailable as exc:
            if _error_code(exc.__cause__ or exc) == "InvalidRange":  # start at or past the end
                return b""
            raise

    def check(self) -> None:
        """The bucket can be reached with these credentials; :class:`BlobStoreUnavailable` otherwise."""
        self._call("HEAD bucket", None, lambda: self.client.head_bucket(Bucket=self.bucket))

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return (f"s3://{self.bucket}/{self.prefix}{where} (cache {self.cache.root.resolve()}, "
                f"at most {self.cache.max_bytes} bytes)")


_CONTENT_TYPES = {".tif": "image/tiff", ".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp",
                  ".txt": "text/plain"}
