#!/usr/bin/env bash
# Throwaway Redis topologies on loopback for queue-worker's tests and for
# trying the daemon by hand: a Sentinel set (1 primary, 1 replica, 3
# sentinels) or a 3-primary Redis Cluster. Free ports, AOF on, passwords
# generated per start (the sentinels' password differs from the data nodes').
# Uses Debian's redis-server/redis-cli (`install` below gets them);
# sentinels run as `redis-server FILE --sentinel`, so the separate
# redis-sentinel package is not needed.
#
#   eval "$(scripts/redis-topology.sh sentinel up)"   start (or reuse), export the daemon's env
#   eval "$(scripts/redis-topology.sh cluster up)"
#   scripts/redis-topology.sh sentinel env            print the export lines only
#   scripts/redis-topology.sh sentinel status         exit 0 iff every server answers
#   scripts/redis-topology.sh sentinel down           stop the servers, delete their data
#   scripts/redis-topology.sh install                 apt-get install redis-server if missing
#
# Options: --dir DIR  state directory (configs, data, logs, pids).
# stdout of up/env is only `export NAME='value'` lines: the daemon's own
# REDIS_* variables, plus QW_REDIS_DATA_NODES (JSON array of the data nodes,
# for Sentinel the primary at start first). Progress goes to stderr.
# Environment (defaults):
#   QW_REDIS_TOPOLOGY_ROOT  $HOME/.cache/queue-worker   state in <root>/redis-<topology>
#   QW_REDIS_TOPOLOGY_WAIT  30    seconds to wait for each readiness step
set -euo pipefail

