"""The S3 blob store against a real S3 HTTP endpoint (moto's server, an S3 emulator started by the suite):
uploads content-addressed and multipart, whole reads through the bounded cache, range reads, deletion,
outages. Every request below crosses HTTP to the emulator."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import pytest
import tifffile
from pydantic import ValidationError

from semtag.settings import Settings
from services.errors import BlobStoreUnavailable, is_transient
from services.runtime import open_blob_store
from services.storage import BlobCorrupt, BlobMissing, DiskCache, S3BlobStore, writing
from services.tables import Image
from tests import imagegen
from tests.conftest import Client

MiB = 1024 * 1024


class Requests:
    """The S3 operations a store's client sends, and the body bytes its GETs receive."""

    def __init__(self, store: S3BlobStore) -> None:
        self.ops: list[str] = []
        self.got = 0
        store.client.meta.events.register("before-call.s3", self._before)
        store.client.meta.events.register("after-call.s3.GetObject", self._after_get)

    def _before(self, model, **_kw) -> None:
        self.ops.append(model.name)

    def _after_get(self, parsed, **_kw) -> None:
        self.got += int(parsed.get("ContentLength", 0))

    def clear(self) -> None:
        self.ops.clear()
        self.got = 0


def _store(settings: Settings, data_dir: Path | None = None, **changes) -> S3BlobStore:
    """The store of a host with its own data dir (its own cache), as the runtime builds it."""
    s = settings.model_copy(update={"data_dir": data_dir or settings.data_dir, **changes})
    store = open_blob_store(s)
    assert isinstance(store, S3BlobStore)
    return store


def _put(store: S3BlobStore, data: bytes, suffix: str = ".bin") -> str:
    with writing(store) as w:
        w.write(data)
        return store.commit(w, suffix)


def _raw(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url)


@contextmanager
def socket_nobody_listens_on() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a port that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_settings_choose_the_store_and_refuse_a_bad_url(s3_settings: Settings, tmp_path: Path) -> None:
    from services.storage import LocalBlobStore

    assert isinstance(open_blob_store(Settings(data_dir=tmp_path / "v")), LocalBlobStore)  # unset: local
    store = open_blob_store(s3_settings)
    assert isinstance(store, S3BlobStore) and store.prefix == "blobs"
    assert store.cache.max_bytes == s3_settings.blob_cache_max_bytes
    for bad in ("http://bucket/x", "s3://", "s3://Bad_Bucket/x", "s3://bucket/../x"):
        with pytest.raises(ValidationError, match="blob URL"):
            Settings(blob_url=bad)
    assert "s3://" in s3_settings.blob_location and s3_settings.s3_endpoint_url in s3_settings.blob_location


def test_upload_lands_in_the_object_store_content_addressed(s3_settings: Settings) -> None:
    """Through the API (embedded mode): the object is keyed by its sha256, carries it, and the image is processed
    from the object store; nothing is stored as a local blob and no spool file is left."""
    data = imagegen.tiff(bits=16, seed=31)
    c = Client(s3_settings)
    try:
        r = c.upload(("a.tif", data), record_id="rec-s3")
        assert r.status_code == 202, r.text
        item = r.json()["items"][0]
        sha = hashlib.sha256(data).hexdigest()
        assert item["sha256"] == sha
        c.wait()
        body = c.get(f"/v1/images/{item['id']}").json()
        assert body["steps"]["scale"] == "done" and body["status"] == "done"
        with c.rt.session() as s:
            key = s.get(Image, item["id"]).storage_key
        assert key == f"{sha[:2]}/{sha[2:4]}/{sha}.tif"
        obj = _raw(s3_settings).get_object(Bucket=c.rt.store.bucket, Key=f"blobs/{key}")
        assert obj["Body"].read() == data and obj["Metadata"]["sha256"] == sha
        assert obj["ContentType"] == "image/tiff"
        assert not (s3_settings.data_dir / "blobs").exists()
        assert list(c.rt.store.tmp.iterdir()) == []
        again = c.upload(("copy.tif", data)).json()["items"][0]
        assert again["id"] == item["id"] and again["duplicate"] is True
    finally:
        c.close()


