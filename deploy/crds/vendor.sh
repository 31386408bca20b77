#!/usr/bin/env bash
# Re-vendors the three CRDs the deploy tests install on the dev cluster
# (ServiceMonitor, PrometheusRule, ScaledObject) from their upstream
# releases, as published in those projects' Go modules, with every
# `description` (kubectl explain text) removed. Nothing else is changed:
# validation is the same, the files are a third of the size. See README.md.
set -euo pipefail
cd "$(dirname "$0")"
PROM_OPERATOR=${PROM_OPERATOR:-v0.85.0}
KEDA=${KEDA:-v2.20.2}

moddir() { # module@version -> its directory in the module cache
  (cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}

# Drops each `description:` key with its value: the value is whatever
# follows on lines indented deeper than the key (folded, quoted or block
# scalars). No schema in these CRDs has a property named description
# (checked when vendoring), so only documentation goes.
strip_descriptions() {
  awk '
    skip && (match($0, /[^ ]/) == 0 || match($0, /[^ ]/) - 1 > indent) { next }
    { skip = 0 }
    /^ *description:/ { skip = 1; indent = match($0, /[^ ]/) - 1; next }
    { print }
  '
}

vendor() { # source-file dest module@version upstream-path
  { echo "# Vendored by deploy/crds/vendor.sh from $3 ($4), descriptions removed."
    strip_descriptions <"$1"; } >"$2"
}

po=$(moddir "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR")
keda=$(moddir "github.com/kedacore/keda/v2@$KEDA")
vendor "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" servicemonitors.yaml \
  "prometheus-operator $PROM_OPERATOR" example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
vendor "$po/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" prometheusrules.yaml \
  "prometheus-operator $PROM_OPERATOR" example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml
vendor "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" scaledobjects.yaml \
  "KEDA $KEDA" config/crd/bases/keda.sh_scaledobjects.yaml
wc -c servicemonitors.yaml prometheusrules.yaml scaledobjects.yaml >&2
