#!/usr/bin/env bash
# `make demo`: brings up Redis and the local control plane, runs the worker,
# enqueues ~50 builds in the resque format, shows where each went and why,
# then plays a short autopilot rollout (its own resque and kube namespace,
# decisions every 4s: 20% → 80% of builds to Kata, then back to 20% once
# Kata pods segfault at start), and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_NS=qw-demo
DEMO_PREFIX=demo_
DEMO_PORT=${QW_DEMO_PORT:-18080}
LOG_DIR=${QW_DEMO_LOG_DIR:-$HOME/.cache/queue-worker/demo}
mkdir -p "$LOG_DIR" bin

scripts/ensure-packages.sh
scripts/ensure-redis.sh
started_cluster=0
if ! scripts/dev-cluster.sh status >/dev/null 2>&1; then started_cluster=1; fi
worker_pid=
cleanup() {
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [ "$started_cluster" = 1 ]; then scripts/dev-cluster.sh down || true; fi
}
trap cleanup EXIT
eval "$(scripts/dev-cluster.sh up)"

echo "[demo] building the worker" >&2
go build -trimpath -o bin/queue-worker ./cmd/queue-worker
go build -trimpath -o bin/demo ./scripts/demo
bin/demo -reset -prefix "$DEMO_PREFIX" -kube-namespace "$DEMO_NS"

echo "[demo] starting queue-worker (log: $LOG_DIR/worker.log): 50% of builds to Kata, rhel6 images to hyperd; blocked starts retried every 3s" >&2
K8S_JOBS_NAMESPACE=$DEMO_NS REDIS_QUEUE_PREFIX=$DEMO_PREFIX WEIGHT_K8S=50 \
  K8S_EXECUTOR_EXCLUSION='["rhel6"]' HOST=127.0.0.1 PORT=$DEMO_PORT LOG_FORMAT=console \
  VERIFY_EXIT139_WINDOW=2s ECOSYSTEM_API=http://127.0.0.1:18090 PLUGIN_BLOCKEDBY_REENQUEUE_WAIT_TIME=0.05 \
  bin/queue-worker run </dev/null >"$LOG_DIR/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 100); do
  if curl -fsS --max-time 1 "http://127.0.0.1:$DEMO_PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$worker_pid" 2>/dev/null; then
    echo "[demo] the worker exited:" >&2; tail -20 "$LOG_DIR/worker.log" >&2; exit 1
  fi
  sleep 0.2
done

bin/demo -prefix "$DEMO_PREFIX" -kube-namespace "$DEMO_NS" -metrics "http://127.0.0.1:$DEMO_PORT/metrics" -builds 50

echo "[demo] stopping the worker with SIGTERM" >&2
kill -TERM "$worker_pid"
wait "$worker_pid" && echo "[demo] worker exited 0; last log lines:" >&2
worker_pid=
tail -3 "$LOG_DIR/worker.log" >&2

# The autopilot scene: bin/demo runs the worker itself (and restarts it),
# with this environment; it stops the worker on exit, errors and signals.
AP_NS=qw-demo-autopilot
AP_ENV=(K8S_JOBS_NAMESPACE=$AP_NS REDIS_RESQUE_NAMESPACE=$AP_NS REDIS_QUEUE_PREFIX=ap_
  HOST=127.0.0.1 PORT=$((DEMO_PORT + 1)) LOG_FORMAT=console ECOSYSTEM_API=http://127.0.0.1:18090
  WEIGHT_K8S=20 ROUTING_AUTOPILOT_ENABLED=true ROUTING_AUTOPILOT_STEP=20 ROUTING_AUTOPILOT_INTERVAL=4s
  ROUTING_AUTOPILOT_MAX_PERCENT=80 ROUTING_AUTOPILOT_MIN_BUILDS=4 ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA=0.1
  VERIFY_EXIT139_WINDOW=1s SUPERVISOR_LEASE_DURATION=3s SUPERVISOR_RENEW_DEADLINE=2s SUPERVISOR_RETRY_PERIOD=500ms
  QUEUE_LEASE_DURATION=3s QUEUE_RECOVER_INTERVAL=1s)
echo "[demo] autopilot scene (worker logs: $LOG_DIR/autopilot-worker*.log)" >&2
env "${AP_ENV[@]}" bin/demo -autopilot -worker bin/queue-worker -log-dir "$LOG_DIR" -rate 8 -timeout 90s
echo
echo "-- 3. \$ bin/queue-worker autopilot status   (same environment as the worker)"
env "${AP_ENV[@]}" bin/queue-worker autopilot status
