"""Validation of job parameters (JSON values from the admin API): one message per kind of mistake."""

from __future__ import annotations

from typing import Any

from services.errors import BadInput


def int_param(params: dict[str, Any], name: str, default: int | None, lo: int, hi: int,
              optional: bool = False) -> int | None:
    """An integer from ``lo`` to ``hi`` (booleans refused); ``optional`` lets null through."""
    value = params.get(name, default)
    if optional and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadInput(f"param {name!r} must be an integer from {lo} to {hi}", "bad_params")
    return value


def float_param(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadInput(f"param {name!r} must be a number from {lo} to {hi}", "bad_params")
    return float(value)
