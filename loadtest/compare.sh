#!/usr/bin/env bash
# retort against the server a team would write instead (loadtest/peers/fastapi_peer.py:
# FastAPI + uvicorn + onnxruntime), in one run, on this machine, over loopback:
#
#   1. find-max: the highest rate each holds at p99 <= 10 ms (the target's SLO) and at a
#      looser SLO (100 ms) that the peer can hold at all, with 500 candidates per request;
#   2. steady: p99 of each at the same rates (half and all of the peer's rate at the loose SLO);
#   3. the ratios: throughput at each SLO, p99 at the same rate.
#
# retort runs with tract, and with ort when ORT_DYLIB_PATH points at libonnxruntime.so.
#
#   loadtest/compare.sh [CANDIDATES] [SLO_MS] [LOOSE_SLO_MS] [SECONDS_PER_PHASE]   (500 10 100 5)
#
# Writes every report under target/compare/ and prints a Markdown summary.
set -euo pipefail
cd "$(dirname "$0")/.."
candidates="${1:-500}"
slo="${2:-10}"
loose="${3:-100}"
seconds="${4:-5}"
package=models/music-ranker/1
out=target/compare
mkdir -p "$out"


# shellcheck source=loadtest/servers.sh
source loadtest/servers.sh

start() { # name port
    case "$1" in
        peer)
            "$python" loadtest/peers/fastapi_peer.py --package "$package" --port "$2" --workers "$(nproc)" >"$out/$1.log" 2>&1 &
            server_pid=$!
            wait_up "$2" /healthz
            ;;
        *)
            ./target/release/retort serve --engine "${1#retort-}" --listen "127.0.0.1:$2" --poll-interval-ms 0 >"$out/$1.log" 2>&1 &
            server_pid=$!
            wait_up "$2" /readyz
            ;;
    esac
}

load() { # name port scenario-args...
    local name="$1" port="$2"
    shift 2
    ./target/release/loadtest --target "http://127.0.0.1:$port" --manifest "$package/manifest.toml" \
        --candidates "$candidates" --model music-ranker --duration "$seconds" --warmup 2 --label "$name" "$@"
}

servers=(peer)
for e in "${engines[@]}"; do servers+=("retort-$e"); done

held() { # report directory
    python3 -c "import json; print(json.load(open('$1/report.json'))['result']['held'] or 0)"
}

declare -A max_rate
for s in "${servers[@]}"; do
    start "$s" 18181
    load "$s" 18181 --rate 20 --slo-p99-ms "$slo" --out "$out/$s-find-max-$slo" find-max --step 1.25 | tee "$out/$s-find-max-$slo.txt" || true
    from="$(python3 -c "print(max(20, $(held "$out/$s-find-max-$slo")))")"
    load "$s" 18181 --rate "$from" --slo-p99-ms "$loose" --out "$out/$s-find-max-$loose" find-max --step 1.25 | tee "$out/$s-find-max-$loose.txt" || true
    max_rate[$s]="$(held "$out/$s-find-max-$loose")"
    # The server's own overhead: end-to-end latency at half the rate it sustains at the SLO,
    # against the model's in-process time (benches/limit.rs, below).
    if [ "$s" != peer ]; then
        half="$(python3 -c "print(max(5, round($(held "$out/$s-find-max-$slo") / 2)))")"
        load "$s" 18181 --rate "$half" --out "$out/$s-half" steady | tee "$out/$s-half.txt"
    fi
    stop
done
cargo bench --quiet "${features[@]}" --bench limit -- "$candidates" 3000 | tee "$out/limit.txt"

peer_max="${max_rate[peer]}"
rates=()
for f in 0.5 1.0; do rates+=("$(python3 -c "print(max(5, round($peer_max * $f)))")"); done
mapfile -t rates < <(printf '%s\n' "${rates[@]}" | sort -un)
for s in "${servers[@]}"; do
    start "$s" 18181
    for r in "${rates[@]}"; do
        load "$s" 18181 --rate "$r" --out "$out/$s-steady-$r" steady | tee "$out/$s-steady-$r.txt"
    done
    stop
done

python3 - "$out" "$slo" "$loose" "$candidates" "${rates[*]}" "${servers[@]}" <<'PY'
import json, sys
out, slo, loose, candidates, rates, servers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split(), sys.argv[6:]
def report(path):
    return json.load(open(f"{out}/{path}/report.json"))
print(f"\n## retort against the FastAPI peer: {candidates} candidates per request\n")
print(f"| server | max rate at p99 <= {slo} ms | vs peer | max rate at p99 <= {loose} ms | vs peer |")
print("| --- | ---: | ---: | ---: | ---: |")
held = {(s, x): report(f"{s}-find-max-{x}")["result"]["held"] or 0 for s in servers for x in (slo, loose)}
def ratio(s, x):
    return f"{held[(s, x)] / held[('peer', x)]:.2f}x" if held[("peer", x)] else "peer holds none"
for s in servers:
    print(f"| {s} | {held[(s, slo)]:.0f}/s | {ratio(s, slo)} | {held[(s, loose)]:.0f}/s | {ratio(s, loose)} |")
limit = {(r["engine"], r["stage"]): r for r in json.load(open(f"{out}/limit.json"))["rows"]}
print("\n| server | rate (half its max at the SLO) | end-to-end p50 / p99 ms | in-process infer p50 / p99 ms | e2e p99 / infer p99 | in-process decode+encode+infer p99 ms | e2e p99 / that |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for s in servers[1:]:
    p = report(f"{s}-half")["phases"][0]
    engine = s.removeprefix("retort-")
    infer, whole = limit[(engine, "infer")], limit[(engine, "decode+encode+infer")]
    e2e = p["latency_ms"]
    print(f"| {s} | {p['rate']:.0f}/s | {e2e['p50']:.2f} / {e2e['p99']:.2f} | {infer['p50_ms']:.3f} / {infer['p99_ms']:.3f} | {e2e['p99'] / infer['p99_ms']:.1f}x | {whole['p99_ms']:.3f} | {e2e['p99'] / whole['p99_ms']:.1f}x |")
print("\n| server | rate | p50 ms | p99 ms | p99.9 ms | non-200 | peer p99 / this p99 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rates:
    peer_p99 = report(f"peer-steady-{r}")["phases"][0]["latency_ms"]["p99"]
    for s in servers:
        p = report(f"{s}-steady-{r}")["phases"][0]
        bad = p["sent"] - p["statuses"].get("200", 0)
        print(f"| {s} | {r}/s | {p['latency_ms']['p50']:.2f} | {p['latency_ms']['p99']:.2f} | {p['latency_ms']['p999']:.2f} | {bad} | {peer_p99 / p['latency_ms']['p99']:.2f}x |")
PY