log() { echo "[redis-topology] $*" >&2; }
die() {
  echo "[redis-topology] ERROR: $*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# install: what `make test` runs first. ensure-redis.sh installs the package
# only when it has to start the shared Redis itself.
if [ "${1:-}" = install ] && [ $# -eq 1 ]; then
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    exit 0
  fi
  command -v apt-get >/dev/null 2>&1 || die "redis-server/redis-cli are missing and apt-get is not available; install Redis yourself"
  SUDO=()
  [ "$(id -u)" = 0 ] || SUDO=(sudo)
  log "installing redis-server with apt-get..."
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2 ||
    die "apt-get install redis-server failed"
  exit 0
fi

[ $# -ge 2 ] || usage
TOPOLOGY=$1 ACTION=$2
shift 2
case $TOPOLOGY in sentinel | cluster) ;; *) usage ;; esac
STATE=${QW_REDIS_TOPOLOGY_ROOT:-$HOME/.cache/queue-worker}/redis-$TOPOLOGY
while [ $# -gt 0 ]; do
  case $1 in
    --dir)
      [ $# -ge 2 ] || usage
      STATE=$2
      shift 2
      ;;
    *) usage ;;
  esac
done
WAIT=${QW_REDIS_TOPOLOGY_WAIT:-30}
MASTER_NAME=qwmaster
# Configs and the env file hold the passwords.
umask 077
ENV_FILE=$STATE/topology.env

for bin in redis-server redis-cli; do
  command -v "$bin" >/dev/null 2>&1 ||
    die "$bin is not installed; run: $0 install (Debian's redis-server package)"
done

# --- processes ----------------------------------------------------------------

# Every server runs in its own directory under $STATE (its `dir`), so a PID is
# ours only if it is redis-server and its cwd is that directory: a recycled
# PID never gets a signal from us.
pid_ours() { # node-dir
  local dir=$1 pid
  [ -s "$dir/redis.pid" ] || return 1
  pid=$(cat "$dir/redis.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(command -v redis-server | xargs readlink -f)" ] || return 1
  [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$(cd "$dir" && pwd -P)" ] || return 1
  echo "$pid"
}

stop_node() { # node-dir
  local dir=$1 pid i
  pid=$(pid_ours "$dir") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.05
  done
  log "redis-server pid $pid ($dir) ignored SIGTERM for 5s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

node_dirs() {
  local d
  for d in "$STATE"/primary "$STATE"/replica "$STATE"/sentinel-* "$STATE"/node-*; do
    [ -d "$d" ] && echo "$d"
  done
  return 0
}

down() {
  local d
  for d in $(node_dirs); do stop_node "$d"; done
  for d in $(node_dirs); do rm -rf "$d"; done
  rm -f "$ENV_FILE" "$STATE/cluster-create.log"
}

cli() { # port password args...
  local port=$1 pass=$2
  shift 2
  # The password through the environment, not argv (ps shows argv).
  REDISCLI_AUTH=$pass timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@"
}

wait_until() { # description command...
  local what=$1 deadline=$((SECONDS + WAIT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${WAIT}s waiting for $what (logs under $STATE)"
    sleep 0.1
  done
}

# --- ports ------------------------------------------------------------------

# Ports come from 20000-29999: below Linux's ephemeral range, so a client's
# outgoing connection never holds one, and a cluster bus port (+10000 would
# be the default) is chosen the same way. A port can still be taken between
# the check and the bind: start_node then picks another. The dev cluster's
# fixed etcd ports are never picked, even while it is down.
USED_PORTS=" ${QW_ETCD_PORT:-23790} ${QW_ETCD_PEER_PORT:-23800} "
PORT=
pick_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + RANDOM % 10000))
    case $USED_PORTS in *" $p "*) continue ;; esac
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
    USED_PORTS="$USED_PORTS$p "
    PORT=$p
    return 0
  done
  die "no free port found in 20000-29999"
}

# start_node DIR CONF-FUNCTION [--sentinel]: picks a port, writes the config
# CONF-FUNCTION prints for it, starts redis-server and waits until it answers
# PING (with $NODE_PASS). On a port lost to a race it retries with another.
NODE_PASS=
start_node() {
  local dir=$1 conf=$2 mode=${3:-} attempt deadline
  mkdir -p "$dir"
  for ((attempt = 0; attempt < 5; attempt++)); do
    pick_port
    BUS_PORT=
    if [ "$TOPOLOGY" = cluster ]; then
      local p=$PORT
      pick_port
      BUS_PORT=$PORT PORT=$p
    fi
    "$conf" "$dir" >"$dir/redis.conf"
    : >"$dir/redis.log"
    # Daemonized, with no descriptor of ours: neither a caller reading our
    # stdout (eval, a Go test) nor the state lock (fd 9) is held by it.
    redis-server "$dir/redis.conf" ${mode:+"$mode"} </dev/null >/dev/null 2>&1 9>&- ||
      die "redis-server failed to start ($dir/redis.log)"
    deadline=$((SECONDS + WAIT))
    while ((SECONDS < deadline)); do
      if [ "$(cli "$PORT" "$NODE_PASS" PING 2>/dev/null)" = PONG ] && pid_ours "$dir" >/dev/null; then
        echo "$PORT" >"$dir/port"
        return 0
      fi
      if grep -q "Address already in use" "$dir/redis.log" 2>/dev/null; then
        log "port $PORT was taken meanwhile; trying another"
        continue 2
      fi
      sleep 0.05
    done
    tail -n 20 "$dir/redis.log" >&2 || true
    die "redis-server in $dir did not answer on 127.0.0.1:$PORT within ${WAIT}s"
  done
  die "could not find free ports for $dir"
}

common_conf() { # dir
  cat <<EOF
bind 127.0.0.1
port $PORT
daemonize yes
dir $1
pidfile $1/redis.pid
logfile $1/redis.log
EOF
}

data_conf() { # dir
  common_conf "$1"
  cat <<EOF
appendonly yes
save ""
repl-diskless-sync-delay 0
requirepass $DATA_PASS
masterauth $DATA_PASS
EOF
}

primary_conf() { data_conf "$1"; }

replica_conf() {
  data_conf "$1"
  echo "replicaof 127.0.0.1 $PRIMARY_PORT"
}

sentinel_conf() { # dir
  common_conf "$1"
  # sentinel-pass: sentinels authenticate to each other with it, since
  # every one of them requires it.
  cat <<EOF
requirepass $SENTINEL_PASS
sentinel sentinel-pass $SENTINEL_PASS
sentinel monitor $MASTER_NAME 127.0.0.1 $PRIMARY_PORT 2
sentinel auth-pass $MASTER_NAME $DATA_PASS
sentinel down-after-milliseconds $MASTER_NAME 5000
sentinel failover-timeout $MASTER_NAME 10000
sentinel parallel-syncs $MASTER_NAME 1
EOF
}

cluster_conf() { # dir
  data_conf "$1"
  cat <<EOF
cluster-enabled yes
cluster-config-file $1/nodes.conf
cluster-port $BUS_PORT
cluster-node-timeout 5000
EOF
}

# --- readiness ----------------------------------------------------------------

replica_in_sync() {
  cli "$REPLICA_PORT" "$DATA_PASS" INFO replication | tr -d '\r' | grep -qx 'master_link_status:up'
}

# A sentinel is ready when it sees the primary up, the replica, and both
# other sentinels: only then can a forced failover pick the replica at once.
sentinel_ready() { # port
  local out
  out=$(cli "$1" "$SENTINEL_PASS" SENTINEL MASTER "$MASTER_NAME" | tr -d '\r') || return 1
  awk -v want_ip=127.0.0.1 -v want_port="$PRIMARY_PORT" '
    NR % 2 == 1 { k = $0; next }
    { v[k] = $0 }
    END {
      ok = v["ip"] == want_ip && v["port"] == want_port && v["flags"] == "master" &&
           v["num-slaves"] >= 1 && v["num-other-sentinels"] == 2
      exit ok ? 0 : 1
    }' <<<"$out" || return 1
  # The replica must be known as a healthy replica, not just listed.
  cli "$1" "$SENTINEL_PASS" SENTINEL REPLICAS "$MASTER_NAME" | tr -d '\r' |
    awk 'prev == "flags" && $0 == "slave" { found = 1 } { prev = $0 } END { exit found ? 0 : 1 }'
}

cluster_ok() {
  local port
  for port in "${NODE_PORTS[@]}"; do
    cli "$port" "$DATA_PASS" CLUSTER INFO | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
  done
  # Every node agrees on the slot table (what a client loads from any one).
  REDISCLI_AUTH=$DATA_PASS timeout 10 redis-cli --cluster check "127.0.0.1:${NODE_PORTS[0]}" |
    grep -q "All nodes agree about slots configuration"
}

# --- state ------------------------------------------------------------------

hosts_json() {
  local out="" p
  for p in "$@"; do out="$out${out:+,}\"127.0.0.1:$p\""; done
  echo "[$out]"
}

write_env() { # NAME=value...
  local kv
  : >"$ENV_FILE.tmp"
  for kv in "$@"; do
    case $kv in *"'"*) die "internal: a value holds a quote: $kv" ;; esac
    printf "export %s='%s'\n" "${kv%%=*}" "${kv#*=}" >>"$ENV_FILE.tmp"
  done
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# Up when the env file exists and every server it started answers.
is_up() {
  local d port pass
  [ -s "$ENV_FILE" ] || return 1
  pass=$(sed -n "s/^export REDIS_PASSWORD='\(.*\)'$/\1/p" "$ENV_FILE")
  local spass
  spass=$(sed -n "s/^export REDIS_SENTINEL_PASSWORD='\(.*\)'$/\1/p" "$ENV_FILE")
  for d in $(node_dirs); do
    pid_ours "$d" >/dev/null || return 1
    port=$(cat "$d/port" 2>/dev/null) || return 1
    case ${d##*/} in
      sentinel-*) [ "$(cli "$port" "$spass" PING 2>/dev/null)" = PONG ] || return 1 ;;
      *) [ "$(cli "$port" "$pass" PING 2>/dev/null)" = PONG ] || return 1 ;;
    esac
  done
  [ -n "$(node_dirs)" ]
}

