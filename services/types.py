"""Types the domains' contracts share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; semtag writes them all in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A timestamp as the API shows it: always with its zone (RFC 3339), whichever database stored it.
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


def iso_utc(value: datetime | None) -> str | None:
    """A stored timestamp as RFC 3339 text, in UTC (SQLite drops the zone; semtag writes UTC)."""
    return None if value is None else _utc(value).isoformat()
