#!/usr/bin/env bash
# Runs Gatehouse's whole test suite. Installs what the tests need that cargo does not.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL for the token store tests (GATEHOUSE_TEST_POSTGRES_URL): the server on this
# machine unless the variable names another. In CI (CI=true) it must be reachable; elsewhere,
# without it, those tests report themselves as SKIPPED.
pg_default="postgres://postgres@127.0.0.1:5432/test"
pg_url="${GATEHOUSE_TEST_POSTGRES_URL:-$pg_default}"
pg_hostport="${pg_url#*://}"; pg_hostport="${pg_hostport#*@}"; pg_hostport="${pg_hostport%%/*}"; pg_hostport="${pg_hostport%%\?*}"
pg_host="${pg_hostport%:*}"; pg_port="${pg_hostport##*:}"
[ "$pg_port" = "$pg_hostport" ] && pg_port=5432
if (exec 3<>"/dev/tcp/$pg_host/$pg_port") 2>/dev/null; then
    export GATEHOUSE_TEST_POSTGRES_URL="$pg_url"
elif [ "${CI:-}" = "true" ]; then
    echo "scripts/test.sh: PostgreSQL is unreachable at $pg_host:$pg_port (GATEHOUSE_TEST_POSTGRES_URL); CI needs it" >&2
    exit 1
else
    echo "scripts/test.sh: PostgreSQL unreachable at $pg_host:$pg_port: the PostgreSQL token tests will be SKIPPED" >&2
    unset GATEHOUSE_TEST_POSTGRES_URL
fi

cargo test --locked --all-targets
cargo run --locked --quiet -- test policies/tests   # the shipped policies' suites (gatehouse test)

# The Helm chart and deploy/ (installs helm and kubernetes-validate into .cache/, not committed).
bash scripts/chart-test.sh