random_secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

up_sentinel() {
  DATA_PASS=$(random_secret)
  SENTINEL_PASS=$(random_secret)
  NODE_PASS=$DATA_PASS
  start_node "$STATE/primary" primary_conf
  PRIMARY_PORT=$PORT
  start_node "$STATE/replica" replica_conf
  REPLICA_PORT=$PORT
  wait_until "the replica to sync with the primary" replica_in_sync
  NODE_PASS=$SENTINEL_PASS
  local i ports=()
  for i in 1 2 3; do
    start_node "$STATE/sentinel-$i" sentinel_conf --sentinel
    ports+=("$PORT")
  done
  for i in "${ports[@]}"; do
    wait_until "sentinel 127.0.0.1:$i to see the primary, the replica and the other sentinels" sentinel_ready "$i"
  done
  write_env REDIS_TYPE=redisSentinel \
    "REDIS_CLUSTER_HOSTS=$(hosts_json "${ports[@]}")" \
    REDIS_SENTINEL_MASTER_NAME=$MASTER_NAME \
    "REDIS_PASSWORD=$DATA_PASS" \
    "REDIS_SENTINEL_PASSWORD=$SENTINEL_PASS" \
    "QW_REDIS_DATA_NODES=$(hosts_json "$PRIMARY_PORT" "$REPLICA_PORT")"
  log "Sentinel set up: primary 127.0.0.1:$PRIMARY_PORT, replica 127.0.0.1:$REPLICA_PORT, sentinels ${ports[*]} (master name $MASTER_NAME)"
}

