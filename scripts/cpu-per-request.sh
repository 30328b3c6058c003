#!/usr/bin/env bash
# CPU time a retort server spends per answered request under a constant-rate load: the server
# pinned to core 0, the load generator to core 1; the server's user+system time (from
# /proc/<pid>/stat, warm-up included) divided by the requests the run sent.
# Usage: scripts/cpu-per-request.sh BINARY RATE CANDIDATES [PORT]
# Run two binaries alternately, several times each, and compare the figures side by side.
set -euo pipefail
bin=$1 rate=$2 candidates=$3 port=${4:-18090}
root="$(cd "$(dirname "$0")/.." && pwd)"
config=$(mktemp --suffix=.toml)
echo "persist_warmup = false" > "$config"
taskset -c 0 "$bin" serve --models "$root/models" --listen "127.0.0.1:$port" --inference-threads 1 \
    --config "$config" > /dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$config"' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
    sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks)
row=$(taskset -c 1 "$root/target/release/loadtest" --target "http://127.0.0.1:$port" \
    --manifest "$root/models/music-ranker/1/manifest.toml" --candidates "$candidates" \
    --rate "$rate" --duration 8 --warmup 1 --out "$(mktemp -d)" steady 2>/dev/null | grep '^| steady')
after=$(ticks)
sent=$(echo "$row" | awk -F'|' '{gsub(/ /, "", $5); print $5}')
p99=$(echo "$row" | awk -F'|' '{gsub(/ /, "", $8); print $8}')
hz=$(getconf CLK_TCK)
echo "$(basename "$bin") rate=$rate candidates=$candidates sent=$sent" \
    "cpu_us_per_request=$(( (after - before) * 1000000 / hz / sent )) p99_ms=$p99"