def test_a_large_upload_goes_multipart_and_a_known_one_is_not_sent_again(s3_settings: Settings) -> None:
    store = _store(s3_settings, s3_part_size_bytes=5 * MiB)
    seen = Requests(store)
    data = os.urandom(12 * MiB)
    key = _put(store, data)
    assert seen.ops.count("UploadPart") == 3 and "CompleteMultipartUpload" in seen.ops and "PutObject" not in seen.ops
    head = _raw(s3_settings).head_object(Bucket=store.bucket, Key=f"blobs/{key}")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest() == key.rsplit("/", 1)[1].split(".")[0]
    seen.clear()
    assert _put(store, data) == key  # the same bytes: one HEAD, nothing uploaded
    assert seen.ops == ["HeadObject"]
    seen.clear()
    small = _put(store, b"small blob")
    assert "PutObject" in seen.ops and "UploadPart" not in seen.ops
    assert _raw(s3_settings).get_object(Bucket=store.bucket, Key=f"blobs/{small}")["Body"].read() == b"small blob"


def test_repeated_reads_are_served_by_the_cache(s3_settings: Settings, tmp_path: Path) -> None:
    writer = _store(s3_settings)
    data = os.urandom(3 * MiB)
    key = _put(writer, data)
    reader = _store(s3_settings, tmp_path / "host-b")  # another host: an empty cache
    seen = Requests(reader)
    with reader.local_file(key) as path:
        assert path.read_bytes() == data and path.is_relative_to(tmp_path / "host-b" / "blob-cache")
    assert seen.ops == ["GetObject"] and seen.got == len(data)
    seen.clear()
    for _ in range(3):
        with reader.local_file(key) as path:
            assert path.read_bytes() == data
    assert seen.ops == ["HeadObject"] * 3 and seen.got == 0  # a check that it still exists, no bytes
    with reader.local_files([key, None, key]) as paths:
        assert paths[0] == paths[2] and paths[1] is None


def test_range_reads_fetch_only_the_tiff_tags_and_the_data_bar_band(s3_settings: Settings, tmp_path: Path) -> None:
    """A 4 MiB striped TIFF: its FEI tag (the pixel size) and its bottom 128 rows (where the data bar is) are read
    through ``open`` with ranged GETs of a small part of the file; ``read_range`` reads one range."""
    from services.scale.metadata import read_metadata

    rng = np.random.default_rng(5)
    arr = rng.integers(0, 255, size=(2048, 2048), dtype=np.uint8)
    fei = "[Scan]\r\nPixelWidth=7.5e-09\r\n[Image]\r\nResolutionX=2048\r\n"
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, rowsperstrip=64, extratags=[(34682, "s", len(fei), fei, True)])
    data = buf.getvalue()
    key = _put(_store(s3_settings), data, ".tif")
    reader = _store(s3_settings, tmp_path / "ocr-host")
    seen = Requests(reader)
    with reader.open(key) as fh:
        meta = read_metadata(fh, 2048, 2048)
    assert meta is not None and meta.vendor == "FEI/Thermo" and meta.pixel_size_nm == pytest.approx(7.5)
    assert 0 < seen.got <= 128 * 1024 < len(data) // 30
    seen.clear()
    with reader.open(key) as fh, tifffile.TiffFile(fh) as tif:
        page = tif.pages[0]
        band = b""
        for offset, count in zip(page.dataoffsets[-2:], page.databytecounts[-2:]):
            fh.seek(offset)
            band += fh.read(count)
    assert np.array_equal(np.frombuffer(band, np.uint8).reshape(128, 2048), arr[-128:])
    assert seen.got < 64 * 1024 + 128 * 2048 + 64 * 1024  # the header block and the two strips
    assert not reader.cache.path(key).exists()  # nothing was downloaded whole
    seen.clear()
    assert reader.read_range(key, 8, 100) == data[8:108] and seen.got == 100
    assert reader.read_range(key, len(data) - 10, 100) == data[-10:]  # fewer at the end
    assert reader.read_range(key, len(data) + 5, 10) == b""
    with reader.local_file(key):  # once cached, open() reads the cached file: no request at all
        pass
    seen.clear()
    with reader.open(key) as fh:
        assert fh.read(4) == data[:4]
    assert seen.ops == []


