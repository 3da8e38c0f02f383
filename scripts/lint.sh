#!/usr/bin/env bash
# Static checks, run by scripts/test.sh before the tests: ruff (style, imports, annotations, unused noqa)
# and mypy (types). Both read their settings from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
