"""The API describes itself: typed responses, the error envelope, the bearer scheme, examples; /docs offline."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from api.main import create_app


def _app(sqlite_settings):
    return create_app(sqlite_settings)


def test_every_route_declares_a_typed_response_and_its_errors(sqlite_settings) -> None:
    spec = _app(sqlite_settings).openapi()
    untyped = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = op["responses"].get("200") or op["responses"].get("201") or op["responses"].get("202")
            assert ok is not None, (method, path)
            content = ok.get("content", {})
            if path == "/metrics" or "/report/" in path or content and all(c.startswith("image/") for c in content):
                continue  # Prometheus text, report files, image renditions
            if path.startswith("/v1/") and content and "application/json" not in content:
                # a stream (NDJSON, CSV): every content type it answers is documented with its schema
                assert all(c.get("schema") for c in content.values()), (method, path)
                assert ok.get("description"), (method, path)
                schema = {"type": "string"}
            else:
                schema = content.get("application/json", {}).get("schema", {})
            if not schema or schema == {} or schema.get("type") == "object" and not schema.get("properties") \
                    and not schema.get("additionalProperties"):
                untyped.append(f"{method.upper()} {path}")
            if path.startswith("/v1/"):
                errors = [s for s in op["responses"] if s.startswith("4")]
                assert errors, f"{method.upper()} {path} documents no 4xx"
                for s in errors:
                    ref = op["responses"][s]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorRead"), (path, s)
    assert not untyped, untyped
    image = spec["components"]["schemas"]["ImageRead"]
    assert "scale" in image["properties"] and image.get("examples")
    assert spec["components"]["schemas"]["UploadResponse"].get("examples")


def test_bearer_scheme_and_the_job_union(sqlite_settings) -> None:
    spec = _app(sqlite_settings).openapi()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["apiKey"][
            "description"]}
    assert {"apiKey": []} in spec["paths"]["/v1/images/{image_id}"]["get"]["security"]
    body = spec["paths"]["/v1/admin/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "kind"
    assert set(body["discriminator"]["mapping"]) >= {"selftest", "training", "clustering"}
    training = spec["components"]["schemas"]["TrainingJobRequest"]
    assert "params" in training["required"]
    assert spec["components"]["schemas"]["ClusteringParams"]["properties"]["k"]["default"] == 5


def test_docs_work_offline(sqlite_settings) -> None:
    with TestClient(_app(sqlite_settings)) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from a CDN
        for u in urls:
            assert http.get(u).status_code == 200, u
        assert "persistAuthorization" in page.text
        redoc = http.get("/redoc")
        assert redoc.status_code == 200 and "fonts.googleapis" not in redoc.text
        assert all(u.startswith("/") for u in re.findall(r'src="([^"]+)"', redoc.text))
