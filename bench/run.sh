#!/usr/bin/env bash
# Queue throughput: our consumer vs asynq vs node-resque on the same Redis.
#
# Each run pre-enqueues N jobs (not timed), then times a consumer with
# concurrency C draining them with a no-op handler until the N-th job is
# settled. Every implementation gets its own Redis DB (FLUSHDBed before each
# run; a DB holding keys the benchmark did not write is refused). Runs are
# interleaved (ours, asynq, node-resque, ours, ...) so drift hits all three
# alike; the table shows the median of REPS runs.
#
#   bench/run.sh                      # N=20000, CONCURRENCY="1 8", REPS=3
#   N=50000 CONCURRENCY=4 REPS=5 bench/run.sh
#
# Env: N, CONCURRENCY (space-separated), REPS, REDIS (host:port),
#      DB_OURS/DB_ASYNQ/DB_NODE (13/14/15), BENCH_TIMEOUT_MS (node-resque
#      worker poll sleep, 5), OUT (also write the table there).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-20000}
CONCURRENCY=${CONCURRENCY:-"1 8"}
REPS=${REPS:-3}
REDIS=${REDIS:-127.0.0.1:6379}
DB_OURS=${DB_OURS:-13}
DB_ASYNQ=${DB_ASYNQ:-14}
DB_NODE=${DB_NODE:-15}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "[bench] building drivers" >&2
(cd "$root" && go build -o "$tmp/ours" ./internal/queue/queuebench)
(cd "$root/bench" && go build -o "$tmp/asynq" ./asynqbench)
if [ ! -f "$root/bench/noderesque/node_modules/node-resque/package.json" ]; then
  (cd "$root/bench/noderesque" && npm install --no-audit --no-fund >&2)
fi

run() { # impl c
  case $1 in
    ours) "$tmp/ours" -redis "$REDIS" -db "$DB_OURS" -n "$N" -c "$2" ;;
    asynq) "$tmp/asynq" -redis "$REDIS" -db "$DB_ASYNQ" -n "$N" -c "$2" ;;
    node-resque) (cd "$root/bench/noderesque" && REDIS=$REDIS DB=$DB_NODE N=$N C=$2 node bench.js) ;;
  esac | grep '^RESULT '
}

results=$tmp/results
for c in $CONCURRENCY; do
  for rep in $(seq 1 "$REPS"); do
    for impl in ours asynq node-resque; do
      line=$(run "$impl" "$c")
      echo "[bench] c=$c rep=$rep $line" >&2
      echo "$line" >>"$results"
    done
  done
done

median() { # impl c
  awk -v i="$1" -v c="$2" '$2 == i && $4 == c { print $6 }' "$results" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

redis_version=$("$tmp/ours" -redis "$REDIS" -redis-version || true)
{
  echo "N=$N jobs, median of $REPS runs, $(nproc) CPUs, Redis ${redis_version:-?} at $REDIS"
  echo
  echo "| C | ours jobs/s | asynq jobs/s | node-resque jobs/s | ours/asynq | ours/node-resque |"
  echo "|---|---|---|---|---|---|"
  for c in $CONCURRENCY; do
    o=$(median ours "$c"); a=$(median asynq "$c"); r=$(median node-resque "$c")
    awk -v c="$c" -v o="$o" -v a="$a" -v r="$r" \
      'BEGIN { printf "| %s | %.0f | %.0f | %.0f | %.2f× | %.2f× |\n", c, o, a, r, o / a, o / r }'
  done
  echo
  echo "Every run (jobs/s, in run order):"
  echo
  for c in $CONCURRENCY; do
    for impl in ours asynq node-resque; do
      echo "- C=$c $impl: $(awk -v i="$impl" -v c="$c" '$2 == i && $4 == c { printf "%s%.0f", sep, $6; sep = ", " }' "$results")"
    done
  done
} | tee "${OUT:-/dev/null}"
