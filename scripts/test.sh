#!/usr/bin/env bash
# Runs Gatehouse's whole test suite. Installs what the tests need that cargo does not.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-targets
