#!/usr/bin/env bash
# Local Kubernetes test bed for queue-worker: a real control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler) plus kwok faking the
# kubelets of two node pools (Kata and HyperD). Everything listens on
# 127.0.0.1; no containers, no downloads beyond the Go module proxy (first
# build only, see build-controlplane.sh).
#
#   eval "$(scripts/dev-cluster.sh up)"   start (or reuse) and export KUBECONFIG
#   scripts/dev-cluster.sh status         component PIDs; exit 0 iff all running
#   scripts/dev-cluster.sh env            print the export lines only
#   scripts/dev-cluster.sh down           stop what `up` started, wipe etcd data
#   scripts/dev-cluster.sh purge          down, then remove the whole state dir
#
# stdout of `up`/`env` is only `export NAME=value` lines; progress goes to
# stderr. Environment (defaults):
#   QW_DEV_CLUSTER_DIR      $HOME/.cache/queue-worker/dev-cluster
#   QW_ETCD_PORT            23790   etcd client
#   QW_ETCD_PEER_PORT       23800   etcd peer
#   QW_APISERVER_PORT       16443   kube-apiserver (HTTPS)
#   QW_KWOK_NODES_PER_POOL  2       fake nodes per pool
#   QW_UP_TIMEOUT           120     seconds to wait for each readiness step
#   QW_KCM_CONTROLLERS      (list below) kube-controller-manager --controllers
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

STATE=${QW_DEV_CLUSTER_DIR:-$HOME/.cache/queue-worker/dev-cluster}
ETCD_PORT=${QW_ETCD_PORT:-23790}
ETCD_PEER_PORT=${QW_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${QW_APISERVER_PORT:-16443}
NODES_PER_POOL=${QW_KWOK_NODES_PER_POOL:-2}
UP_TIMEOUT=${QW_UP_TIMEOUT:-120}

# Controllers we rely on: ownerReference GC, ServiceAccounts and their
# tokens, namespace deletion, node health/taints, pod GC, kube-root-ca.crt,
# RBAC role aggregation. The rest only burns CPU on a 2-core box.
KCM_CONTROLLERS=${QW_KCM_CONTROLLERS:-garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,node-lifecycle-controller,taint-eviction-controller,pod-garbage-collector-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller}

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

PKI=$STATE/pki
CERT_DIR=$PKI/apiserver
LOGS=$STATE/logs
RUN=$STATE/run
ETCD_DATA=$STATE/etcd-data
KUBECONFIG_FILE=$STATE/kubeconfig
TOKEN_FILE=$PKI/tokens.csv
STAGES=$REPO/scripts/kwok/stages.yaml
RUNTIMECLASS=$REPO/deploy/runtimeclass-kata.yaml
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT

log() { echo "[dev-cluster] $*" >&2; }
die() { echo "[dev-cluster] ERROR: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

print_env() {
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
}

# --- process bookkeeping ----------------------------------------------------

bin_dir() { "$HERE/build-controlplane.sh" --print-bin-dir; }

pid_of() { # component -> recorded PID or nothing
  local f=$RUN/$1.pid
  [ -s "$f" ] && cat "$f"
  return 0
}

# True when PID is alive, not a zombie, and still runs the binary we started
# (guards against PID reuse after a crash or reboot).
pid_alive() { # pid component
  local pid=$1 comp=$2 state cmd
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  cmd=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) || return 1
  [ "${cmd##*/}" = "$comp" ]
}

running() { pid_alive "$(pid_of "$1")" "$1"; }

stop_component() { # component
  local comp=$1 pid i
  pid=$(pid_of "$comp")
  if pid_alive "$pid" "$comp"; then
    log "stopping $comp (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      pid_alive "$pid" "$comp" || break
      sleep 0.1
    done
    if pid_alive "$pid" "$comp"; then
      log "$comp (pid $pid) ignored SIGTERM for 10s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" "$comp" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$RUN/$comp.pid"
}

port_in_use() { # port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Loopback ports each component listens on, as "port:VARIABLE" pairs.
ports_of() {
  case $1 in
    etcd) echo "$ETCD_PORT:QW_ETCD_PORT $ETCD_PEER_PORT:QW_ETCD_PEER_PORT" ;;
    kube-apiserver) echo "$APISERVER_PORT:QW_APISERVER_PORT" ;;
  esac
}

check_ports_free() { # components...
  local comp pair
  for comp in "$@"; do
    for pair in $(ports_of "$comp"); do
      if port_in_use "${pair%%:*}"; then
        die "127.0.0.1:${pair%%:*} (for $comp) is in use by another process; stop it or set ${pair#*:}"
      fi
    done
  done
}

start_daemon() { # component args...
  local comp=$1 pid
  shift
  log "starting $comp (log: $LOGS/$comp.log)"
  echo "=== $(date -u +%FT%TZ) starting $comp" >>"$LOGS/$comp.log"
  # The subshell closes every inherited descriptor above 2 (our flock fd,
  # pipes of whoever called us) and then execs, so $! is the daemon's PID.
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec "$BIN/$comp" "$@"
  ) </dev/null >>"$LOGS/$comp.log" 2>&1 &
  pid=$!
  echo "$pid" >"$RUN/$comp.pid"
}

