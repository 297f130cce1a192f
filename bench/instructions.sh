#!/usr/bin/env bash
# Instructions per admission, Gatehouse against the floor (bench/floor.rs), counted by
# callgrind: unlike CPU time on this shared 2-core machine, the count repeats to within a few
# tenths of a percent from run to run, so small changes on the hot path can be compared.
# Instructions are not time (cache misses, mispredicted branches and syscalls are not weighed),
# so the figure complements bench/load.sh, it does not replace it.
#
# Each server runs under callgrind twice, for WARMUP and for WARMUP + N requests sent
# over a few kept-alive connections (TLS, HTTP/1.1, as the API server sends); the difference
# is divided by N.
#
#   bench/instructions.sh                       # N=2000 of the compact create-3-replicas review
#   BODY=examples/reviews/update-image.json N=1000 bench/instructions.sh
#   GATEHOUSE_ENV="RUST_LOG=warn" bench/instructions.sh
#   BIN=../base/target/release/gatehouse bench/instructions.sh   # another build, same floor
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
WARMUP=${WARMUP:-500}
CONNS=${CONNS:-4}
GH_PORT=${GH_PORT:-18543}
FLOOR_PORT=${FLOOR_PORT:-18544}
HEALTH_PORT=${HEALTH_PORT:-18180}
BIN=${BIN:-target/release/gatehouse}

for tool in valgrind; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool (Debian package)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$tool"; else sudo apt-get install -y -qq "$tool"; fi
  fi
done
cargo build --release --locked --bin gatehouse --example floor

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# KEEP=DIR: the callgrind outputs of the longer runs are copied there (callgrind_annotate).
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

if [ -n "${BODY:-}" ]; then
  body=$BODY
else # what the API server sends: compact JSON
  body="$work/body.json"
  python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), separators=(",", ":"))' \
    examples/reviews/create-3-replicas.json "$body"
fi

# A client of its own (wrk runs for a duration, not a count): CONNS kept-alive HTTP/1.1
# connections over TLS, each sending its share of the requests one after another.
cat >"$work/send.py" <<'PY'
import http.client, ssl, sys, threading
port, total, conns, body = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), open(sys.argv[4], "rb").read()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
failures = []
def worker(n):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=600)
    for _ in range(n):
        c.request("POST", "/validate?timeout=10s", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            failures.append(r.status)
    c.close()
threads = [threading.Thread(target=worker, args=(total // conns + (i < total % conns),)) for i in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(f"answers other than 200: {failures[:5]}" if failures else 0)
PY

send() { # port count
  python3 "$work/send.py" "$1" "$2" "$CONNS" "$body"
}

run_once() { # name port requests "VAR=value ..." command...: instructions of the whole run
  local name=$1 port=$2 requests=$3 vars=$4 out="$work/$1.cg"
  shift 4
  rm -f "$out"*
  # The variables go to valgrind (which hands them on): under `valgrind env …` only env would
  # be counted.
  env $vars valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$work/$name.log" &
  local pid=$!
  pids+=("$pid")
  wait_port "$port"
  send "$port" "$requests"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^summary:/ {s += $2} END {print s}' "$out"*
}

measure() { # name port "VAR=value ..." command...
  # Two runs, WARMUP and WARMUP + N requests: the difference is N requests' worth, without
  # the start (certificates, policies) and the stop.
  local name=$1 port=$2 vars=$3 short long
  shift 3
  short=$(run_once "$name" "$port" "$WARMUP" "$vars" "$@")
  long=$(run_once "$name" "$port" "$((WARMUP + N))" "$vars" "$@")
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work/$name.cg"* "$KEEP/"; fi
  echo "$name instructions=$((long - short)) requests=$N per_request=$(awk -v t="$((long - short))" -v n="$N" 'BEGIN {printf "%.0f", t / n}')"
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) body $body ($(stat -c %s "$body") B); $N requests over $CONNS connections after $WARMUP"
# Gatehouse first: it writes the development certificate the floor serves too.
gh=$(measure gatehouse "$GH_PORT" "XDG_DATA_HOME=$work GATEHOUSE_LISTEN=127.0.0.1:$GH_PORT \
  GATEHOUSE_HEALTH_LISTEN=127.0.0.1:$HEALTH_PORT ${GATEHOUSE_ENV:-}" "$BIN" serve)
echo "$gh"
CERTS="$work/gatehouse/dev-certs"
floor=$(measure floor "$FLOOR_PORT" "" target/release/examples/floor "127.0.0.1:$FLOOR_PORT" "$CERTS/tls.crt" "$CERTS/tls.key")
echo "$floor"
g=$(sed -n 's/.*per_request=\([0-9]*\).*/\1/p' <<<"$gh"); f=$(sed -n 's/.*per_request=\([0-9]*\).*/\1/p' <<<"$floor")
echo "instructions per admission: gatehouse $g, floor $f, difference $((g - f)) ($(awk -v g="$g" -v f="$f" 'BEGIN {printf "%.2f", g / f}')x)"
