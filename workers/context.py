"""The Runtime that tasks use: the API's in embedded mode, one built from settings in a worker."""

from __future__ import annotations

import threading

from services.runtime import Runtime

_runtime: Runtime | None = None
_lock = threading.Lock()  # the inference worker's two threads may ask first at once


def set_runtime(rt: Runtime) -> None:
    global _runtime
    _runtime = rt


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            from semtag.bootstrap import build_runtime
            from semtag.settings import get_settings

            _runtime = build_runtime(get_settings())
        return _runtime
