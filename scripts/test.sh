#!/usr/bin/env bash
# Install, make sure PostgreSQL and Redis run on 127.0.0.1, run the static checks (ruff, mypy), then the
# whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
  sleep 1
done
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q "$@"
