"""Backfill (semtag ingest): the lookup endpoint, resumable runs, record ids from folders and manifest
columns, sidecars, the remote mode against the API (TestClient) with outages, and the failure summary."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from semtag.cli import main
from semtag.remote import RemoteTarget, retry_after
from semtag.settings import Settings
from services import migrate
from services.images.backfill import ArchiveItem, LocalTarget, Sent, read_archive, run_backfill
from services.runtime import NullQueue, Runtime
from services.storage import sha256_file
from services.tables import Image, ImageRecord
from tests import imagegen
from tests.conftest import Client


def _archive(root: Path, per_record: dict[str, int], seed: int = 0) -> list[Path]:
    """Folders named after records, each with distinct PNGs; returns the paths."""
    paths = []
    k = seed
    for record, n in per_record.items():
        (root / record).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = root / record / f"img{i}.png"
            p.write_bytes(imagegen.png(seed=k))
            k += 1
            paths.append(p)
    return paths


def _local(settings: Settings) -> Runtime:
    migrate.upgrade(settings.effective_database_url)
    return Runtime(settings, queue=NullQueue())  # store and queue, run nothing: processing is not under test


def _count(rt: Runtime, what=Image) -> int:
    with rt.session() as s:
        return s.scalar(select(func.count()).select_from(what)) or 0


class Counting:
    """A target that counts what it is asked to send, and can stop the run after ``stop_after`` files."""

    def __init__(self, inner, stop_after: int | None = None):
        self.inner, self.stop_after, self.sent = inner, stop_after, 0
        self.description = "counting"
        self.lock = threading.Lock()

    def lookup(self, sha256s):
        return self.inner.lookup(sha256s)

    def send(self, item: ArchiveItem) -> Sent:
        with self.lock:
            if self.stop_after is not None and self.sent >= self.stop_after:
                raise KeyboardInterrupt  # what Ctrl-C does to a run in the middle
            self.sent += 1
        return self.inner.send(item)


# ---- the lookup endpoint ---------------------------------------------------------------------------

def test_lookup_says_which_digests_are_stored_with_their_records(client: Client) -> None:
    client.rt.queue = NullQueue()
    data = imagegen.png(seed=3)
    item = client.upload(("a.png", data), record_id="rec-1", record_version="v2").json()["items"][0]
    unknown = "ab" * 32
    r = client.http.post("/v1/images/lookup", json={"sha256": [item["sha256"].upper(), unknown, item["sha256"]]},
                         headers=client.auth("read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown"] == [unknown]
    [known] = body["known"]  # asked twice (once in capitals), answered once
    assert (known["id"], known["sha256"], known["filename"], known["has_sidecar"]) == (item["id"], item["sha256"],
                                                                                      "a.png", False)
    assert [(x["record_id"], x["record_version"]) for x in known["records"]] == [("rec-1", "v2")]
    assert client.http.post("/v1/images/lookup", json={"sha256": [unknown]},
                            headers=client.auth("ingest")).status_code == 200


@pytest.mark.parametrize("body,code", [
    ({"sha256": []}, "invalid_request"),
    ({"sha256": ["ab" * 32] * 1001}, "invalid_request"),
    ({"sha256": ["xyz"]}, "invalid_request"),
    ({"sha256": ["ab" * 32], "extra": 1}, "invalid_request"),
    ({"digests": ["ab" * 32]}, "invalid_request"),
])
def test_lookup_refuses_bad_requests_clearly(sqlite_client: Client, body, code) -> None:
    r = sqlite_client.http.post("/v1/images/lookup", json=body, headers=sqlite_client.auth("read"))
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text


def test_lookup_needs_a_key(sqlite_client: Client) -> None:
    assert sqlite_client.http.post("/v1/images/lookup", json={"sha256": ["ab" * 32]}).status_code == 401


# ---- local mode: resumable, parallel -----------------------------------------------------------------

def test_second_run_sends_nothing_and_a_half_finished_run_resumes(settings: Settings, tmp_path: Path) -> None:
    rt = _local(settings)
    _archive(tmp_path / "arch", {"rec-a": 7, "rec-b": 5})
    items, failures = read_archive(tmp_path / "arch", "dirname")
    assert len(items) == 12 and not failures

    first = Counting(LocalTarget(rt), stop_after=5)
    report = run_backfill(items, first, workers=3)
    assert report.interrupted and first.sent == 5
    stored = _count(rt)
    assert stored == report.new == 5  # the files sent before the interruption are stored, nothing else

    items, _ = read_archive(tmp_path / "arch", "dirname")
    second = Counting(LocalTarget(rt))
    report = run_backfill(items, second, workers=3)
    assert not report.interrupted and not report.failures
    assert second.sent == 12 - stored and report.new == 12 - stored and report.skipped_known == stored
    assert _count(rt) == 12

    items, _ = read_archive(tmp_path / "arch", "dirname")
    third = Counting(LocalTarget(rt))
    report = run_backfill(items, third, workers=3)
    assert third.sent == 0 and report.skipped_known == 12 and report.new == 0
    assert _count(rt) == 12 and _count(rt, ImageRecord) == 12
    with rt.session() as s:
        assert sorted(s.scalars(select(ImageRecord.record_id).distinct())) == ["rec-a", "rec-b"]


def test_record_ids_from_folder_names(sqlite_settings: Settings, tmp_path: Path) -> None:
    rt = _local(sqlite_settings)
    paths = _archive(tmp_path / "arch", {"10.5281_zenodo.1": 2, "rec-2": 1})
    (tmp_path / "arch" / "rec-2" / "img0.txt").write_text("PixelSize=2.5\n")  # an instrument sidecar beside it
    items, _ = read_archive(tmp_path / "arch", "dirname", record_version="v1")
    report = run_backfill(items, LocalTarget(rt))
    assert report.new == 3 and not report.failures
    with rt.session() as s:
        links = {(s.get(Image, r.image_id).sha256, r.record_id, r.record_version)
                 for r in s.scalars(select(ImageRecord))}
        with_sidecar = s.scalars(select(Image.filename).where(Image.sidecar_key.is_not(None))).all()
    zenodo = "10.5281_zenodo.1"
    assert links == {(sha256_file(paths[0]), zenodo, "v1"), (sha256_file(paths[1]), zenodo, "v1"),
                     (sha256_file(paths[2]), "rec-2", "v1")}
    assert with_sidecar == ["img0.png"]
    # without --record-id-from a folder gives no record
    rt2 = _local(Settings(data_dir=tmp_path / "other"))
    run_backfill(read_archive(tmp_path / "arch")[0], LocalTarget(rt2))
    assert _count(rt2) == 3 and _count(rt2, ImageRecord) == 0


def _manifest(path: Path, rows: list[dict], columns=("path", "record_id", "record_version", "sidecar")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    return path


def test_manifest_columns_relative_paths_and_new_records_for_known_bytes(settings: Settings, tmp_path: Path) -> None:
    rt = _local(settings)
    files = tmp_path / "files"
    files.mkdir()
    for i in range(3):
        (files / f"s{i}.png").write_bytes(imagegen.png(seed=40 + i))
    (files / "s1-notes.txt").write_text("Magnification=5000\n")
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(imagegen.png(seed=50))
    man = _manifest(tmp_path / "MANIFEST.csv", [
        {"path": "files/s0.png", "record_id": "rec-1", "record_version": "", "sidecar": ""},
        {"path": "files/s1.png", "record_id": "rec-1", "record_version": "v2", "sidecar": "files/s1-notes.txt"},
        {"path": "files/s2.png", "record_id": "", "record_version": "", "sidecar": ""},
        {"path": str(elsewhere), "record_id": "rec-3", "record_version": "", "sidecar": ""},
        {"path": "files/s0.png", "record_id": "rec-9", "record_version": "", "sidecar": ""},  # same bytes, 2nd record
        {"path": "files/gone.png", "record_id": "rec-1", "record_version": "", "sidecar": ""},
    ])
    items, failures = read_archive(man)  # a record_id column: record ids from it
    assert [f.code for f in failures] == ["missing_file"] and "gone.png" in failures[0].file
    report = run_backfill(items, LocalTarget(rt), failures=failures)
    assert (report.new, report.linked, len(report.failures)) == (4, 1, 1)
    with rt.session() as s:
        links = sorted((s.get(Image, r.image_id).filename, r.record_id, r.record_version)
                       for r in s.scalars(select(ImageRecord)))
        sidecars = s.scalars(select(Image.filename).where(Image.sidecar_key.is_not(None))).all()
    assert links == [("elsewhere.png", "rec-3", ""), ("s0.png", "rec-1", ""), ("s0.png", "rec-9", ""),
                     ("s1.png", "rec-1", "v2")]
    assert sidecars == ["s1.png"]

    # the same bytes under a record they do not have yet are sent again (an upload is what links them) …
    man2 = _manifest(tmp_path / "more.csv", [
        {"path": "files/s2.png", "record_id": "rec-4", "record_version": "", "sidecar": ""},
        {"path": "files/s0.png", "record_id": "rec-1", "record_version": "", "sidecar": ""}])
    counting = Counting(LocalTarget(rt))
    report = run_backfill(read_archive(man2)[0], counting)
    assert counting.sent == 1 and report.linked == 1 and report.skipped_known == 1
    # … and --record-id-from dirname takes the folder even from a manifest
    items, _ = read_archive(man2, "dirname")
    assert {i.record_id for i in items} == {"files"}


@pytest.mark.parametrize("header,message", [
    (("file", "record_id"), "no 'path' column"),
    (("path", "recordid"), "unknown column(s) 'recordid'"),
])
def test_a_manifest_with_wrong_columns_is_refused_before_anything_is_sent(cli_env: Path, tmp_path: Path, capsys,
                                                                          header, message) -> None:
    man = _manifest(tmp_path / "m.csv", [], columns=header)
    assert main(["ingest", str(man)]) == 2
    err = capsys.readouterr().err
    assert message in err and "path, record_id, record_version, sidecar" in err


def test_record_id_from_column_needs_a_manifest_with_that_column(cli_env: Path, tmp_path: Path, capsys) -> None:
    _archive(tmp_path / "arch", {"r": 1})
    assert main(["ingest", str(tmp_path / "arch"), "--record-id-from", "column"]) == 2
    assert "needs a manifest" in capsys.readouterr().err
    man = _manifest(tmp_path / "m.csv", [{"path": "arch/r/img0.png"}], columns=("path",))
    assert main(["ingest", str(man), "--record-id-from", "column"]) == 2
    assert "no record_id column" in capsys.readouterr().err


# ---- failures: one summary with the API's codes, exit status 1 -----------------------------------

BAD = {
    "empty.png": b"",
    "notes.png": b"a lab notebook, not an image\n" * 10,
    "anim.gif": imagegen.gif(),
    "cut.png": imagegen.truncated(imagegen.png(h=200, w=200)),
    "huge.png": imagegen.png(h=300, w=300, seed=9),  # over the upload limit the test sets
}
BAD_CODES = {"empty.png": "empty_file", "notes.png": "not_an_image", "anim.gif": "unsupported_format",
             "cut.png": "truncated_image", "huge.png": "file_too_large"}


def _bad_archive(root: Path) -> None:
    root.mkdir(parents=True)
    for name, data in BAD.items():
        (root / name).write_bytes(data)
    for i in range(3):
        (root / f"good{i}.png").write_bytes(imagegen.png(seed=60 + i))


def test_cli_summary_lists_every_failure_with_its_reason(cli_env: Path, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from semtag.settings import get_settings

    monkeypatch.setenv("SEMTAG_MAX_UPLOAD_BYTES", str(len(BAD["huge.png"]) - 1))
    get_settings.cache_clear()
    _bad_archive(tmp_path / "arch")
    # the GIF is not an image suffix semtag scans for; name it in a manifest so that it is sent
    man = _manifest(tmp_path / "all.csv", [{"path": f"arch/{n}"} for n in sorted(BAD) + ["good0.png", "good1.png",
                                                                                           "good2.png"]],
                    columns=("path",))
    out_csv = tmp_path / "failures.csv"
    assert main(["ingest", str(man), "--failures-csv", str(out_csv)]) == 1
    out = capsys.readouterr().out
    assert "3 new" in out and "5 failed" in out
    for name, code in BAD_CODES.items():
        assert f"arch/{name}" in out and code in out
    with open(out_csv, newline="", encoding="utf-8") as fh:
        rows = {r["file"].split(" (")[0]: r["code"] for r in csv.DictReader(fh)}
    assert rows == {f"arch/{n}": c for n, c in BAD_CODES.items()}
    # the good files were stored; a second run sends only the bad ones again and fails the same way
    assert main(["ingest", str(man)]) == 1
    assert "3 already known" in capsys.readouterr().out
    # all good: exit 0
    assert main(["ingest", str(tmp_path / "arch" / "good0.png")]) == 0


# ---- remote mode: the API through the TestClient ----------------------------------------------------

class Flaky(httpx.BaseTransport):
    """In front of the app: the first ``outages`` requests to each path get 503 + Retry-After (or a refused
    connection), as a service whose database is restarting answers."""

    def __init__(self, inner: httpx.BaseTransport, outages: int, kind: str = "503"):
        self.inner, self.outages, self.kind = inner, outages, kind
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = request.url.path
        with self.lock:
            n = self.seen[key] = self.seen.get(key, 0) + 1
        if n <= self.outages:
            if self.kind == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503, headers={"Retry-After": "7"},
                                  json={"error": {"code": "database_unavailable", "message": "retry later"}})
        return self.inner.handle_request(request)


def _remote(c: Client, outages: int = 0, kind: str = "503", role: str = "ingest", key: str | None = None):
    waits: list[float] = []
    http = httpx.Client(transport=Flaky(c.http._transport, outages, kind), base_url="http://testserver")
    return RemoteTarget("http://testserver", key or c.keys[role], client=http, sleep=waits.append), waits


def test_remote_mode_sends_only_what_the_service_lacks(client: Client, tmp_path: Path) -> None:
    client.rt.queue = NullQueue()
    _archive(tmp_path / "arch", {"rec-r": 4})
    (tmp_path / "arch" / "rec-r" / "img1.txt").write_text("PixelSize=1.0\n")
    items, _ = read_archive(tmp_path / "arch", "dirname")
    target, waits = _remote(client)
    counting = Counting(target, stop_after=2)
    assert run_backfill(items, counting, workers=2).interrupted
    counting = Counting(target)
    report = run_backfill(read_archive(tmp_path / "arch", "dirname")[0], counting, workers=2)
    assert counting.sent == 2 and report.skipped_known == 2 and report.new == 2 and not report.failures
    with client.rt.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 4
        assert s.scalar(select(func.count()).select_from(Image).where(Image.sidecar_key.is_not(None))) == 1
        assert set(s.scalars(select(ImageRecord.record_id))) == {"rec-r"}
    assert waits == []


@pytest.mark.parametrize("kind", ["503", "connect"])
def test_remote_mode_waits_out_outages(sqlite_client: Client, tmp_path: Path, kind: str) -> None:
    sqlite_client.rt.queue = NullQueue()
    _archive(tmp_path / "arch", {"rec": 2})
    target, waits = _remote(sqlite_client, outages=2, kind=kind)
    report = run_backfill(read_archive(tmp_path / "arch", "dirname")[0], target, workers=1)
    assert report.new == 2 and not report.failures
    # two outages for the lookup, two for the first upload (the second finds the service back)
    assert len(waits) == 4
    if kind == "503":
        assert waits == [7.0] * 4  # the service's Retry-After
    else:
        assert all(0 < w <= 60 for w in waits) and waits[1] > waits[0] * 0.5  # backoff with jitter


def test_remote_mode_gives_up_after_its_retries_and_reports_it(sqlite_client: Client, tmp_path: Path) -> None:
    _archive(tmp_path / "arch", {"rec": 1})
    items = read_archive(tmp_path / "arch")[0]
    target, waits = _remote(sqlite_client, outages=100)
    target.retries = 3
    report = run_backfill(items, target)
    assert report.stopped and "stayed unavailable after 4 tries" in report.stopped and report.new == 0
    assert len(waits) == 3


def test_remote_failures_are_final_with_the_apis_codes(sqlite_client: Client, tmp_path: Path) -> None:
    sqlite_client.rt.queue = NullQueue()
    sqlite_client.rt.settings.max_upload_bytes = len(BAD["huge.png"]) - 1
    _bad_archive(tmp_path / "arch")
    items = [ArchiveItem(tmp_path / "arch" / n, origin=n) for n in sorted(BAD)]
    target, waits = _remote(sqlite_client)
    report = run_backfill(items, target)
    assert {f.file: f.code for f in report.failures} == BAD_CODES
    assert {f.file: f.status for f in report.failures} == {"empty.png": 422, "notes.png": 415, "anim.gif": 415,
                                                           "cut.png": 422, "huge.png": 413}
    assert waits == []  # 413, 415 and 422 are not retried


def test_remote_mode_stops_at_a_bad_key(sqlite_client: Client, tmp_path: Path) -> None:
    _archive(tmp_path / "arch", {"rec": 2})
    items = read_archive(tmp_path / "arch")[0]
    target, _ = _remote(sqlite_client, key="stk_not-a-key")
    report = run_backfill(items, target)
    assert report.stopped and "401" in report.stopped and report.new == 0
    target, _ = _remote(sqlite_client, role="curator")  # may read (the lookup) but not ingest
    report = run_backfill(items, target)
    assert report.stopped and "403" in report.stopped and report.new == 0


def test_retry_after_header_forms() -> None:
    assert retry_after("12", 1.0) == 12.0
    assert retry_after(None, 3.0) == 3.0
    assert retry_after("soon", 3.0) == 3.0
    assert retry_after("100000", 1.0) == 300.0  # capped
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 2.0) == 0.0  # a date in the past


# ---- the command against a real semtag serve ----------------------------------------------------------

def test_cli_ingest_against_a_real_server(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTAG_")}
    env["SEMTAG_DATA_DIR"] = str(tmp_path / "server")
    sem = [sys.executable, "-m", "semtag"]
    key = subprocess.run(sem + ["apikey", "create", "--role", "ingest"], env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    _archive(tmp_path / "arch", {"rec-x": 3, "rec-y": 2})
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SEMTAG_API_KEY", key)  # the key from the environment, not the command line
    # nobody listening: the run stops after its retries, sends nothing, and says so
    assert main(["ingest", str(tmp_path / "arch"), "--api", url, "--retries", "0"]) == 2
    assert "stayed unavailable" in capsys.readouterr().out
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(sem + ["serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        assert main(["ingest", str(tmp_path / "arch"), "--api", url, "--record-id-from", "dirname"]) == 0
        assert "5 new" in capsys.readouterr().out
        assert main(["ingest", str(tmp_path / "arch"), "--api", url, "--record-id-from", "dirname"]) == 0
        assert "5 already known (not sent)" in capsys.readouterr().out
        found = httpx.get(url + "/v1/images", params={"record_id": "rec-y"},
                          headers={"Authorization": f"Bearer {key}"}).json()
        assert sorted(i["filename"] for i in found["items"]) == ["img0.png", "img1.png"]
        assert main(["ingest", str(tmp_path / "arch"), "--api", url, "--key", "stk_wrong"]) == 2
        assert "refused the key" in capsys.readouterr().out
    finally:
        proc.terminate()
        proc.wait(30)
