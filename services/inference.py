"""Classification with the active registry model (ONNX Runtime); filled in by the inference issue."""

from __future__ import annotations

from services.errors import SemtagError


def classify_stored_image(rt, image_id: int, model) -> str:  # noqa: ANN001
    raise SemtagError(f"model {model.version} is active but this build has no inference engine", "no_engine")
