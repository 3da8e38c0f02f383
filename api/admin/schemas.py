from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class JobRequest(BaseModel):
    kind: str = Field(description="job kind, e.g. training, clustering, selftest")
    params: dict[str, Any] = Field(default_factory=dict)
