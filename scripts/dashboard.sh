#!/usr/bin/env bash
# Start rq-dashboard on dockrq's Redis, reading jobs with rq's JSON serializer
# (worker/service/dashboard.py, loaded as worker.dashboard, extends --json to the workers page and keeps job
# arguments, which hold environment values, off it).
#
#   scripts/dashboard.sh                 # http://127.0.0.1:9181
#   DOCKRQ_DASHBOARD_PORT=9300 scripts/dashboard.sh --username admin --password s3cret
#
# Env: DOCKRQ_REDIS_URL (default redis://127.0.0.1:6379/0), DOCKRQ_DASHBOARD_PORT
# (9181), DOCKRQ_DASHBOARD_BIND (127.0.0.1: the dashboard can delete and requeue
# jobs, so it is not exposed unless asked); read by worker/observe/dashboard_views.py:
# DOCKRQ_PREFIX (dockrq), DOCKRQ_QUEUE or the first of DOCKRQ_QUEUES (the queue the
# Jobs tab opens; dockrq), DOCKRQ_RETENTION_SECONDS (86400: the window of the
# per-outcome counts). Extra arguments go to rq-dashboard.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

bin=$ROOT/.venv/bin/rq-dashboard
[ -x "$bin" ] || bin=$(command -v rq-dashboard || true)
if [ -z "$bin" ]; then
  echo "dashboard.sh: rq-dashboard is not installed (pip install 'dockrq[dashboard]', or run scripts/setup.sh)" >&2
  exit 1
fi

# The URL goes through the environment, not argv, so a password never shows in ps.
export RQ_DASHBOARD_REDIS_URL=${DOCKRQ_REDIS_URL:-redis://127.0.0.1:6379/0}
exec "$bin" --json --config worker.dashboard \
  --bind "${DOCKRQ_DASHBOARD_BIND:-127.0.0.1}" \
  --port "${DOCKRQ_DASHBOARD_PORT:-9181}" \
  "$@"
