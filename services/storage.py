"""Content-addressed blob store.

Blobs are written through a :class:`BlobWriter` (streamed, hashed, size-limited) and
committed under their sha256. :class:`BlobStore` is the interface; :class:`LocalBlobStore`
keeps files under a folder. An S3 store implements the same five methods.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from services.errors import PayloadTooLarge


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
    def new_writer(self, max_bytes: int | None = None) -> BlobWriter: ...
    def commit(self, writer: BlobWriter, suffix: str = "") -> str: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


class LocalBlobStore:
    """Blobs as files ``<root>/<aa>/<bb>/<sha256><suffix>``; temporary files in ``<root>/tmp``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def new_writer(self, max_bytes: int | None = None) -> BlobWriter:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        os.close(fd)
        return BlobWriter(Path(name), max_bytes)

    def key_for(self, sha256: str, suffix: str = "") -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"

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
        if ".." in Path(key).parts or key.startswith("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)


@contextmanager
def writing(store: BlobStore, max_bytes: int | None = None) -> Iterator[BlobWriter]:
    """A writer whose temporary file is removed unless committed."""
    writer = store.new_writer(max_bytes)
    try:
        yield writer
    finally:
        writer.discard()  # no-op after commit: the file was moved away


def blob_store_for(data_dir: Path) -> LocalBlobStore:
    return LocalBlobStore(Path(data_dir) / "blobs")
