#!/usr/bin/env bash
# Installs what semtag needs on a fresh Debian machine: Tesseract and Chromium (Debian) and the Python environment
# (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
# Tesseract (its library, libtesseract5, comes with it) and the DejaVu fonts that the synthetic
# data bars are drawn in (sans for the text, serif italic for JEOL's slanted µ)
PKGS=""
command -v tesseract >/dev/null 2>&1 || PKGS="$PKGS tesseract-ocr"
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || PKGS="$PKGS fonts-dejavu-core"
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSerif-Italic.ttf ] || PKGS="$PKGS fonts-dejavu-extra"
# Chromium and its driver for the console's browser tests (tests/ui; Playwright drives Debian's build, no
# browser is downloaded)
command -v chromium >/dev/null 2>&1 || PKGS="$PKGS chromium"
command -v chromedriver >/dev/null 2>&1 || PKGS="$PKGS chromium-driver"
if [ -n "$PKGS" ]; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q $PKGS
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
