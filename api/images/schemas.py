"""Response shapes of the image endpoints (documented in OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel


class UploadError(BaseModel):
    code: str
    message: str


class UploadItem(BaseModel):
    filename: str | None
    id: int | None = None
    sha256: str | None = None
    status: str | None = None
    duplicate: bool | None = None
    error: UploadError | None = None


class LabelRequest(BaseModel):
    category: str | int  # a slug, the display name, a dataset folder name or the index 0–9


class UploadResponse(BaseModel):
    items: list[UploadItem]
    accepted: int
    rejected: int


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
