"""The Runtime that tasks use: the API's in embedded mode, one built from settings in a worker."""

from __future__ import annotations

from services.runtime import Runtime

_runtime: Runtime | None = None


def set_runtime(rt: Runtime) -> None:
    global _runtime
    _runtime = rt


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        from semtag.bootstrap import build_runtime
        from semtag.settings import get_settings

        _runtime = build_runtime(get_settings())
    return _runtime
