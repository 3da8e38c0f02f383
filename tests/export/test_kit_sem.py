"""kit-sem: documents of the KIT Data Manager SEM schema, checked with jsonschema (draft 2019-09)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from jsonschema import Draft201909Validator

from services.export.kit_sem import acquisition_time, kit_sem_document, load_schema
from services.images.imaging import probe
from services.images.schemas import ImageDetail
from services.scale import read_scale
from services.scale.metadata import read_metadata
from services.tables import Image, ScaleReading
from tests import imagegen
from tests.conftest import SHARED_DATA, Client
from tests.export.conftest import fei_tiff, tescan_tiff

SHARED_SCHEMA = SHARED_DATA.parent / "schemas" / "SEM_schema.json"
REAL = SHARED_DATA / "sem-real"


def _validator() -> Draft201909Validator:
    """The published schema (the shared copy when present: an independent check of the packaged one)."""
    schema = json.loads(SHARED_SCHEMA.read_text()) if SHARED_SCHEMA.exists() else load_schema()
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema)


def _check(doc: dict) -> list[str]:
    """Validate; only `required` may fail, each for a field the document lists as missing. The missing ones."""
    missing, other = set(), []
    for e in _validator().iter_errors(doc):
        if e.validator == "required":
            where = ".".join(map(str, e.absolute_path))
            missing |= {f"{where}.{n}" if where else n for n in e.validator_value if n not in e.instance}
        else:
            other.append((list(e.absolute_path), e.message))
    assert not other, other
    assert sorted(missing) == doc["semtag"]["conformance"]["missing_required"]
    assert doc["semtag"]["conformance"]["valid"] is (not missing)
    return sorted(missing)


def test_packaged_schema_is_the_published_one():
    if not SHARED_SCHEMA.exists():
        pytest.skip("shared schemas not present")
    assert load_schema() == json.loads(SHARED_SCHEMA.read_text())


def _detail(path: Path, sidecar: Path | None = None) -> ImageDetail:
    """The rows the pipeline would store for the file, without a database."""
    info = probe(path, 150_000_000)
    res = read_scale(path, sidecar=sidecar)
    img = Image(id=1, sha256="0" * 64, filename=path.name, bytes=path.stat().st_size, width=info.width,
                height=info.height, format=info.format, bit_depth=info.bit_depth, pages=info.pages, mode=info.mode,
                storage_key="k", status="done", pixel_size_nm=res.pixel_size_nm, scale_nm=res.scale_nm)
    return ImageDetail(img, ScaleReading(image_id=1, **res.row()), None, None, None)


@pytest.mark.skipif(not (REAL / "MANIFEST.tsv").exists(), reason="shared real SEM images not present")
def test_every_real_image_with_metadata_maps_to_a_valid_document():
    rows = list(csv.DictReader(open(REAL / "MANIFEST.tsv"), delimiter="\t"))
    checked = complete = 0
    for r in rows:
        path = REAL / r["file"]
        side = path.with_suffix(".txt")
        side = side if side.exists() else None
        try:
            info = probe(path, 150_000_000)
        except Exception:  # noqa: BLE001 — a file semtag refuses has no document
            continue
        meta = read_metadata(path, info.width, info.height, side)
        if meta is None or not meta.fields:
            continue
        doc = kit_sem_document(_detail(path, side))
        missing = _check(doc)
        checked += 1
        entry = doc["entry"]
        inst = entry["instrument"]
        assert inst["imaging"]["numberOfPixels"] == {"xPixels": info.width, "yPixels": info.height}
        assert inst["eBeamSource"]["accelerationVoltage"]["unit"] == "kV"
        assert inst["imaging"]["pixelSize"]["xPixelSize"]["unit"] == "nm"
        if "px=" in r["scale_truth"]:
            truth = float(r["scale_truth"].split("px=")[1].split()[0])
            assert abs(inst["imaging"]["pixelSize"]["xPixelSize"]["value"] - truth) / truth <= 0.005, r["file"]
        if "tiff_metadata" in r["kind"]:  # Zeiss, FEI/Thermo, TESCAN tags record every required field
            assert missing == [], (r["file"], missing)
            assert doc["semtag"]["conformance"]["valid"] and inst["stage"]["stageTiltAngle"]["unit"] == "degree"
            complete += 1
    assert checked >= 10 and complete >= 8, (checked, complete)


def test_synthetic_images_with_and_without_metadata(sqlite_client: Client):
    c = sqlite_client
    up = c.upload(("fei.tif", fei_tiff(seed=1)), ("tescan.tif", tescan_tiff(seed=2)),
                  ("plain.png", imagegen.png(seed=3)), record_id="rec-K").json()["items"]
    c.wait()
    docs = []
    for item in up:
        r = c.get(f"/v1/images/{item['id']}/metadata", params={"format": "kit-sem"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
        docs.append(r.json())
    fei, tescan, plain = docs
    assert _check(fei) == [] and _check(tescan) == []
    e = fei["entry"]
    assert e["endTime"] == "2016-10-27T13:16:51" and e["user"] == {"userName": "operator1"}
    assert e["program"] == {"programVersion": "7.6.1"}
    inst = e["instrument"]
    assert inst["instrumentName"] == "Teneo" and inst["instrumentManufacturer"]["manufacturerName"] == "FEI/Thermo"
    assert inst["chamberPressure"] == {"value": 0.003, "unit": "Pa"}
    assert inst["eBeamSource"]["accelerationVoltage"] == {"value": 2.0, "unit": "kV"}
    assert inst["eBeamSource"]["beamCurrent"] == {"value": 0.05, "unit": "nA"}
    assert inst["stage"]["eBeamWorkingDistance"] == {"value": 9.6, "unit": "mm"}
    assert abs(inst["stage"]["stageTiltAngle"]["value"] - 5.729578) < 1e-5  # 0.1 rad, in degrees
    assert inst["stage"]["coordinates"] == {"xValue": 1.0, "yValue": 2.0, "zValue": 5.0, "coordinatesUnit": "mm"}
    assert inst["imaging"]["pixelSize"]["xPixelSize"]["value"] == pytest.approx(7.7)
    assert inst["imaging"]["dwellTime"] == {"value": 10000.0, "unit": "ns"}
    assert inst["detectors"]["detector1"] == {"detectorName": "ETD SE"}
    assert tescan["entry"]["instrument"]["stage"]["stageTiltAngle"]["value"] == 10.0
    # semtag's results beside the entry, never inside it
    assert fei["semtag"]["image"]["records"] == [{"record_id": "rec-K", "record_version": None}]
    assert fei["semtag"]["scale"]["source"] == "metadata"
    assert not {"category", "confidence", "scale_value", "subcategory"} & set(json.dumps(fei["entry"]).split('"'))
    # no metadata: every required acquisition field is left out (never invented) and listed as missing
    missing = _check(plain)
    assert {"entry.endTime", "entry.user", "entry.instrument.chamberPressure", "entry.instrument.eBeamSource",
            "entry.instrument.stage", "entry.instrument.detectors", "entry.instrument.instrumentName"} <= set(missing)
    assert plain["semtag"]["conformance"]["valid"] is False
    assert c.get("/v1/images/999/metadata").status_code == 404
    bad = c.get(f"/v1/images/{up[0]['id']}/metadata", params={"format": "nexus"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"date": "16 Jan 2019", "time": "18:02:26"}, "2019-01-16T18:02:26"),
    ({"date": "06/13/2016", "time": "05:06:40 PM", "vendor": "FEI/Thermo"}, "2016-06-13T17:06:40"),
    ({"date": "2023-03-24", "time": "08:08:25"}, "2023-03-24T08:08:25"),
    ({"date": "2021/06/23", "time": "16:38:33"}, "2021-06-23T16:38:33"),
    ({"date": "25/12/2020"}, "2020-12-25T00:00:00"),
    ({"date": "03/04/2020", "vendor": "JEOL"}, None),      # 3 April or 4 March: left unread
    ({"date": "16 Jan 2019", "time": "noon"}, None),        # a time that cannot be read: no half-true stamp
    ({"date": "yesterday"}, None),
    ({}, None),
])
def test_acquisition_time_is_read_only_where_unambiguous(fields, expected):
    assert acquisition_time(fields) == expected
