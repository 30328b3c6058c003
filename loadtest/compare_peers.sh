#!/usr/bin/env bash
# retort against the strongest Python stack (loadtest/peers/msgspec_peer.py: msgspec + numpy +
# onnxruntime + granian, gc.freeze()), one core each: every server pinned to core 0
# (`taskset -c 0`, one granian worker), the load generator to core 1. For each request shape
# (500 candidates as ids of the shipped catalog; 500 and 50 candidates carrying their
# features), the highest constant rate each holds at p99 <= SLO_MS. The peer looks ids up in
# the same catalog package, encoded into numpy once at load.
#
#   loadtest/compare_peers.sh [SLO_MS] [SECONDS_PER_PHASE]   (10 5)
#   SERVERS="retort-ort" loadtest/compare_peers.sh            (rerun some servers only)
#   SHAPES="ids-500" loadtest/compare_peers.sh                (some request shapes only)
#
# Servers: msgspec, triton (Triton through PyTriton serving the graph behind the msgspec peer's
# front: loadtest/peers/triton_peer.py), retort-tract (the default: retort's graphs on its native interpreter),
# retort-tract-only (RETORT_NATIVE=off: every graph on tract), retort-ort.
#
# retort runs with tract, and with ort when ORT_DYLIB_PATH points at libonnxruntime.so.
# Writes every report under target/compare-peers/ and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
slo="${1:-10}"
seconds="${2:-5}"
package=models/music-ranker/1
catalog=catalogs/music/1
out=target/compare-peers
mkdir -p "$out"

# shellcheck source=loadtest/servers.sh
source loadtest/servers.sh

start() { # name port
    case "$1" in
        msgspec) start_msgspec "$2" "$package" "$catalog" "$out/$1.log" ;;
        triton) start_triton "$2" "$package" "$catalog" "$out/$1.log" ;;
        retort-tract-only)
            RETORT_NATIVE=off taskset -c 0 ./target/release/retort serve --engine tract --listen "127.0.0.1:$2" \
                --poll-interval-ms 0 >"$out/$1.log" 2>&1 &
            server_pid=$!
            wait_up "$2" /readyz
            ;;
        *)
            taskset -c 0 ./target/release/retort serve --engine "${1#retort-}" --listen "127.0.0.1:$2" \
                --poll-interval-ms 0 >"$out/$1.log" 2>&1 &
            server_pid=$!
            wait_up "$2" /readyz
            ;;
    esac
}

read -r -a shapes <<<"${SHAPES:-ids-500 features-500 features-50}"
shape_args() { # shape
    case "$1" in
        ids-500) echo "--candidates 500 --catalog $catalog" ;;
        features-500) echo "--candidates 500" ;;
        features-50) echo "--candidates 50" ;;
    esac
}

servers=(msgspec triton retort-tract-only)
for e in "${engines[@]}"; do servers+=("retort-$e"); done
# SERVERS="retort-ort" reruns some of them; the table reads every server's last reports.
read -r -a run <<<"${SERVERS:-${servers[*]}}"
for s in "${run[@]}"; do
    start "$s" 18181
    for shape in "${shapes[@]}"; do
        # shellcheck disable=SC2046
        taskset -c 1 ./target/release/loadtest --target http://127.0.0.1:18181 --manifest "$package/manifest.toml" \
            $(shape_args "$shape") --model music-ranker --rate 50 --duration "$seconds" --warmup 2 \
            --slo-p99-ms "$slo" --arrivals constant --label "$s-$shape" --out "$out/$s-$shape" \
            find-max --step 1.2 | tee "$out/$s-$shape.txt" || true
    done
    stop
done

python3 - "$out" "$slo" "${shapes[*]}" "${servers[@]}" <<'PY'
import json, sys
out, slo, shapes, servers = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
held = {(s, x): json.load(open(f"{out}/{s}-{x}/report.json"))["result"]["held"] or 0 for s in servers for x in shapes}
print(f"\n| server (one core) | " + " | ".join(f"{x}: held at p99 <= {slo} ms | vs msgspec" for x in shapes) + " |")
print("| --- |" + " ---: | ---: |" * len(shapes))
for s in servers:
    cells = []
    for x in shapes:
        base = held[("msgspec", x)]
        cells += [f"{held[(s, x)]:.0f}/s", f"{held[(s, x)] / base:.2f}x" if base else "peer holds none"]
    print(f"| {s} | " + " | ".join(cells) + " |")
PY
