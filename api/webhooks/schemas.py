from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.images.schemas import RecordRef

# RFC 6750's b64token: what a bearer token may contain (no spaces, no control characters)
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class IngestPayload(BaseModel):
    """The repository's ingest notification: the file inline (base64) or by URL."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a bearer token must not appear in any message

    record_id: str = Field(min_length=1, max_length=255)
    record_version: str | None = Field(default=None, max_length=64,
                                       description="the record's version as the repository names it")
    filename: str | None = Field(default=None, max_length=255)
    content_base64: str | None = None
    url: str | None = None
    bearer_token: SecretStr | None = Field(
        default=None, max_length=4096,
        description="with url: sent once to the file host as `Authorization: Bearer …` for this fetch of a "
                    "restricted file; never stored, logged or sent anywhere else")
    sidecar_base64: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> IngestPayload:
        if (self.content_base64 is None) == (self.url is None):
            raise ValueError("give exactly one of content_base64 or url")
        if self.bearer_token is not None and self.url is None:
            raise ValueError("bearer_token is only for fetching a url")
        return self

    @field_validator("bearer_token")
    @classmethod
    def _token_chars(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _TOKEN.fullmatch(v.get_secret_value()):
            raise ValueError("bearer_token must be a bearer token (RFC 6750: letters, digits, -._~+/ and "
                             "trailing =)")
        return v


class IngestAccepted(BaseModel):
    id: int
    sha256: str
    filename: str
    status: str
    duplicate: bool = Field(description="the same bytes were already stored; the existing id is returned")
    record_id: str | None = Field(description="the record this request named; the image now belongs to it")
    record_version: str | None = None
    record_added: bool = Field(description="true when the image was linked to this record (version) by this "
                                           "request; false when it already belonged to it")
    records: list[RecordRef] = Field(default_factory=list, description="every record (version) holding the image")
    record_id_kept: bool = Field(True, description="deprecated: always true now that an image may belong to many "
                                                   "records (see record_added)")
