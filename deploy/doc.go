// Package deploy holds no code: its tests check what operators apply from
// this directory. The kustomize base and overlays are applied server-side to
// the dev cluster, the real daemon runs with the ServiceAccount and Role of
// the base, the Grafana dashboard's structure is checked, every metric the
// dashboard and the Prometheus rules use is looked up in a live scrape, the
// PrometheusRule is kept identical to the plain rule file, and the
// container image assembled by scripts/build-image.sh is inspected.
package deploy
