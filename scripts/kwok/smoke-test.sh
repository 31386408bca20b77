#!/usr/bin/env bash
# Checks the dev cluster (scripts/dev-cluster.sh up) behaves as the worker's
# tests expect: node pools, RuntimeClass placement, kwok pod lifecycle, the
# failure annotations of scripts/kwok/stages.yaml, deletion and ownerReference
# garbage collection. Uses kubectl (slow, ~0.1 s a call): not for hot paths.
#
#   eval "$(scripts/dev-cluster.sh up)" && scripts/kwok/smoke-test.sh
set -euo pipefail

: "${KUBECONFIG:?run: eval \"\$(scripts/dev-cluster.sh up)\" first}"
NS=smoke-$(date +%s)-$$
A=kwok.queue-worker.test
failures=0

log() { echo "[smoke] $*" >&2; }
pass() { echo "PASS $*"; }
fail() {
  echo "FAIL $*"
  failures=$((failures + 1))
}
check() { # description expected actual
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: want '$2', got '$3'"; fi
}
get() { kubectl get -n "$NS" "$@"; }
jp() { get pod "$1" -o "jsonpath=$2"; }

wait_jp() { # pod jsonpath want [timeout-seconds]
  local deadline=$((SECONDS + ${4:-20})) got=""
  while ((SECONDS < deadline)); do
    got=$(jp "$1" "$2" 2>/dev/null || true)
    [ "$got" = "$3" ] && break
    sleep 0.2
  done
  echo "$got"
}

wait_gone() { # pod [timeout-seconds]
  local deadline=$((SECONDS + ${2:-20}))
  while ((SECONDS < deadline)); do
    get pod "$1" >/dev/null 2>&1 || return 0
    sleep 0.2
  done
  return 1
}

pod() { # name annotations-json extra-spec-yaml [extra build-container fields]
  local ann=${2:-}
  [ -n "$ann" ] || ann='{}'
  cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: $1
  annotations: $ann
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 30
$3
  initContainers:
  - {name: setup, image: busybox:1.36}
  containers:
  - {name: build, image: node:20, resources: {limits: {cpu: "4", memory: 8Gi}}${4:-}}
  - {name: helper, image: busybox:1.36}
EOF
}
KATA='  runtimeClassName: kata'
HYPERD='  tolerations:
  - {key: dedicated, operator: Equal, value: screwdriver-hyperd, effect: NoSchedule}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {key: dedicated, operator: In, values: [screwdriver-hyperd]}'

cleanup() { kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

# --- nodes ------------------------------------------------------------------
check "kata pool Ready nodes >= 2" yes "$(kubectl get nodes -l type=kwok,dedicated=screwdriver-kata --no-headers | awk '$2 == "Ready"' | wc -l | awk '{print ($1 >= 2) ? "yes" : "no"}')"
check "hyperd pool Ready nodes >= 2" yes "$(kubectl get nodes -l type=kwok,dedicated=screwdriver-hyperd --no-headers | awk '$2 == "Ready"' | wc -l | awk '{print ($1 >= 2) ? "yes" : "no"}')"
check "kata node taint" "dedicated=screwdriver-kata:NoSchedule" "$(kubectl get node kwok-kata-0 -o jsonpath='{range .spec.taints[*]}{.key}={.value}:{.effect}{end}')"
check "RuntimeClass kata handler" kata "$(kubectl get runtimeclass kata -o jsonpath='{.handler}')"

kubectl create namespace "$NS" >/dev/null
# Pods are refused until kube-controller-manager has made the default SA.
for _ in $(seq 50); do get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done

{
  pod kata-ok '' "$KATA"
  pod hyperd-ok '' "$HYPERD" ', securityContext: {privileged: true}'
  pod pull "{\"$A/waiting-reason\": ErrImagePull, \"$A/waiting-message\": \"pull access denied\"}" "$KATA"
  pod segv "{\"$A/exit-code\": \"139\"}" "$KATA"
  pod execfmt "{\"$A/terminated-message\": \"exec format error\", \"$A/terminated-reason\": StartError, \"$A/exit-code\": \"128\"}" "$KATA"
  pod runs-then-succeeds "{\"$A/exit-code\": \"0\", \"$A/run-for\": 2s}" "$KATA"
  pod runs-then-fails "{\"$A/exit-code\": \"1\", \"$A/run-for\": 1s, \"$A/terminated-message\": \"npm test failed\"}" "$KATA"
} | kubectl apply -n "$NS" -f - >/dev/null

# --- happy paths --------------------------------------------------------------
check "kata pod Running" Running "$(wait_jp kata-ok '{.status.phase}' Running)"
node=$(jp kata-ok '{.spec.nodeName}')
check "kata pod on kata node" screwdriver-kata "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.dedicated}')"
check "kata pod got RuntimeClass nodeSelector" screwdriver-kata "$(jp kata-ok '{.spec.nodeSelector.dedicated}')"
check "kata pod conditions" "PodScheduled=True PodReadyToStartContainers=True Initialized=True ContainersReady=True Ready=True " \
  "$(jp kata-ok '{range .status.conditions[*]}{.type}={.status} {end}')"
check "kata pod condition timestamps" 5 "$(jp kata-ok '{range .status.conditions[*]}{.lastTransitionTime}{"\n"}{end}' | grep -c .)"
check "kata pod IPs/startTime set" yes "$(jp kata-ok '{.status.hostIP} {.status.podIP} {.status.startTime}' | awk 'NF == 3 {print "yes"}')"
check "init container Completed/0" "Completed/0" "$(jp kata-ok '{.status.initContainerStatuses[0].state.terminated.reason}/{.status.initContainerStatuses[0].state.terminated.exitCode}')"
check "containers running+ready" "build:true:true helper:true:true " \
  "$(jp kata-ok '{range .status.containerStatuses[*]}{.name}:{.ready}:{.state.running.startedAt}{"\n"}{end}' | awk -F: '{printf "%s:%s:%s ", $1, $2, ($3 != "") ? "true" : "false"}')"

check "hyperd pod Running" Running "$(wait_jp hyperd-ok '{.status.phase}' Running)"
node=$(jp hyperd-ok '{.spec.nodeName}')
check "hyperd pod on hyperd node" screwdriver-hyperd "$(kubectl get node "$node" -o jsonpath='{.metadata.labels.dedicated}')"
check "hyperd pod privileged" true "$(jp hyperd-ok '{.spec.containers[0].securityContext.privileged}')"

# --- admission ----------------------------------------------------------------
if out=$(pod no-rc '' '  runtimeClassName: no-such-class' | kubectl apply -n "$NS" -f - 2>&1); then
  fail "pod with missing RuntimeClass was accepted"
else
  case $out in
    *'RuntimeClass "no-such-class" not found'*) pass "pod with missing RuntimeClass rejected" ;;
    *) fail "pod with missing RuntimeClass: unexpected error: $out" ;;
  esac
