#!/usr/bin/env bash
# Training throughput, side by side in one run: `retort train` against the PyTorch baseline
# (benches/peers/train_pytorch.py) on the same examples, architecture, batch size, optimiser and
# number of steps. Both count only the training steps (batching, forward, backward, optimiser),
# not reading or encoding the data.
#
#   benches/train_vs_pytorch.sh [SCALE] [EPOCHS]     the default student (defaults 20: ~400k
#                                                    target rows; 2 epochs)
#   benches/train_vs_pytorch.sh teacher [STEPS]      a teacher at a data-rich product's scale
#                                                    (default 150 steps)
#
# The student: embeddings 16, towers 64-32, task towers 16, four binary heads, batch 512,
# AdamW (lr 3e-3, weight decay 1e-4), dense embedding gradients in PyTorch (its default).
# The teacher: the demo's source domain (2M rows) with its id features hashed into tables of
# 200k (user_id, video_id) and 100k (channel_id) rows, embeddings 32, towers and interaction MLP
# 512-256-128, task towers 16, batch 1024, lr 2e-3; PyTorch with `sparse=True` tables stepped by
# SparseAdam (the rest AdamW), and for reference with dense tables.
#
# Needs PyTorch: the script makes a virtualenv under target/ and installs `torch`, `numpy` and
# `pyarrow` from PyPI into it the first time (PyPI's Linux wheel brings the CUDA libraries,
# ~4.5 GB, though only the CPU is used). Set TORCH_PYTHON to use another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${BENCH_DIR:-target/bench-train}"
mkdir -p "$work"
cargo build --release --quiet
bin=target/release/retort

python="${TORCH_PYTHON:-$work/venv/bin/python}"
if ! "$python" -c 'import torch, pyarrow, numpy' 2>/dev/null; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet torch numpy pyarrow
    python="$work/venv/bin/python"
fi

rate() { sed -n 's/.*(\([0-9]*\) examples\/s in training steps).*/\1/p'; }
torch_rate() { "$python" benches/peers/train_pytorch.py "$@" | sed -n 's/.*examples_per_s=\([0-9]*\).*/\1/p'; }
# retort_run DATA CONFIG THREADS: examples/s of one `retort train` with `[train] threads`.
retort_run() {
    rm -rf "$work/models"
    sed "s/^\[train\]$/[train]\nthreads = $3/" "$2" > "$work/run.toml"
    "$bin" train --data "$1" --config "$work/run.toml" --models "$work/models" --name bench | rate
}
report() {
    python3 - "$@" <<'PY'
import sys
r1, r2, t1, t2 = map(float, sys.argv[1:5])
best = max(t1, t2)
print(f"retort train, threads = 1               : {r1:10,.0f} examples/s")
print(f"retort train, threads = 2               : {r2:10,.0f} examples/s")
print(f"PyTorch, 1 thread                       : {t1:10,.0f} examples/s")
print(f"PyTorch, 2 threads                      : {t2:10,.0f} examples/s")
if len(sys.argv) > 5:
    print(f"PyTorch dense tables, 2 threads         : {float(sys.argv[5]):10,.0f} examples/s")
print(f"ratio retort's best / PyTorch's best    : {max(r1, r2) / best:.2f}x")
print(f"ratio at 1 thread each                  : {r1 / t1:.2f}x")
print(f"ratio at 2 threads each                 : {r2 / t2:.2f}x")
PY
}

if [ "${1:-}" = teacher ]; then
    steps="${2:-150}"
    data="$work/demo-source"
    "$bin" demo-data --out "$data" --scale 1 --domains source >/dev/null
    teacher="$work/teacher-data"
    mkdir -p "$teacher"
    ln -sf "$(realpath "$data/source")"/*.parquet "$teacher/"
    python3 - "$data/source/features.toml" "$teacher/features.toml" <<'PY'
import re, sys
spec = open(sys.argv[1]).read()
for name, buckets in [("user_id", 200_000), ("video_id", 200_000), ("channel_id", 100_000)]:
    spec = re.sub(r'(name = "%s"\n(?:.*\n)*?buckets = )\d+' % name, r"\g<1>%d" % buckets, spec, count=1)
open(sys.argv[2], "w").write(spec)
PY
    cat > "$work/teacher.toml" <<TOML
[model]
embedding_dim = 32
context_hidden = [512, 256, 128]
item_hidden = [512, 256, 128]
interaction_hidden = [512, 256, 128]
task_hidden = [16]
logit_outputs = true

[train]
steps = $steps
batch_size = 1024
learning_rate = 0.002
TOML
    r1=$(retort_run "$teacher" "$work/teacher.toml" 1)
    r2=$(retort_run "$teacher" "$work/teacher.toml" 2)
    shape=(--epochs 1 --max-steps "$steps" --batch-size 1024 --lr 0.002 --embedding-dim 32
        --hidden 512,256,128 --task-hidden 16)
    t1=$(torch_rate "$teacher" "${shape[@]}" --sparse --threads 1)
    t2=$(torch_rate "$teacher" "${shape[@]}" --sparse --threads 2)
    dense=$(torch_rate "$teacher" "${shape[@]}" --threads 2)
    report "$r1" "$r2" "$t1" "$t2" "$dense"
    exit
fi

scale="${1:-20}"
epochs="${2:-2}"
data="$work/demo-x$scale"
"$bin" demo-data --out "$data" --scale "$scale" --domains target >/dev/null
printf '[train]\nepochs = %s\nholdout_days = 1\n' "$epochs" > "$work/student.toml"
r1=$(retort_run "$data/target" "$work/student.toml" 1)
r2=$(retort_run "$data/target" "$work/student.toml" 2)
t2=$(torch_rate "$data/target" --epochs "$epochs" --threads 2)
t1=$(torch_rate "$data/target" --epochs "$epochs" --threads 1)
report "$r1" "$r2" "$t1" "$t2"