wait_for() { # description command...
  local what=$1 deadline=$((SECONDS + UP_TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${UP_TIMEOUT}s waiting for $what (logs: $LOGS)"
    fi
    check_started_alive
    sleep 0.2
  done
}

# Components started in this run must stay alive while we wait on later ones.
STARTED=()
check_started_alive() {
  local comp
  for comp in "${STARTED[@]+"${STARTED[@]}"}"; do
    if ! running "$comp"; then
      tail -n 20 "$LOGS/$comp.log" >&2 || true
      die "$comp exited during startup; last log lines above ($LOGS/$comp.log)"
    fi
  done
}

# --- one-time state ---------------------------------------------------------

ensure_state() {
  mkdir -p "$PKI" "$CERT_DIR" "$LOGS" "$RUN"
  chmod 700 "$PKI"
  if [ ! -s "$PKI/sa.key" ] || [ ! -s "$PKI/sa.pub" ]; then
    log "generating service-account key pair"
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  if [ ! -s "$TOKEN_FILE" ]; then
    printf '%s,admin,admin,system:masters\n' "$(openssl rand -hex 24)" >"$TOKEN_FILE"
    chmod 600 "$TOKEN_FILE"
  fi
  cat >"$STATE/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $KUBECONFIG_FILE
  qps: 1000
  burst: 2000
leaderElection:
  leaderElect: false
EOF
}

admin_token() { cut -d, -f1 "$TOKEN_FILE"; }

# kube-apiserver self-signs on first start; apiserver.crt (cert + its CA) is
# what clients trust.
write_kubeconfig() {
  local tmp
  tmp=$(mktemp "$STATE/kubeconfig.XXXXXX")
  chmod 600 "$tmp"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: qw-dev
  cluster:
    server: $APISERVER_URL
    certificate-authority: $CERT_DIR/apiserver.crt
users:
- name: admin
  user:
    token: $(admin_token)
contexts:
- name: qw-dev
  context:
    cluster: qw-dev
    user: admin
current-context: qw-dev
EOF
  mv "$tmp" "$KUBECONFIG_FILE"
}

# --- readiness probes -------------------------------------------------------

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

apiserver_ready() {
  [ -s "$CERT_DIR/apiserver.crt" ] &&
    curl -fsS --max-time 2 --cacert "$CERT_DIR/apiserver.crt" \
      -H "Authorization: Bearer $(admin_token)" "$APISERVER_URL/readyz" 2>/dev/null | grep -qx ok
}

api_get() { # path -> body; fails on HTTP error
  curl -fsS --max-time 5 --cacert "$CERT_DIR/apiserver.crt" \
    -H "Authorization: Bearer $(admin_token)" "$APISERVER_URL$1"
}

default_sa_exists() { api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null; }

all_nodes_ready() {
  local want=$((2 * NODES_PER_POOL)) ready
  ready=$(kubectl get nodes -l type=kwok --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)
  [ "$ready" -ge "$want" ]
}

# --- cluster objects --------------------------------------------------------

node_manifest() {
  local pool i name
  for pool in kata hyperd; do
    for ((i = 0; i < NODES_PER_POOL; i++)); do
      name=kwok-$pool-$i
      cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    dedicated: screwdriver-$pool
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
spec:
  taints:
  - key: dedicated
    value: screwdriver-$pool
    effect: NoSchedule
status:
  capacity: {cpu: "1000", memory: 4Ti, pods: "1000", ephemeral-storage: 10Ti}
  allocatable: {cpu: "1000", memory: 4Ti, pods: "1000", ephemeral-storage: 10Ti}
EOF
    done
  done
}

apply_objects() {
  log "creating kwok nodes (pools kata, hyperd x $NODES_PER_POOL) and RuntimeClass kata"
  { node_manifest; echo "---"; cat "$RUNTIMECLASS"; } |
    kubectl apply --server-side --force-conflicts -f - >/dev/null
}

# --- subcommands ------------------------------------------------------------

start_from() { # index of first component to (re)start
  local first=$1 i comp
  for ((i = ${#COMPONENTS[@]} - 1; i >= first; i--)); do
    stop_component "${COMPONENTS[i]}"
  done
  check_ports_free "${COMPONENTS[@]:first}"
  for ((i = first; i < ${#COMPONENTS[@]}; i++)); do
    comp=${COMPONENTS[i]}
    case $comp in
      etcd)
        mkdir -p "$ETCD_DATA"
        start_daemon etcd \
          --name=qw-dev \
          --data-dir="$ETCD_DATA" \
          --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
          --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
          --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
          --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
          --initial-cluster="qw-dev=http://127.0.0.1:$ETCD_PEER_PORT" \
          --unsafe-no-fsync \
          --log-level=warn
        STARTED+=(etcd)
        wait_for "etcd /health" etcd_healthy
        ;;
      kube-apiserver)
        start_daemon kube-apiserver \
          --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
          --bind-address=127.0.0.1 \
          --advertise-address=127.0.0.1 \
          --secure-port="$APISERVER_PORT" \
          --cert-dir="$CERT_DIR" \
          --token-auth-file="$TOKEN_FILE" \
          --authorization-mode=RBAC \
          --service-account-issuer=https://kubernetes.default.svc \
          --service-account-key-file="$PKI/sa.pub" \
          --service-account-signing-key-file="$PKI/sa.key" \
          --service-cluster-ip-range=10.96.0.0/16 \
          --endpoint-reconciler-type=none \
          --allow-privileged=true \
          --profiling=true
        STARTED+=(kube-apiserver)
        wait_for "kube-apiserver /readyz" apiserver_ready
        write_kubeconfig
        ;;
      kube-controller-manager)
        start_daemon kube-controller-manager \
          --kubeconfig="$KUBECONFIG_FILE" \
          --bind-address=127.0.0.1 \
          --secure-port=0 \
          --leader-elect=false \
          --controllers="$KCM_CONTROLLERS" \
          --service-account-private-key-file="$PKI/sa.key" \
          --root-ca-file="$CERT_DIR/apiserver.crt" \
          --use-service-account-credentials=false \
          --kube-api-qps=500 \
          --kube-api-burst=1000 \
          --profiling=false
        STARTED+=(kube-controller-manager)
        ;;
      kube-scheduler)
        start_daemon kube-scheduler \
          --config="$STATE/kube-scheduler.yaml" \
          --bind-address=127.0.0.1 \
          --secure-port=0 \
          --profiling=false
        STARTED+=(kube-scheduler)
        ;;
      kwok)
        start_daemon kwok \
          --kubeconfig="$KUBECONFIG_FILE" \
          --manage-nodes-with-label-selector=type=kwok \
          --cidr=10.244.0.0/16 \
          --node-ip=127.0.0.1 \
          --node-lease-duration-seconds=40 \
          --config="$STAGES"
        STARTED+=(kwok)
        ;;
    esac
  done
  export KUBECONFIG=$KUBECONFIG_FILE
  apply_objects
  wait_for "the default ServiceAccount (kube-controller-manager)" default_sa_exists
  wait_for "$((2 * NODES_PER_POOL)) kwok nodes Ready" all_nodes_ready
  check_started_alive
}

cmd_up() {
  local start=$SECONDS i first=-1
  command -v kubectl >/dev/null || die "kubectl is required"
  command -v curl >/dev/null || die "curl is required"
  command -v openssl >/dev/null || die "openssl is required"
  [ "$NODES_PER_POOL" -ge 1 ] 2>/dev/null || die "QW_KWOK_NODES_PER_POOL must be >= 1"

  mkdir -p "$STATE"
  exec 8>"$STATE/.lock"
  flock 8

  for ((i = 0; i < ${#COMPONENTS[@]}; i++)); do
    if ! running "${COMPONENTS[i]}"; then first=$i; break; fi
  done
  if ((first < 0)); then
    # All processes alive: a busy apiserver may miss one probe, so give it a
    # few seconds before deciding it is wedged and restarting from it.
    for ((i = 0; i < 50; i++)); do
      if apiserver_ready; then
        [ -s "$KUBECONFIG_FILE" ] || write_kubeconfig
        log "already running (state: $STATE)"
        print_env
        return 0
      fi
      sleep 0.2
    done
    log "all processes alive but kube-apiserver not ready for 10s"
    first=1
  fi

  BIN=$("$HERE/build-controlplane.sh") || die "building the control plane failed"
  BIN=$(tail -n1 <<<"$BIN")
  ensure_state
  if ((first > 0)); then
    log "recovering: ${COMPONENTS[first]} is not running; restarting it and later components"
  fi
  start_from "$first"
  log "cluster up in $((SECONDS - start))s: $APISERVER_URL, nodes: $(kubectl get nodes -o name | sed 's|node/||' | paste -sd' ')"
  print_env
}

cmd_down() {
  local i
  mkdir -p "$STATE"
  exec 8>"$STATE/.lock"
  flock 8
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${COMPONENTS[i]}"
  done
  rm -rf "$ETCD_DATA"
  log "stopped; etcd data removed (state kept in $STATE)"
}

cmd_status() {
  local comp pid all=0
  for comp in "${COMPONENTS[@]}"; do
    pid=$(pid_of "$comp")
    if pid_alive "$pid" "$comp"; then
      printf '%-24s %-8s running\n' "$comp" "$pid"
    else
      printf '%-24s %-8s stopped\n' "$comp" "${pid:--}"
      all=1
    fi
  done
  if ((all == 0)) && ! apiserver_ready; then
    echo "kube-apiserver is running but not ready ($APISERVER_URL/readyz)"
    all=1
  fi
  return "$all"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) print_env ;;
  purge)
    cmd_down
    rm -rf "$STATE"
    log "removed $STATE"
    ;;
  -h | --help | help) usage ;;
  *)
    usage
    exit 2
    ;;
esac
