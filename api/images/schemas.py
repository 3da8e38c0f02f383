"""The multipart upload's request body, as OpenAPI shows it (the form is parsed by api/uploads.py)."""

from __future__ import annotations

UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one or more images (TIFF, PNG, JPEG, BMP); repeat the field"},
                        "sidecar": {"type": "array", "items": {"type": "string", "format": "binary"},
                                    "description": "optional instrument .txt sidecars, matched by file stem"},
                        "record_id": {"type": "string", "description": "the repository record"},
                    },
                    "required": ["file"],
                }
            }
        },
    }
}
