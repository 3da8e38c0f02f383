#!/usr/bin/env bash
# Install, then start the service on embedded defaults (SQLite + blobs in ./var, tasks in-process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/semtag serve "$@"
