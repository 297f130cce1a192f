#!/usr/bin/env bash
# Runs each fuzz target (cargo-fuzz, stable toolchain, no sanitizer) for SECONDS (default 600),
# seeded from examples/, policies/ and tests/data/. New crashers land in fuzz/artifacts/TARGET/;
# copy the ones worth keeping into tests/data/fuzz/TARGET/ (tests/fuzz_regressions.rs replays them).
#
#   scripts/fuzz.sh                 # both targets, 10 minutes each
#   SECONDS_PER_TARGET=60 scripts/fuzz.sh review
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_TARGET:-600}
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(review policy_file)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

mkdir -p fuzz/corpus/review fuzz/corpus/policy_file
cp examples/reviews/*.json fuzz/corpus/review/
find tests/data -name '*.json' -exec cp {} fuzz/corpus/review/ \; 2>/dev/null || true
cp policies/*.yaml fuzz/corpus/policy_file/
cp policies/examples/*.yaml fuzz/corpus/policy_file/ 2>/dev/null || true
for t in "${targets[@]}"; do
  for seed in tests/data/fuzz/"$t"/*; do [ -f "$seed" ] && cp "$seed" fuzz/corpus/"$t"/; done
  echo "== fuzzing $t for ${secs}s"
  (cd fuzz && cargo fuzz run -s none -O "$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=262144 -dict="$t.dict" -print_final_stats=1) 2>&1 | tail -25
done
