#!/usr/bin/env bash
# Runs Gatehouse's whole test suite. Installs what the tests need that cargo does not.
# Needs nothing outside the repository. Under CI=true (or GATEHOUSE_TEST_FRESH_CLONE=1) the
# cargo tests run in a fresh clone of HEAD in a temporary directory with nothing beside it,
# so a test that reads outside the repository fails there.
set -euo pipefail
cd "$(dirname "$0")/.."
ci=false
[ "${CI:-}" = "true" ] && ci=true

# PostgreSQL for the token store tests (GATEHOUSE_TEST_POSTGRES_URL): the server on this
# machine unless the variable names another. It must take a login (user postgres, trust auth,
# database test; see the README). In CI it must; elsewhere, without it, those tests report
# themselves as SKIPPED.
pg_default="postgres://postgres@127.0.0.1:5432/test"
pg_url="${GATEHOUSE_TEST_POSTGRES_URL:-$pg_default}"
pg_probe() {
    if command -v psql >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=5 psql "$pg_url" -X -q -v ON_ERROR_STOP=1 \
            -c 'BEGIN; CREATE SCHEMA gatehouse_login_probe; ROLLBACK;' 2>&1 >/dev/null
    else
        # No psql here: the same login through a test of its own (tests/postgres_login.rs).
        local out
        out="$(GATEHOUSE_TEST_POSTGRES_URL="$pg_url" cargo test --locked --quiet \
            --test postgres_login 2>&1)" && return 0
        printf '%s\n' "$out" | grep -m1 'GATEHOUSE_TEST_POSTGRES_URL:' || echo "the probe test failed"
        return 1
    fi
}
if pg_error="$(pg_probe)"; then
    export GATEHOUSE_TEST_POSTGRES_URL="$pg_url"
else
    pg_error="$(printf '%s' "$pg_error" | head -n 1)"
    if $ci; then
        echo "scripts/test.sh: PostgreSQL at ${pg_url#*@} (GATEHOUSE_TEST_POSTGRES_URL) does not take a login, and CI needs it: ${pg_error:-no answer}" >&2
        exit 1
    fi
    echo "scripts/test.sh: PostgreSQL at ${pg_url#*@} does not take a login (${pg_error:-no answer}): the PostgreSQL token tests will be SKIPPED (see the README, Tests)" >&2
    unset GATEHOUSE_TEST_POSTGRES_URL
fi

# Twilio's OpenAPI description, beside the repository in CI only (or where
# GATEHOUSE_TEST_TWILIO_OPENAPI names it): one test checks the Twilio stand-in's contract
# against it (and says SKIPPED without it). CI always has it, so there its
# absence is an error rather than a skip.
twilio_spec="${GATEHOUSE_TEST_TWILIO_OPENAPI:-$PWD/../shared/twilio/twilio_api_v2010.json}"
if [ -f "$twilio_spec" ]; then
    export GATEHOUSE_TEST_TWILIO_OPENAPI="$twilio_spec"
elif $ci; then
    echo "scripts/test.sh: $twilio_spec is missing; CI checks the Twilio stand-in against it" >&2
    exit 1
fi

if $ci || [ "${GATEHOUSE_TEST_FRESH_CLONE:-}" = "1" ]; then
    # A fresh clone of HEAD with no ../shared beside it, built in the same target directory
    # (only the crate recompiles).
    target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
    case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
    clone_parent="$(mktemp -d)"
    trap 'rm -rf "$clone_parent"' EXIT
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
        echo "scripts/test.sh: uncommitted changes are not in the fresh clone; it tests HEAD" >&2
    fi
    # HEAD fetched by name: CI often checks out a detached commit no branch points to.
    git clone --quiet --no-checkout --no-hardlinks "$PWD" "$clone_parent/gatehouse"
    git -C "$clone_parent/gatehouse" fetch --quiet "$PWD" HEAD
    git -C "$clone_parent/gatehouse" checkout --quiet --detach FETCH_HEAD
    (cd "$clone_parent/gatehouse" && CARGO_TARGET_DIR="$target_dir" cargo test --locked --all-targets)
else
    cargo test --locked --all-targets
fi

# The shipped policies' suites (gatehouse test).
cargo run --locked --quiet -- test policies/tests

# The Helm chart and deploy/ (installs helm and kubernetes-validate into .cache/, not committed).
bash scripts/chart-test.sh
