from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class IngestPayload(BaseModel):
    """The repository's ingest notification: the file inline (base64) or by URL."""

    record_id: str = Field(min_length=1, max_length=255)
    filename: str | None = Field(default=None, max_length=255)
    content_base64: str | None = None
    url: str | None = None
    sidecar_base64: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> IngestPayload:
        if (self.content_base64 is None) == (self.url is None):
            raise ValueError("give exactly one of content_base64 or url")
        return self


class IngestAccepted(BaseModel):
    id: int
    sha256: str
    filename: str
    status: str
    duplicate: bool = Field(description="the same bytes were already stored; the existing id is returned")
    record_id: str | None = Field(description="the record the stored image belongs to: for known bytes, the record "
                                              "they were first stored under")
    record_id_kept: bool = Field(True, description="false when known bytes arrived under another record_id, which "
                                                   "was not recorded (one record per image for now)")
