#!/usr/bin/env bash
# What the impression log costs: retort with the log off and on (every request sampled, every
# listed candidate logged: the answer's top 100), side by side in one run. The server is pinned
# to core 0 and the load generator to core 1; the two modes alternate for ROUNDS rounds so that
# the host's drift falls on both. Per mode: find-max (the highest rate held at p99 <= SLO with
# no errors), then, on a fresh server, a steady phase at the same rate for both (80% of the
# first "off" maximum) for the p99 side by side. Prints a Markdown table; reports go to target/impressions/.
#
# Also the server's CPU time per request over the steady phase (/proc/<pid>/stat), the steadier
# measure on a shared host.
#
#   loadtest/impressions.sh [CANDIDATES] [SLO_MS] [SECONDS_PER_PHASE] [ROUNDS] [START_RATE]
#   (defaults 500 10 5 2 400)
#
# SHAPE=ids (the default) sends candidates as ids of the shipped catalog; SHAPE=features sends
# every candidate with its features, each of which the log then keeps as the row's overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
candidates="${1:-500}"
slo="${2:-10}"
seconds="${3:-5}"
rounds="${4:-2}"
start_rate="${5:-400}"
shape=()
if [ "${SHAPE:-ids}" = ids ]; then shape=(--catalog catalogs/music/1); fi
package=models/music-ranker/1
out="target/impressions-${SHAPE:-ids}"
rm -rf "$out" && mkdir -p "$out"
cargo build --release --quiet --bin retort
cargo build --release --quiet -p loadtest

server_pid=""
stop() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop EXIT

start() { # mode log
    local flags=()
    if [ "$1" = on ]; then flags=(--impressions-dir "$out/log"); fi
    taskset -c 0 ./target/release/retort serve --listen 127.0.0.1:18183 --poll-interval-ms 0 \
        --persist-warmup false "${flags[@]}" >"$2" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 300); do
        if curl -sf -o /dev/null http://127.0.0.1:18183/readyz; then return 0; fi
        sleep 0.1
    done
    echo "retort did not come up; see $2" >&2
    exit 1
}

load() { # label args...
    local label="$1"
    shift
    taskset -c 1 ./target/release/loadtest --target http://127.0.0.1:18183 --manifest "$package/manifest.toml" \
        --candidates "$candidates" "${shape[@]}" --model music-ranker --duration "$seconds" --warmup 2 --label "$label" "$@"
}

cpu_ticks() { # pid: user + system clock ticks so far
    awk '{print $14 + $15}' "/proc/$1/stat"
}

field() { # report.json python-expression-on-r
    python3 -c "import json; r=json.load(open('$1/report.json')); print($2)"
}

steady_rate=""
for round in $(seq 1 "$rounds"); do
    for mode in off on; do
        name="$mode-$round"
        start "$mode" "$out/$name.log"
        load "$name" --rate "$start_rate" --slo-p99-ms "$slo" --out "$out/$name-max" find-max --step 1.1 >"$out/$name-max.txt" || true
        held="$(field "$out/$name-max" "r['result']['held'] or 0")"
        if [ -z "$steady_rate" ]; then steady_rate="$(python3 -c "print(max(20, round($held * 0.8)))")"; fi
        # A fresh server for the steady phase: the writer must not still be draining the rows
        # find-max queued while its CPU is counted.
        stop
        rm -rf "$out/log"
        start "$mode" "$out/$name-steady.log"
        cpu_before="$(cpu_ticks "$server_pid")"
        load "$name" --rate "$steady_rate" --out "$out/$name-steady" steady >"$out/$name-steady.txt" || true
        echo $(($(cpu_ticks "$server_pid") - cpu_before)) >"$out/$name.cpu"
        curl -s http://127.0.0.1:18183/metrics | grep '^retort_impression' >"$out/$name.metrics" || true
        stop
        echo "$name: held $held/s at p99 <= $slo ms; steady at $steady_rate/s: p99 $(field "$out/$name-steady" "r['phases'][0]['latency_ms']['p99']") ms"
    done
done

python3 - "$out" "$rounds" "$steady_rate" "$slo" "$(getconf CLK_TCK)" <<'PY'
import json, sys
out, rounds, rate, slo, tck = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
def report(name):
    return json.load(open(f"{out}/{name}/report.json"))
rows = []
for mode in ["off", "on"]:
    held = [report(f"{mode}-{r}-max")["result"]["held"] or 0 for r in range(1, rounds + 1)]
    steady = [report(f"{mode}-{r}-steady")["phases"][0] for r in range(1, rounds + 1)]
    p99 = [p["latency_ms"]["p99"] for p in steady]
    # CPU over the steady run (its warm-up included) per request sent in it.
    cpu = [int(open(f"{out}/{mode}-{r}.cpu").read()) / tck * 1e6 / (p["sent"] * (1 + 2 / p["seconds"]))
           for r, p in zip(range(1, rounds + 1), steady)]
    rows.append((mode, held, p99, cpu))
(_, held_off, p99_off, cpu_off), (_, held_on, p99_on, cpu_on) = rows
mean = lambda xs: sum(xs) / len(xs)
print(f"| impression log | held at p99 <= {slo} ms (rounds) | p99 at {rate}/s (rounds) | CPU per request at {rate}/s |")
print("| --- | ---: | ---: | ---: |")
for mode, held, p99, cpu in rows:
    print(f"| {mode} | {' / '.join(f'{h:.0f}' for h in held)} | {' / '.join(f'{p:.2f}' for p in p99)} ms | {' / '.join(f'{c:.0f}' for c in cpu)} µs |")
print(f"| on ÷ off (means) | {mean(held_on) / mean(held_off):.3f} | {mean(p99_on) / mean(p99_off):.3f} | {mean(cpu_on) / mean(cpu_off):.3f} |")
PY
for f in "$out"/on-*.metrics; do echo "$f:"; cat "$f"; done
