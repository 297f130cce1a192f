#!/usr/bin/env bash
# Runs Gatehouse's whole test suite. Installs what the tests need that cargo does not.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-targets

# The Helm chart and deploy/ (installs helm and kubernetes-validate into .cache/, not committed).
bash scripts/chart-test.sh
