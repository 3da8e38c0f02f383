"""Streaming multipart/form-data: each file part goes straight to a size-limited blob writer.

Nothing is held whole in memory; a part over the size limit is cut off and reported while
the other parts are still read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from services.errors import BadInput, BadRequest, PayloadTooLarge, SemtagError, UnsupportedMediaType
from services.images.ingest import MAX_SIDECAR_BYTES
from services.storage import BlobStore, BlobTooLarge, BlobWriter

MAX_FIELD_BYTES = 8 * 1024   # one non-file form field (record_id…)
MAX_FIELDS = 32              # non-file form fields per request
MAX_PART_HEADERS = 16
MAX_BOUNDARY = 200           # RFC 2046 allows 70 characters; python-multipart refuses more than 256


def _text(raw: bytes) -> str:
    """A header parameter as text: UTF-8 (what browsers and curl send, RFC 7578), else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _filename(disposition: bytes, params: dict[bytes, bytes]) -> str | None:
    """The part's file name: RFC 5987 ``filename*=UTF-8''…`` first (RFC 6266), then ``filename``."""
    m = re.search(rb"""filename\*\s*=\s*([A-Za-z0-9_-]+)'[^']*'([^;\s]+)""", disposition)
    if m:
        charset = m.group(1).decode("ascii").lower()
        try:
            return unquote(m.group(2).decode("ascii"), encoding=charset, errors="strict")
        except (LookupError, UnicodeDecodeError):
            raise BadRequest("the filename* parameter cannot be decoded", "bad_filename") from None
    raw = params.get(b"filename")
    return None if raw is None else _text(raw)


@dataclass
class FilePart:
    field: str
    filename: str | None
    content_type: str | None
    writer: BlobWriter | None
    error: SemtagError | None = None


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def discard(self) -> None:
        for part in self.files:
            if part.writer is not None:
                part.writer.discard()


class _Collector:
    def __init__(self, store: BlobStore, max_file_bytes: int, max_files: int) -> None:
        self.store, self.max_file_bytes, self.max_files = store, max_file_bytes, max_files
        self.form = Form()
        self._headers: dict[str, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._current: FilePart | None = None
        self._field_name: str | None = None
        self._field_buf = bytearray()
        self.ended = False

    # python-multipart callbacks
    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self._headers = {}
        self._current = None
        self._field_name = None
        self._field_buf = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise BadRequest(f"a multipart part has more than {MAX_PART_HEADERS} headers", "malformed_multipart")
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def on_headers_finished(self) -> None:
        disposition = self._headers.get("content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = _text(params.get(b"name", b""))
        filename = _filename(disposition, params)
        if filename is None:
            if len(self.form.fields) >= MAX_FIELDS:
                raise PayloadTooLarge(f"at most {MAX_FIELDS} form fields per request", "too_many_fields")
            self._field_name = name
            return
        if len(self.form.files) >= self.max_files:
            raise PayloadTooLarge(f"at most {self.max_files} files per request", "too_many_files")
        limit = MAX_SIDECAR_BYTES if name == "sidecar" else self.max_file_bytes
        content_type = self._headers.get("content-type")
        part = FilePart(name, filename, content_type.decode("latin-1") if content_type is not None else None,
                        self.store.new_writer(limit))
        self.form.files.append(part)
        self._current = part

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is not None:
            if part.writer is None:
                return  # already rejected: skip the rest of this part
            try:
                part.writer.write(data[start:end])
            except BlobTooLarge as exc:
                part.writer.discard()
                part.writer = None
                part.error = exc
        elif self._field_name is not None:
            self._field_buf += data[start:end]
            if len(self._field_buf) > MAX_FIELD_BYTES:
                raise BadInput(f"form field {self._field_name!r} is too large", "field_too_large")

    def on_part_end(self) -> None:
        if self._current is not None and self._current.writer is not None:
            self._current.writer.close()
        elif self._field_name is not None:
            self.form.fields[self._field_name] = self._field_buf.decode("utf-8", "replace")
        self._current = None
        self._field_name = None


async def read_multipart(request: Request, store: BlobStore, max_file_bytes: int, max_request_bytes: int,
                         max_files: int) -> Form:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("send the image(s) as multipart/form-data (e.g. curl -F file=@image.tif)",
                                   "wrong_content_type")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_request_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_request_bytes} bytes")
    boundary = params[b"boundary"]
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise BadRequest(f"the multipart boundary must be 1–{MAX_BOUNDARY} characters", "malformed_multipart")
    collector = _Collector(store, max_file_bytes, max_files)
    callbacks: Any = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end", "on_end")}
    parser = MultipartParser(boundary, callbacks)
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_request_bytes:
                raise PayloadTooLarge(f"request body exceeds {max_request_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if not collector.ended:
            raise BadRequest("the multipart body ends before its closing boundary", "malformed_multipart")
    except SemtagError:
        collector.form.discard()
        raise
    except Exception as exc:  # noqa: BLE001 — malformed multipart framing, whatever the parser raises
        collector.form.discard()
        raise BadRequest(f"multipart body cannot be parsed: {exc}", "malformed_multipart") from None
    return collector.form
