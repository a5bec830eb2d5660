#!/usr/bin/env bash
# The README's first command: the whole service on this machine, and a sample workload.
#
#   ./scripts/demo.sh          # set up, run, show, then stop what it started
#   ./scripts/demo.sh --keep   # leave the workers and the dashboard running
#
# Starts (when none answers) dockerd and Redis through setup.sh, then two
# dockrq-worker processes and rq-dashboard, and submits four executions: one
# that succeeds while streaming its logs, one that fails, one that is
# OOM-killed and one that is cancelled. Env: DOCKRQ_REDIS_URL, DOCKRQ_DEMO_QUEUE,
# DOCKRQ_DASHBOARD_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

./scripts/setup.sh

export DOCKRQ_REDIS_URL=${DOCKRQ_REDIS_URL:-redis://127.0.0.1:6379/0}
export DOCKRQ_QUEUE=${DOCKRQ_DEMO_QUEUE:-demo}
export DOCKRQ_QUEUES=$DOCKRQ_QUEUE
PORT=${DOCKRQ_DASHBOARD_PORT:-9181}
IMAGE=dockrq-test/busybox:latest
BIN=$PWD/.venv/bin
RUN=$(mktemp -d /tmp/dockrq-demo.XXXXXX)
pids=()

stop_all() {
  [ ${#pids[@]} -gt 0 ] || return 0
  echo
  echo "== stopping the demo's workers and dashboard"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  "$BIN/dockrq-worker" --executor-id demo-node cleanup >/dev/null 2>&1 || true
}
[ $KEEP = 1 ] || trap stop_all EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
dockrq() { "$BIN/dockrq" "$@"; }

say "starting 2 workers on queue '$DOCKRQ_QUEUE' (logs in $RUN)"
for n in 1 2; do
  "$BIN/dockrq-worker" --executor-id demo-node run --name "demo-worker-$n.$$" --stop-grace 2 \
    >"$RUN/worker-$n.log" 2>&1 &
  pids+=($!)
done

if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  DOCKRQ_DASHBOARD_PORT=$PORT ./scripts/dashboard.sh >"$RUN/dashboard.log" 2>&1 &
  pids+=($!)
fi

"$BIN/dockrq-worker" doctor >/dev/null || { "$BIN/dockrq-worker" doctor; exit 1; }
for _ in $(seq 1 100); do
  [ "$("$BIN/python" -c "
import redis, rq
from rq.serializers import JSONSerializer
c = redis.Redis.from_url('$DOCKRQ_REDIS_URL')
print(sum(1 for w in rq.Worker.all(connection=c, serializer=JSONSerializer) if w.name.endswith('.$$')))
")" = 2 ] && break
  sleep 0.1
done

say "1. succeeds, logs streamed live (stderr kept apart)"
dockrq submit "$IMAGE" sh -c 'for i in 1 2 3 4 5; do echo "step $i of 5"; sleep 0.3; done; echo "done" >&2'
echo "-> exit code $?"

say "2. fails: the container's exit code comes back"
set +e
dockrq submit "$IMAGE" sh -c 'echo "about to fail" >&2; exit 3'
echo "-> exit code $?"

say "3. OOM-killed: a 16 MiB limit and a 64 MiB allocation"
dockrq submit --memory 16m "$IMAGE" dd if=/dev/zero of=/dev/null bs=64M count=1
echo "-> exit code $?"

say "4. cancelled while running"
id=$(dockrq submit -d -e API_TOKEN=hidden-in-the-dashboard "$IMAGE" sh -c 'echo started; sleep 300')
sleep 1.5
dockrq logs "$id"
dockrq cancel "$id"
dockrq wait "$id"
echo "-> exit code $?"
set -e

say "outcomes"
dockrq ls --limit 4
say "the cancelled execution's outcome, as JSON on its Redis key"
dockrq --json status "$id"

say "dashboard: http://127.0.0.1:$PORT (rq-dashboard, JSON serializer)"
if [ $KEEP = 1 ]; then
  echo "workers and dashboard keep running (pids ${pids[*]}); stop them with: kill ${pids[*]}"
fi
