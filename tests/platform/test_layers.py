"""The house rules, checked: the core imports neither the doors nor their frameworks, nor the neural
networks; the neural networks import no door; the doors do not reach into models/ directly."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    """Top package of every import (module level and inside functions) per file of ``package``."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # semtag.settings is configuration every layer reads; the rest of semtag/ is the CLI and wiring
                names.add("semtag.settings" if node.module == "semtag.settings" else node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    return [f"{f}: {sorted(n & forbidden)}" for f, n in _imports(package).items() if n & forbidden]


def test_core_imports_no_door_framework_or_network() -> None:
    offenders = _offenders("services", {"fastapi", "starlette", "celery", "celery_batches", "kombu", "api",
                                        "workers", "models", "tensorflow", "keras", "tf2onnx", "semtag"})
    # The clustering autoencoder is a small Keras network, imported inside fit() only (semtag[train]).
    assert offenders == ["services/clustering/autoencoder.py: ['keras']"]


def test_networks_depend_on_the_core_not_on_the_doors() -> None:
    assert not _offenders("models", {"fastapi", "starlette", "celery", "api", "workers"})


def test_doors_reach_the_networks_through_the_core() -> None:
    assert not _offenders("api", {"models", "celery", "tensorflow", "keras"})
    assert not _offenders("workers", {"models", "fastapi", "api", "tensorflow", "keras"})


def test_the_rule_is_not_vacuous() -> None:
    found = _imports("services")
    assert len(found) > 40 and any("sqlalchemy" in n for n in found.values())