fi

# --- failure annotations --------------------------------------------------------
check "waiting-reason: phase stays Pending" Pending "$(wait_jp pull '{.status.containerStatuses[0].state.waiting.reason}' ErrImagePull >/dev/null; jp pull '{.status.phase}')"
check "waiting-reason: containers waiting" "ErrImagePull/pull access denied ErrImagePull/pull access denied " \
  "$(jp pull '{range .status.containerStatuses[*]}{.state.waiting.reason}/{.state.waiting.message} {end}')"
check "waiting-reason: Ready False" "False/ContainersNotReady" "$(jp pull '{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}')"
check "exit-code 139: Failed" Failed "$(wait_jp segv '{.status.phase}' Failed)"
check "exit-code 139: terminated" "139/Error" "$(jp segv '{.status.containerStatuses[0].state.terminated.exitCode}/{.status.containerStatuses[0].state.terminated.reason}')"
check "terminated-message: Failed" Failed "$(wait_jp execfmt '{.status.phase}' Failed)"
check "terminated-message: state" "128/StartError/exec format error" \
  "$(jp execfmt '{.status.containerStatuses[0].state.terminated.exitCode}/{.status.containerStatuses[0].state.terminated.reason}/{.status.containerStatuses[0].state.terminated.message}')"
check "run-for + exit 0: Succeeded" Succeeded "$(wait_jp runs-then-succeeds '{.status.phase}' Succeeded)"
check "run-for: ran before terminating" yes "$(jp runs-then-succeeds '{.status.containerStatuses[0].state.terminated.startedAt} {.status.containerStatuses[0].state.terminated.finishedAt}' | awk '$1 < $2 {print "yes"}')"
check "run-for + exit 0: Completed" "0/Completed" "$(jp runs-then-succeeds '{.status.containerStatuses[0].state.terminated.exitCode}/{.status.containerStatuses[0].state.terminated.reason}')"
check "run-for + exit 1: Failed" Failed "$(wait_jp runs-then-fails '{.status.phase}' Failed)"
check "run-for + exit 1: message" "1/npm test failed" "$(jp runs-then-fails '{.status.containerStatuses[0].state.terminated.exitCode}/{.status.containerStatuses[0].state.terminated.message}')"
check "one podIP kept through termination" 1 "$(jp runs-then-fails '{range .status.podIPs[*]}{.ip}{"\n"}{end}' | grep -c .)"

# --- deletion and garbage collection --------------------------------------------
uid=$(jp kata-ok '{.metadata.uid}')
cat <<EOF | kubectl apply -n "$NS" -f - >/dev/null
apiVersion: v1
kind: Pod
metadata:
  name: owned
  ownerReferences:
  - {apiVersion: v1, kind: Pod, name: kata-ok, uid: "$uid"}
spec:
  runtimeClassName: kata
  containers: [{name: c, image: busybox:1.36}]
EOF
check "owned pod Running" Running "$(wait_jp owned '{.status.phase}' Running)"
t0=$SECONDS
kubectl delete pod -n "$NS" kata-ok hyperd-ok segv --wait=false >/dev/null
if wait_gone kata-ok 10 && wait_gone hyperd-ok 5 && wait_gone segv 5; then
  pass "deleted pods gone in $((SECONDS - t0))s (grace period 30s ignored by kwok)"
else
  fail "deleted pods still present after 20s"
fi
if wait_gone owned 30; then pass "ownerReference GC removed dependent pod"; else fail "dependent pod not garbage-collected"; fi

pod slow-delete "{\"$A/delete-delay\": 2s}" "$KATA" | kubectl apply -n "$NS" -f - >/dev/null
wait_jp slow-delete '{.status.phase}' Running >/dev/null
kubectl delete pod -n "$NS" slow-delete --wait=false >/dev/null
sleep 1
check "delete-delay: still Terminating after 1s" yes "$(jp slow-delete '{.metadata.deletionTimestamp}' | awk 'NF {print "yes"}')"
if wait_gone slow-delete 10; then pass "delete-delay: gone afterwards"; else fail "delete-delay: pod never went away"; fi

trap - EXIT
t0=$SECONDS
if kubectl delete namespace "$NS" --timeout=60s >/dev/null; then
  pass "namespace deleted in $((SECONDS - t0))s"
else
  fail "namespace deletion did not complete in 60s"
fi

if ((failures > 0)); then
  log "$failures check(s) failed"
  exit 1
fi
log "all checks passed"
