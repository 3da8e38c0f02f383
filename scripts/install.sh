#!/usr/bin/env bash
# Installs what semtag needs on a fresh Debian machine: Tesseract (Debian) and the Python environment (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v tesseract >/dev/null 2>&1; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q tesseract-ocr
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
