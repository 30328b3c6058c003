#!/usr/bin/env bash
# Student training throughput, side by side in one run: `retort train` against the PyTorch
# baseline (benches/peers/train_pytorch.py) on the same examples, architecture (the default
# student: embeddings 16, towers 64-32, task towers 16, four binary heads), batch size (512),
# optimiser (AdamW, lr 3e-3, weight decay 1e-4) and number of epochs. Both count only the
# training steps (batching, forward, backward, optimiser), not reading or encoding the data.
#
#   benches/train_vs_pytorch.sh [SCALE] [EPOCHS]     (defaults 20: ~400k target rows; 2 epochs)
#
# Needs PyTorch: the script makes a virtualenv under target/ and installs `torch`, `numpy` and
# `pyarrow` from PyPI into it the first time (PyPI's Linux wheel brings the CUDA libraries,
# ~4.5 GB, though only the CPU is used). Set TORCH_PYTHON to use another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-20}"
epochs="${2:-2}"
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

data="$work/demo-x$scale"
"$bin" demo-data --out "$data" --scale "$scale" --domains target >/dev/null
printf '[train]\nepochs = %s\nholdout_days = 1\n' "$epochs" > "$work/student.toml"

rate() { sed -n 's/.*(\([0-9]*\) examples\/s in training steps).*/\1/p'; }
retort_run() {
    rm -rf "$work/models"
    env "$@" "$bin" train --data "$data/target" --config "$work/student.toml" --models "$work/models" --name bench | rate
}
r1=$(retort_run RAYON_NUM_THREADS=1)
r2=$(retort_run RAYON_NUM_THREADS=2)
t2=$("$python" benches/peers/train_pytorch.py "$data/target" --epochs "$epochs" --threads 2 | sed -n 's/.*examples_per_s=\([0-9]*\).*/\1/p')
t1=$("$python" benches/peers/train_pytorch.py "$data/target" --epochs "$epochs" --threads 1 | sed -n 's/.*examples_per_s=\([0-9]*\).*/\1/p')
best_torch=$(( t1 > t2 ? t1 : t2 ))
python3 - "$r1" "$r2" "$t1" "$t2" "$best_torch" <<'PY'
import sys
r1, r2, t1, t2, best = map(float, sys.argv[1:])
print(f"retort train, 1 kernel thread (default): {r1:10,.0f} examples/s")
print(f"retort train, 2 kernel threads         : {r2:10,.0f} examples/s")
print(f"PyTorch, 1 thread                      : {t1:10,.0f} examples/s")
print(f"PyTorch, 2 threads                     : {t2:10,.0f} examples/s")
print(f"ratio retort default / best PyTorch    : {r1 / best:.2f}x")
print(f"ratio at 1 thread each                 : {r1 / t1:.2f}x")
print(f"ratio at 2 threads each                : {r2 / t2:.2f}x")
PY
