#!/usr/bin/env bash
# Renders the plain manifests in deploy/ from the chart (and first copies the shipped default
# policies into the chart). Run it after changing the chart or policies/default.yaml; the chart
# test fails while deploy/ is out of step.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/chart-tools.sh
source scripts/chart-tools.sh
cp policies/default.yaml charts/gatehouse/files/default.yaml
"$PYTHON" scripts/chart_check.py render-deploy deploy
