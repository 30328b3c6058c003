#!/usr/bin/env bash
# Labelling throughput, side by side in one run: `retort label` (tract and ort) against the
# Python baseline (pyarrow + numpy + onnxruntime) on the same partitions, teacher and mapping.
#
#   benches/label_vs_python.sh [SCALE]     (default 100: ~2M target rows)
#
# Needs: pip install onnxruntime pyarrow numpy. Prints rows/s for each, the ratios, and the
# largest logit difference of each engine's store from Python's.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-100}"
work="${BENCH_DIR:-target/bench-label}"
mkdir -p "$work"
cargo build --release --features ort --quiet
bin=target/release/retort
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(python3 -c 'import onnxruntime, glob, os; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])')}"

data="$work/demo-x$scale"
"$bin" demo-data --out "$data" --scale "$scale" --domains target,source --source-ratio 1 >/dev/null
teacher="$work/models/video-teacher/1"
[ -d "$teacher" ] || "$bin" init-model --models "$work/models" --name video-teacher --spec "$data/source/features.toml" >/dev/null
rows() { sed -n 's/.*labelled [0-9]* partitions (\([0-9]*\) rows) in \([0-9.]*\) s.*/\1 \2/p'; }

rm -rf "$work/labels-tract" "$work/labels-ort" "$work/labels-python"
read -r n_tract s_tract < <("$bin" label --data "$data/target" --teacher "$teacher" --mapping "$data/mapping.toml" --store "$work/labels-tract" --engine tract | rows)
read -r n_ort s_ort < <("$bin" label --data "$data/target" --teacher "$teacher" --mapping "$data/mapping.toml" --store "$work/labels-ort" --engine ort | rows)
py=$(python3 benches/peers/label_onnxruntime.py "$data/target" "$teacher" "$data/mapping.toml" "$work/labels-python")
n_py=$(echo "$py" | sed -n 's/rows=\([0-9]*\).*/\1/p'); s_py=$(echo "$py" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')

python3 - "$n_tract" "$s_tract" "$n_ort" "$s_ort" "$n_py" "$s_py" "$work" <<'PY'
import sys, glob, os
import numpy as np, pyarrow.parquet as pq
n_t, s_t, n_o, s_o, n_p, s_p = map(float, sys.argv[1:7]); work = sys.argv[7]
rt, ro, rp = n_t / s_t, n_o / s_o, n_p / s_p
print(f"rows: {int(n_t)}")
print(f"retort label, tract : {rt:12,.0f} rows/s  ({s_t:.2f} s)")
print(f"retort label, ort   : {ro:12,.0f} rows/s  ({s_o:.2f} s)")
print(f"python onnxruntime  : {rp:12,.0f} rows/s  ({s_p:.2f} s)")
print(f"ratio tract / python: {rt / rp:.2f}x")
print(f"ratio ort / python  : {ro / rp:.2f}x")
# They must agree: the same logits for the same examples, from either engine.
def by_id(path):
    t = pq.read_table(path)
    order = np.argsort(t.column("example_id").to_numpy(zero_copy_only=False), kind="stable")
    return {c: t.column(c).to_numpy(zero_copy_only=False)[order] for c in t.column_names}
for store in ("labels-ort", "labels-tract"):
    worst = 0.0
    for m in sorted(glob.glob(os.path.join(work, store, "*", "*", "*", "*.parquet"))):
        a, b = by_id(m), by_id(os.path.join(work, "labels-python", os.path.basename(m)))
        assert (a["example_id"] == b["example_id"]).all(), f"{m}: other examples than Python's"
        for c in a:
            if c != "example_id":
                worst = max(worst, float(np.abs(a[c].astype(np.float64) - b[c].astype(np.float64)).max()))
    print(f"max |logit difference| retort ({store[7:]}) vs python: {worst:.2e}")
PY
