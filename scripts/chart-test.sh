#!/usr/bin/env bash
# Checks the Helm chart with a real helm binary: lint --strict, template in every TLS mode and
# with an overrides file, every object validated against the Kubernetes schemas in strict mode
# (objects of CRDs checked structurally), assertions on the webhook configuration, the chart's
# certificate and config served by the real binary, the self-signed pair kept across upgrades,
# and deploy/ in step with the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/chart-tools.sh
source scripts/chart-tools.sh

cargo build --locked --quiet
export GATEHOUSE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/gatehouse"

chart=charts/gatehouse
for values in "" "$chart/ci/cert-manager-values.yaml" "$chart/ci/overrides-values.yaml"; do
    "$HELM" lint --strict "$chart" ${values:+-f "$values"}
done

"$PYTHON" scripts/chart_check.py check
