#!/usr/bin/env bash
# Load benchmark: the real gatehouse server against the floor (bench/floor.rs: same axum +
# axum-server + rustls stack answering a fixed review without parsing), both on 127.0.0.1,
# driven by wrk with bench/post.lua. Prints throughput, p50/p90/p99, RSS before/after, and
# Gatehouse's throughput as a share of the floor's.
#
#   bench/load.sh                      # 20 s per run, 32 connections
#   DURATION=60 SOAK=300 bench/load.sh # 1 minute runs and a 5 minute soak for RSS growth
#
# Settings (environment): DURATION (s, default 20), CONNS (32), THREADS (1), BODY (review file),
# SOAK (s, default 0 = none), GATEHOUSE_ENV (extra env for gatehouse, e.g. "RUST_LOG=warn"),
# ISOLATION=1: afterwards, restart gatehouse with a Twilio stand-in that answers after 5 s, SMS
# on every create, and a one-time-token policy whose PostgreSQL store is then cut off, and
# measure the p99 of requests that use neither while token requests run beside them.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
SOAK=${SOAK:-0}
BODY=${BODY:-examples/reviews/create-3-replicas.json}
GH_PORT=${GH_PORT:-18443}
FLOOR_PORT=${FLOOR_PORT:-18444}
HEALTH_PORT=${HEALTH_PORT:-18080}

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; else sudo apt-get install -y -qq wrk; fi
fi

cargo build --release --locked --bin gatehouse --example floor
BIN=target/release/gatehouse
FLOOR=target/release/examples/floor

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# Gatehouse on its embedded defaults (development certificate in a private data dir).
env XDG_DATA_HOME="$work" GATEHOUSE_LISTEN="127.0.0.1:$GH_PORT" GATEHOUSE_HEALTH_LISTEN="127.0.0.1:$HEALTH_PORT" \
  ${GATEHOUSE_ENV:-} "$BIN" serve >"$work/gatehouse.out" 2>"$work/gatehouse.log" &
pids+=($!); GH_PID=$!
wait_port "$GH_PORT"
CERTS="$work/gatehouse/dev-certs"
"$FLOOR" "127.0.0.1:$FLOOR_PORT" "$CERTS/tls.crt" "$CERTS/tls.key" 2>"$work/floor.log" &
pids+=($!); FLOOR_PID=$!
wait_port "$FLOOR_PORT"

run() { # name port duration [rate]
  local name=$1 port=$2 dur=$3 rate=${4:-0}
  BODY_FILE="$BODY" RATE="$rate" CONNS="$CONNS" wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency \
    -s bench/post.lua "https://127.0.0.1:$port" | awk -v n="$name" '/^RESULT/ {sub(/^RESULT/, n); print}'
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores; body $BODY ($(stat -c %s "$BODY") B); wrk -t$THREADS -c$CONNS -d${DURATION}s"
run warmup-floor "$FLOOR_PORT" 3 >/dev/null
run warmup-gatehouse "$GH_PORT" 3 >/dev/null
rss_before=$(rss_kib "$GH_PID")
floor=$(run floor "$FLOOR_PORT" "$DURATION"); echo "$floor"
gh=$(run gatehouse "$GH_PORT" "$DURATION"); echo "$gh"
rss_after=$(rss_kib "$GH_PID")
floor_rps=$(field rps "$floor"); gh_rps=$(field rps "$gh")
echo "ratio gatehouse/floor throughput: $(awk -v a="$gh_rps" -v b="$floor_rps" 'BEGIN {printf "%.1f%%", 100*a/b}')"
echo "gatehouse RSS: before ${rss_before} KiB, after ${DURATION}s of load ${rss_after} KiB"

half=$(awk -v r="$gh_rps" 'BEGIN {printf "%d", r/2}')
gh_half=$(run gatehouse-at-half "$GH_PORT" "$DURATION" "$half"); echo "$gh_half (target rate $half/s)"

if [ "$SOAK" -gt 0 ]; then
  soak_start=$(rss_kib "$GH_PID")
  run gatehouse-soak "$GH_PORT" "$SOAK" "$half"
  echo "soak ${SOAK}s at $half/s: RSS ${soak_start} KiB -> $(rss_kib "$GH_PID") KiB"
fi
if [ "${ISOLATION:-0}" = 1 ]; then
  kill "$GH_PID"; wait "$GH_PID" 2>/dev/null || true
  python3 bench/standins.py twilio 18090 5 & pids+=($!)
  python3 bench/standins.py relay 15432 5432 & pids+=($!); RELAY_PID=$!
  wait_port 18090; wait_port 15432
  mkdir -p "$work/policies"
  cp policies/default.yaml "$work/policies/"
  cat >"$work/policies/tokens.yaml" <<'YAML'
policies:
  - name: deploy-token
    kind: one-time-token
    match:
      resources: [apps/deployments]
      namespaces: {include: [secure]}
YAML
  python3 - "$BODY" "$work/token-review.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["request"]["namespace"] = "secure"
r["request"]["object"]["metadata"]["namespace"] = "secure"
r["request"]["object"]["metadata"].setdefault("annotations", {})["gatehouse.dev/token"] = "gate_" + "A" * 43
json.dump(r, open(sys.argv[2], "w"))
PY
  env XDG_DATA_HOME="$work" GATEHOUSE_LISTEN="127.0.0.1:$GH_PORT" GATEHOUSE_HEALTH_LISTEN="127.0.0.1:$HEALTH_PORT" \
    GATEHOUSE_POLICIES="$work/policies" GATEHOUSE_DATABASE_URL="postgres://postgres@127.0.0.1:15432/test" \
    TWILIO_ACCOUNT_SID="AC$(printf '0%.0s' $(seq 32))" TWILIO_AUTH_TOKEN="bench-token" \
    TWILIO_FROM="+15005550006" GATEHOUSE_SMS_TO="+15005550010" TWILIO_API_BASE="http://127.0.0.1:18090" \
    ${GATEHOUSE_ENV:-} "$BIN" serve >"$work/gatehouse2.out" 2>"$work/gatehouse2.log" &
  pids+=($!); GH_PID=$!
  wait_port "$GH_PORT"
  kill "$RELAY_PID"  # the token store is now unreachable
  echo "isolation: Twilio answers after 5 s, SMS on every create; token store cut off"
  BODY_FILE="$work/token-review.json" RATE=20 CONNS=4 wrk -t1 -c4 -d"$((DURATION + 2))s" --timeout 10s --latency \
    -s bench/post.lua "https://127.0.0.1:$GH_PORT" | awk '/^RESULT/ {sub(/^RESULT/, "token-requests(store down)"); print}' &
  token_wrk=$!
  sleep 1
  BODY_FILE="$BODY" UID_VARY=1 RATE="$half" CONNS="$CONNS" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
    -s bench/post.lua "https://127.0.0.1:$GH_PORT" | awk '/^RESULT/ {sub(/^RESULT/, "other-requests(isolated)"); print}'
  wait "$token_wrk" || true
  curl -s "http://127.0.0.1:$HEALTH_PORT/metrics" | grep -E '^gatehouse_(notifications_(queued|sent|dropped|failed)|token_store_errors|admissions)_total' || true
fi
errors=$(grep -c ' ERROR ' "$work/gatehouse.log" || true)
echo "gatehouse logged $errors error lines"