def test_the_cache_keeps_its_bound_evicting_the_least_recently_used(s3_settings: Settings, tmp_path: Path) -> None:
    writer = _store(s3_settings)
    blobs = [os.urandom(MiB) for _ in range(4)]
    keys = [_put(writer, b) for b in blobs]
    reader = _store(s3_settings, tmp_path / "small", blob_cache_max_bytes=int(2.5 * MiB))
    cache = reader.cache
    for k in keys[:2]:
        with reader.local_file(k):
            pass
    os.utime(cache.path(keys[0]), (1, 1))  # make keys[0] the least recently used …
    with reader.local_file(keys[1]):  # … and use keys[1] again
        pass
    with reader.local_file(keys[2]):
        pass
    assert not cache.path(keys[0]).exists() and cache.path(keys[1]).exists() and cache.path(keys[2]).exists()
    assert cache.total_bytes() <= 2.5 * MiB
    # files in use are never evicted: the bound is exceeded only while they are pinned
    with reader.local_files(keys) as paths:
        assert [p.read_bytes() for p in paths] == blobs
        assert cache.total_bytes() == 4 * MiB
    cache.evict()
    assert cache.total_bytes() <= 2.5 * MiB


def test_a_file_pinned_by_another_process_is_not_evicted(s3_settings: Settings, tmp_path: Path) -> None:
    """Worker processes of one host share the cache: a file another process is reading stays, whatever the bound."""
    writer = _store(s3_settings)
    keys = [_put(writer, os.urandom(MiB)) for _ in range(2)]
    reader = _store(s3_settings, tmp_path / "shared", blob_cache_max_bytes=MiB)
    with reader.local_file(keys[0]) as path:
        pass
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from services.storage import DiskCache
        got = DiskCache({str(reader.cache.root)!r}, {MiB}).pin({keys[0]!r})
        print("pinned" if got else "absent", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "pinned"
        with reader.local_file(keys[1]):
            pass
        assert path.exists()  # over the bound, but in use elsewhere
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
    finally:
        holder.kill()
    reader.cache.evict()
    assert not path.exists() and reader.cache.total_bytes() <= MiB


def test_delete_erases_the_object_and_no_cache_serves_it_again(s3_settings: Settings, tmp_path: Path) -> None:
    store = _store(s3_settings)
    key = _put(store, b"to be taken down")
    other = _store(s3_settings, tmp_path / "other-host")
    with other.local_file(key) as path:
        assert path.read_bytes() == b"to be taken down"
    assert store.exists(key)
    store.delete(key)
    assert not store.exists(key) and not store.cache.path(key).exists()
    assert "Contents" not in _raw(s3_settings).list_objects_v2(Bucket=store.bucket, Prefix="blobs/")
    with pytest.raises(BlobMissing):  # the other host's cached copy is checked, found gone and dropped
        with other.local_file(key):
            pass
    assert not path.exists()
    with other.local_files([key], missing_ok=True) as (gone,):
        assert gone is not None and not gone.exists()
    with pytest.raises(BlobMissing):
        other.open(key)
    store.delete(key)  # deleting twice is fine


def test_corrupt_bytes_are_refused(s3_settings: Settings, tmp_path: Path) -> None:
    store = _store(s3_settings)
    key = _put(store, b"original bytes")
    _raw(s3_settings).put_object(Bucket=store.bucket, Key=f"blobs/{key}", Body=b"tampered bytes")
    reader = _store(s3_settings, tmp_path / "reader")
    with pytest.raises(BlobCorrupt):
        with reader.local_file(key):
            pass
    assert list(reader.cache.root.rglob("*.bin")) == []


def test_local_copies_for_training_stay_outside_the_cache(s3_settings: Settings, tmp_path: Path) -> None:
    from services.data.datasets import labelled_from_db
    from services.tables import HumanLabel

    c = Client(s3_settings)
    try:
        data = imagegen.png(seed=40)
        iid = c.upload(("l.png", data)).json()["items"][0]["id"]
        c.wait()
        with c.rt.session() as s:
            s.add(HumanLabel(image_id=iid, category="fibres", labelled_by="t"))
        with c.rt.session() as s:
            items = labelled_from_db(s, c.rt.store)
        path = Path(items[0].path)
        assert path.read_bytes() == data and path.is_relative_to(s3_settings.data_dir / "blob-copies")
    finally:
        c.close()


def test_an_unreachable_object_store_is_an_outage_not_a_fault(tmp_path: Path, s3_env) -> None:
    with socket_nobody_listens_on() as dead:
        _unreachable(tmp_path, dead)


def _unreachable(tmp_path: Path, endpoint: str) -> None:
    settings = Settings(data_dir=tmp_path / "var", blob_url="s3://semtag-down/b", s3_endpoint_url=endpoint)
    store = _store(settings)
    with pytest.raises(BlobStoreUnavailable) as err:
        _put(store, b"bytes")
    assert is_transient(err.value) and err.value.status == 503
    with pytest.raises(BlobStoreUnavailable):
        store.check()
    with pytest.raises(BlobStoreUnavailable):
        with store.local_file("ab/cd/" + "ab" * 32 + ".png"):
            pass
    assert list(store.tmp.iterdir()) == []
    c = Client(settings)
    try:
        r = c.upload(("a.png", imagegen.png(seed=3)))
        assert r.status_code == 503 and r.json()["error"]["code"] == "blob_store_unavailable"
        assert r.headers["Retry-After"] == "30"
        with c.rt.session() as s:
            assert s.query(Image).count() == 0
        assert list(store.tmp.iterdir()) == []
    finally:
        c.close()


def test_a_missing_bucket_is_an_outage(s3_settings: Settings, s3_endpoint: str) -> None:
    store = _store(s3_settings.model_copy(update={"blob_url": "s3://semtag-no-such-bucket/x"}))
    with pytest.raises(BlobStoreUnavailable, match="NoSuchBucket|Not Found|404"):
        store.check()
    with pytest.raises(BlobStoreUnavailable, match="NoSuchBucket"):
        _put(store, b"x")


def test_the_cache_survives_parallel_fetches_of_the_same_blob(s3_settings: Settings, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    key = _put(_store(s3_settings), os.urandom(2 * MiB))
    reader = _store(s3_settings, tmp_path / "parallel")

    def read() -> bytes:
        with reader.local_file(key) as p:
            return hashlib.sha256(p.read_bytes()).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        digests = set(pool.map(lambda _: read(), range(16)))
    assert digests == {key.rsplit("/", 1)[1].split(".")[0]}
    assert list((reader.cache.root / DiskCache.PART).iterdir()) == []


def _pending_images(c: Client, n: int) -> list[int]:
    from services.runtime import NullQueue

    c.rt.queue = NullQueue()  # stored, nothing run yet
    return [it["id"] for it in c.upload(*[(f"p{k}.png", imagegen.png(h=96, w=96, seed=60 + k))
                                          for k in range(n)]).json()["items"]]


def test_the_object_store_down_during_a_step_leaves_the_image_pending(s3_settings: Settings) -> None:
    """An outage of the object store is retried and then left to the reconciler; the image is read once it is back."""
    from workers.app import app

    c = Client(s3_settings)
    try:
        (iid,) = _pending_images(c, 1)
        store = c.rt.store
        with socket_nobody_listens_on() as dead:
            store.endpoint_url, store._client_pid = dead, -1  # the next request goes to a closed port
            app.tasks["semtag.read_scale"].apply(args=[iid], throw=False)
            with c.rt.session() as s:
                img = s.get(Image, iid)
                assert img.status != "failed" and img.scale_state == "pending"
        store.endpoint_url, store._client_pid = s3_settings.s3_endpoint_url, -1
        app.tasks["semtag.read_scale"].apply(args=[iid], throw=False)
        with c.rt.session() as s:
            assert s.get(Image, iid).scale_state == "done"
    finally:
        c.close()


def test_a_deleted_blob_fails_only_its_own_image_in_a_batch(s3_settings: Settings, alexnet_onnx: Path) -> None:
    from services.images import pipeline

    c = Client(s3_settings)
    try:
        version = c.activate_model(alexnet_onnx)
        gone, kept = _pending_images(c, 2)
        with c.rt.session() as s:
            c.rt.store.delete(s.get(Image, gone).storage_key)
        out = pipeline.classify_batch(c.rt, [gone, kept])
        assert out[gone] == "failed" and out[kept] not in ("failed", "skipped")
        with c.rt.session() as s:
            assert "decode failed" in s.get(Image, gone).error
            assert s.get(Image, kept).inference_state == "done"
        assert c.get(f"/v1/images/{kept}").json()["model_version"] == version
    finally:
        c.close()