up_cluster() {
  DATA_PASS=$(random_secret)
  NODE_PASS=$DATA_PASS
  NODE_PORTS=()
  local i addrs=()
  for i in 1 2 3; do
    start_node "$STATE/node-$i" cluster_conf
    NODE_PORTS+=("$PORT")
    addrs+=("127.0.0.1:$PORT")
  done
  REDISCLI_AUTH=$DATA_PASS timeout 60 redis-cli --cluster create "${addrs[@]}" \
    --cluster-replicas 0 --cluster-yes >"$STATE/cluster-create.log" 2>&1 || {
    cat "$STATE/cluster-create.log" >&2
    die "redis-cli --cluster create failed"
  }
  wait_until "the cluster to cover every slot on every node" cluster_ok
  write_env REDIS_TYPE=redisCluster \
    "REDIS_CLUSTER_HOSTS=$(hosts_json "${NODE_PORTS[@]}")" \
    "REDIS_PASSWORD=$DATA_PASS" \
    "QW_REDIS_DATA_NODES=$(hosts_json "${NODE_PORTS[@]}")"
  log "Redis Cluster up: primaries ${addrs[*]}"
}

# --- main -------------------------------------------------------------------

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd -P)
ENV_FILE=$STATE/topology.env
# One up/down at a time per state dir.
exec 9>"$STATE/.lock"
flock -w "$WAIT" 9 || die "another redis-topology.sh holds $STATE/.lock"

case $ACTION in
  up)
    if is_up; then
      log "$TOPOLOGY already up in $STATE"
    else
      down # whatever a failed or crashed start left
      "up_$TOPOLOGY"
    fi
    cat "$ENV_FILE"
    ;;
  env)
    is_up || die "$TOPOLOGY is not up in $STATE (run: $0 $TOPOLOGY up)"
    cat "$ENV_FILE"
    ;;
  status)
    if is_up; then
      log "$TOPOLOGY is up in $STATE"
      exit 0
    fi
    log "$TOPOLOGY is not up in $STATE"
    exit 1
    ;;
  down)
    down
    log "$TOPOLOGY down ($STATE)"
    ;;
  *) usage ;;
esac
