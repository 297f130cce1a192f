#!/usr/bin/env bash
# Load benchmark: the real gatehouse server against the floor (bench/floor.rs: same axum +
# axum-server + rustls stack answering a fixed review without parsing), both on 127.0.0.1,
# driven by wrk with bench/post.lua. Prints throughput, p50/p90/p99, server CPU per admission
# (utime + stime of each server process over its run, divided by the requests completed), RSS
# before/after, and Gatehouse's throughput and CPU against the floor's measured in the same run
# (the machine is shared: compare ratios, not absolute numbers, across runs).
#
# MEMORY=1: afterwards, peak RSS (VmHWM, reset before each case) of Gatehouse above idle for
# each hostile review written by bench/hostile.py (a million one-key maps, a million small
# numbers, a 3 MiB Deployment with 242 000 env entries), one at a time and three at once, and
# RSS once each is answered.
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
BIN=${BIN:-target/release/gatehouse}  # BIN=…: another build of Gatehouse against the same floor
FLOOR=target/release/examples/floor

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
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

run() { # name port duration [rate] [pid]: with a pid, appends the server's CPU per request
  local name=$1 port=$2 dur=$3 rate=${4:-0} pid=${5:-} t0 t1 out
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  out=$(BODY_FILE="$BODY" RATE="$rate" CONNS="$CONNS" wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency \
    -s bench/post.lua "https://127.0.0.1:$port" | awk -v n="$name" '/^RESULT/ {sub(/^RESULT/, n); print}')
  if [ -n "$pid" ]; then
    t1=$(cpu_ticks "$pid")
    out="$out cpu_us_per_req=$(awk -v d=$((t1 - t0)) -v t="$TICK" -v r="$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")" 'BEGIN {printf "%.2f", d / t * 1e6 / r}')"
  fi
  echo "$out"
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores; body $BODY ($(stat -c %s "$BODY") B); wrk -t$THREADS -c$CONNS -d${DURATION}s"
run warmup-floor "$FLOOR_PORT" 3 >/dev/null
run warmup-gatehouse "$GH_PORT" 3 >/dev/null
rss_before=$(rss_kib "$GH_PID")
# Three alternating rounds, so both servers see the same background load from other jobs.
ROUNDS=${ROUNDS:-3}
for round in $(seq 1 "$ROUNDS"); do
  floor=$(run floor "$FLOOR_PORT" "$DURATION" 0 "$FLOOR_PID"); echo "$floor"
  gh=$(run gatehouse "$GH_PORT" "$DURATION" 0 "$GH_PID"); echo "$gh"
  floor_rps=$(field rps "$floor"); gh_rps=$(field rps "$gh")
  floor_cpu=$(field cpu_us_per_req "$floor"); gh_cpu=$(field cpu_us_per_req "$gh")
  echo "round $round: throughput gatehouse/floor $(awk -v a="$gh_rps" -v b="$floor_rps" 'BEGIN {printf "%.1f%%", 100*a/b}');" \
    "CPU per admission gatehouse $gh_cpu us, floor $floor_cpu us, difference $(awk -v a="$gh_cpu" -v b="$floor_cpu" 'BEGIN {printf "%.2f", a-b}') us"
done
rss_after=$(rss_kib "$GH_PID")
echo "gatehouse RSS: before ${rss_before} KiB, after ${DURATION}s of load ${rss_after} KiB"

half=$(awk -v r="$gh_rps" 'BEGIN {printf "%d", r/2}')
gh_half=$(run gatehouse-at-half "$GH_PORT" "$DURATION" "$half"); echo "$gh_half (target rate $half/s)"

if [ "${MEMORY:-0}" = 1 ]; then
  python3 bench/hostile.py "$work" >/dev/null
  post_one() { curl -sk -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$1" "https://127.0.0.1:$GH_PORT/validate?timeout=10s"; }
  sleep 1
  idle=$(rss_kib "$GH_PID")
  echo "memory: idle RSS $idle KiB"
  for case in maps numbers env; do
    echo 5 >"/proc/$GH_PID/clear_refs"
    code=$(post_one "$work/$case.json")
    sleep 0.5
    echo "memory $case ($(stat -c %s "$work/$case.json") B): HTTP $code, peak $(( $(hwm_kib "$GH_PID") - idle )) KiB above idle, after $(( $(rss_kib "$GH_PID") - idle )) KiB above idle"
  done
  echo 5 >"/proc/$GH_PID/clear_refs"
  codes=""
  posts=()
  for case in maps numbers env; do post_one "$work/$case.json" >"$work/$case.code" & posts+=($!); done
  wait "${posts[@]}"
  sleep 0.5
  for case in maps numbers env; do codes="$codes $(cat "$work/$case.code")"; done
  echo "memory three at once: HTTP$codes, peak $(( $(hwm_kib "$GH_PID") - idle )) KiB above idle, after $(( $(rss_kib "$GH_PID") - idle )) KiB above idle"
fi

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
