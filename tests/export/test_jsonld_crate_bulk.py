"""jsonld (expanded with pyld, the bundled context only), the record's RO-Crate (read back with rocrate),
and the bulk export (NDJSON, CSV, the CLI), with page-by-page reading."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from pyld import jsonld
from rocrate.rocrate import ROCrate

from services.export import bulk
from services.export.jsonld import CONTEXT_URL, document_loader
from services.images.queries import ImageFilter
from tests import imagegen
from tests.conftest import Client
from tests.export.conftest import fei_tiff

S = "http://schema.org/"


def _expand(doc: dict) -> list:
    return jsonld.expand(doc, {"documentLoader": document_loader})


def _props(node: dict) -> dict[str, dict]:
    out = {}
    for pv in node[S + "additionalProperty"]:
        out[pv[S + "propertyID"][0]["@value"]] = pv
    return out


@pytest.fixture
def labelled(sqlite_client: Client) -> tuple[Client, list[int]]:
    c = sqlite_client
    items = c.upload(("fei.tif", fei_tiff(seed=5)), ("p.png", imagegen.png(seed=6)), record_id="rec-J",
                     record_version="v1").json()["items"]
    c.wait()
    assert c.http.put(f"/v1/images/{items[0]['id']}/label", json={"category": "particles"},
                      headers=c.auth("curator")).status_code == 200
    return c, [i["id"] for i in items]


def test_jsonld_expands_with_the_bundled_context(labelled):
    c, ids = labelled
    r = c.get(f"/v1/images/{ids[0]}/metadata", params={"format": "jsonld"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    doc = r.json()
    assert doc["@context"] == CONTEXT_URL
    [node] = _expand(doc)
    assert node["@type"] == [S + "ImageObject"] and node["@id"].startswith("ni:///sha-256;")
    props = _props(node)
    px = props["pixel_size"]
    assert px[S + "value"][0]["@value"] == pytest.approx(7.7) and px[S + "unitCode"][0]["@value"] == "C45"
    cat = props["category"]
    assert cat[S + "value"][0]["@value"] == "particles"
    assert props["human_label"][S + "value"][0]["@value"] == "particles"
    assert {"pixel_size", "category", "human_label", "hv_kv", "wd_mm", "tilt_deg", "chamber_pressure_pa"} <= set(props)
    part = node[S + "isPartOf"][0]
    assert part[S + "identifier"][0]["@value"] == "rec-J" and part[S + "version"][0]["@value"] == "v1"
    # nothing else is ever fetched: an unknown context is refused by the loader
    with pytest.raises(jsonld.JsonLdError):
        _expand({"@context": "https://example.org/other-context", "name": "x"})


def test_record_jsonld_is_a_dataset_of_its_images(labelled):
    c, ids = labelled
    r = c.get("/v1/records/rec-J/jsonld")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json"), r.text
    [node] = _expand(r.json())
    assert node["@type"] == [S + "Dataset"]
    assert node[S + "identifier"][0]["@value"] == "rec-J" and node[S + "version"][0]["@value"] == "v1"
    parts = node[S + "hasPart"]
    assert len(parts) == len(ids) and all(p["@type"] == [S + "ImageObject"] for p in parts)
    image = c.get(f"/v1/images/{ids[0]}/metadata", params={"format": "jsonld"}).json()
    assert image["@id"] in {p["@id"] for p in parts}
    assert c.get("/v1/records/nope/jsonld").status_code == 404


def test_record_ro_crate_reads_back_and_has_its_required_entities(labelled, tmp_path: Path):
    c, ids = labelled
    r = c.get("/v1/records/rec-J/ro-crate")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json"), r.text
    meta = r.json()
    graph = {e["@id"]: e for e in meta["@graph"]}
    # flattened JSON-LD: every reference names an entity of the graph (or an absolute IRI)
    for e in meta["@graph"]:
        for v in e.values():
            for ref in v if isinstance(v, list) else [v]:
                if isinstance(ref, dict):
                    assert set(ref) == {"@id"}, (e["@id"], ref)
                    assert ref["@id"] in graph or ref["@id"].startswith("https://"), ref
    (tmp_path / "ro-crate-metadata.json").write_text(json.dumps(meta))
    crate = ROCrate(tmp_path)  # ro-crate-py reads it back
    assert graph["ro-crate-metadata.json"]["conformsTo"]["@id"].startswith("https://w3id.org/ro/crate/")
    assert crate.metadata["about"] is crate.root_dataset
    root = crate.root_dataset
    assert root["name"] == "Record rec-J" and root["datePublished"] and root["description"]
    files = sorted(e.id for e in crate.data_entities)
    assert files == ["fei.tif", "p.png"] and sorted(p.id for p in root["hasPart"]) == files
    fei = crate.dereference("fei.tif")
    assert fei["sha256"] and fei["encodingFormat"] == "image/tiff"
    values = {pv["propertyID"]: pv for pv in fei["additionalProperty"]}
    assert values["category"]["value"] == "particles" and values["pixel_size"]["unitText"] == "nm"
    action = crate.dereference("#semtag-analysis")
    assert action.type == "CreateAction" and action["instrument"]["name"] == "semtag"
    assert _expand(meta)  # the bundled RO-Crate 1.3 context expands it too
    assert c.get("/v1/records/nope/ro-crate").status_code == 404


def test_bulk_export_streams_ndjson_and_csv_with_the_search_filters(labelled):
    c, ids = labelled
    extra = c.upload(("other.png", imagegen.png(seed=7)), record_id="rec-other").json()["items"][0]["id"]
    c.wait()
    r = c.get("/v1/export", params={"format": "kit-sem", "record_id": "rec-J"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    docs = [json.loads(line) for line in r.text.splitlines()]
    assert [d["semtag"]["image"]["id"] for d in docs] == ids and docs[0]["semtag"]["conformance"]["valid"]
    lines = c.get("/v1/export", params={"format": "jsonld"}).text.splitlines()
    assert [json.loads(x)["identifier"] for x in lines] == [str(i) for i in [*ids, extra]]
    table = list(csv.DictReader(io.StringIO(c.get("/v1/export", params={"format": "csv"}).text)))
    assert [int(row["id"]) for row in table] == [*ids, extra]
    assert table[0]["records"] == "rec-J@v1" and table[0]["human_label"] == "particles"
    assert float(table[0]["pixel_size_nm"]) == pytest.approx(7.7) and table[0]["vendor"] == "FEI/Thermo"
    bad = c.get("/v1/export", params={"format": "xml"})
    assert bad.status_code == 422 and "error" in bad.json()
    assert c.get("/v1/export", params={"status": "nope"}).json()["error"]["code"] == "bad_filter"
    assert c.http.get("/v1/export").status_code == 401


def test_bulk_reads_page_by_page(labelled, monkeypatch):
    c, ids = labelled
    sessions = []
    real = c.rt.session

    def counting():
        sessions.append(1)
        return real()

    monkeypatch.setattr(c.rt, "session", counting)
    it = bulk.iter_details(c.rt, ImageFilter(), page=1)
    first = next(it)
    assert first.image.id == ids[0] and len(sessions) == 1  # one page read, not the whole table
    assert [d.image.id for d in it] == ids[1:] and len(sessions) == len(ids) + 1


def test_cli_export_metadata_writes_the_file(cli_env: Path, capsys):
    from semtag.cli import main
    from semtag.settings import Settings

    c = Client(Settings(data_dir=cli_env))
    try:
        c.upload(("fei.tif", fei_tiff(seed=8)), record_id="rec-C")
        c.wait()
    finally:
        c.close()
    out = cli_env.parent / "meta.ndjson"
    assert main(["export-metadata", "--format", "kit-sem", "--record-id", "rec-C", "--out", str(out)]) == 0
    [doc] = [json.loads(x) for x in out.read_text().splitlines()]
    assert doc["entry"]["title"] == "fei.tif" and "1 image(s) exported" in capsys.readouterr().err
    assert main(["export-metadata", "--format", "csv", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0].startswith("id,sha256,filename,records")
    assert main(["export-metadata", "--format", "csv", "--status", "nope", "--out", str(out)]) == 2
