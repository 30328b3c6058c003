#!/usr/bin/env bash
# CPU time per request of retort under a steady open-loop load, for server variants side by
# side: each variant's server pinned to core 0, the load generator to core 1, variants taking
# turns ROUNDS times so that drift on a shared machine falls on all of them alike. The server's
# user + system time over the measured phase (from /proc/<pid>/stat) over the requests sent:
# what a request costs, independent of the stalls that decide a find-max run on a noisy
# machine.
#
#   loadtest/cpu_per_request.sh RATE SHAPE 'LABEL=serve flags' ['LABEL=serve flags' ...]
#   e.g. loadtest/cpu_per_request.sh 1500 ids 'pool=--inline-inference off' 'inline=--inline-inference on'
#
# SHAPE: `ids` (500 candidates by id from catalogs/music/1) or a number of candidates carrying
# their features. A variant's flags may start with environment settings and then name another
# binary: 'tract-only=RETORT_NATIVE=off --engine tract', 'base=/tmp/retort-base --engine ort';
# the variant `msgspec` alone (no flags) is the strongest Python peer (loadtest/peers/msgspec_peer.py),
# `triton` alone Triton behind the same front (loadtest/peers/triton_peer.py; its CPU counts both).
# ROUNDS (3) and SECONDS (10) from the environment. Prints one Markdown row per variant.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="$1"
shape="$2"
shift 2
rounds="${ROUNDS:-3}"
seconds="${SECONDS_PER_RUN:-10}"
package=models/music-ranker/1
out=target/cpu-per-request
mkdir -p "$out"

# shellcheck source=loadtest/servers.sh
source loadtest/servers.sh

case "$shape" in
    ids) shape_args=(--candidates 500 --catalog catalogs/music/1) ;;
    *) shape_args=(--candidates "$shape") ;;
esac

cpu_ticks() { # pid: its user + system time and its live descendants' (granian's worker is a child)
    local total child
    total=$(awk '{print $14 + $15}' "/proc/$1/stat")
    for child in $(pgrep -P "$1" || true); do
        total=$((total + $(cpu_ticks "$child")))
    done
    echo "$total"
}

server_ticks() { # the server under test's CPU, with Triton's processes when it is the Triton peer
    local total
    total=$(cpu_ticks "$server_pid")
    if [ -n "$triton_pid" ]; then
        total=$((total + $(cpu_ticks "$triton_pid")))
    fi
    echo "$total"
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for variant in "$@"; do
        label="${variant%%=*}"
        if [ "$variant" = msgspec ]; then
            start_msgspec 18182 "$package" catalogs/music/1 "$out/$label.log"
        elif [ "$variant" = triton ]; then
            start_triton 18182 "$package" catalogs/music/1 "$out/$label.log"
        else
            read -r -a flags <<<"${variant#*=}"
            binary=./target/release/retort
            settings=()
            while [[ "${flags[0]:-}" =~ ^[A-Z_][A-Z0-9_]*= ]]; do
                settings+=("${flags[0]}")
                flags=("${flags[@]:1}")
            done
            if [[ "${flags[0]:-}" == /* ]]; then
                binary="${flags[0]}"
                flags=("${flags[@]:1}")
            fi
            env "${settings[@]}" taskset -c 0 "$binary" serve --listen 127.0.0.1:18182 --poll-interval-ms 0 "${flags[@]}" \
                >"$out/$label.log" 2>&1 &
            server_pid=$!
            wait_up 18182 /readyz
        fi
        load() { # seconds warmup
            taskset -c 1 ./target/release/loadtest --target http://127.0.0.1:18182 \
                --manifest "$package/manifest.toml" "${shape_args[@]}" --model music-ranker \
                --rate "$rate" --duration "$1" --warmup "$2" --arrivals constant \
                --out "$out/$label" steady >"$out/$label.txt" 2>&1
        }
        load 3 1
        before=$(server_ticks)
        load "$seconds" 0
        after=$(server_ticks)
        stop
        ticks_per_s=$(getconf CLK_TCK)
        sent=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['phases'][0]['sent'])" \
            "$out/$label/report.json")
        us=$(python3 -c "import sys; t,hz,n=map(float,sys.argv[1:]); print(round(t/hz*1e6/n))" \
            "$((after - before))" "$ticks_per_s" "$sent")
        results[$label]="${results[$label]:-} $us"
        echo "round $round: $label $us µs per request" >&2
    done
done

echo "| variant ($shape, $rate/s, one core) | CPU µs per request, each round |"
echo "| --- | --- |"
for variant in "$@"; do
    label="${variant%%=*}"
    echo "| $label |${results[$label]} |"
done
