"""The Python baseline for `retort label`: the same teacher over the same Parquet partitions
with the same mapping, written the way a competent team would with pyarrow, numpy and
onnxruntime (categorical ids hashed once per distinct value, batches of 2048 rows, ONNX Runtime
on all cores), writing one Parquet file of logits per partition.

    python3 label_onnxruntime.py DATA_DIR TEACHER_DIR MAPPING_TOML OUT_DIR

Prints one line: `rows=N seconds=S rows_per_s=R`.
"""

import glob
import os
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a64(text):
    h = FNV_OFFSET
    for b in text.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def buckets_of(values, buckets):
    """Bucket per value, hashing each distinct value once (docs/model-package.md)."""
    uniques, inverse = np.unique(values.astype(str), return_inverse=True)
    table = np.array([1 + fnv1a64(u) % (buckets - 1) for u in uniques], dtype=np.int64)
    return table[inverse]


def main(data_dir, teacher_dir, mapping_path, out_dir):
    with open(os.path.join(teacher_dir, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    with open(mapping_path, "rb") as f:
        mapping = tomllib.load(f)["features"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.path.join(teacher_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])
    heads = [h["name"] for h in manifest["heads"]]
    outputs = [h["output"] for h in manifest["heads"]]
    inputs = {}
    for feat in manifest["features"]:
        inputs.setdefault(feat["input"], []).append(feat)
    columns = sorted({m["column"] for m in mapping.values() if "column" in m} | {"example_id"})

    os.makedirs(out_dir, exist_ok=True)
    rows_total = 0
    started = time.perf_counter()
    for path in sorted(glob.glob(os.path.join(data_dir, "*.parquet"))):
        table = pq.read_table(path, columns=columns)
        n = table.num_rows
        arrays = {}
        for name, feats in inputs.items():
            parts = []
            for feat in feats:
                source = mapping[feat["name"]]
                kind = feat["kind"]
                if kind == "categorical":
                    if "column" in source:
                        parts.append(buckets_of(table[source["column"]].to_numpy(zero_copy_only=False), feat["buckets"])[:, None])
                    else:
                        parts.append(np.zeros((n, 1), dtype=np.int64))
                elif kind == "number":
                    x = table[source["column"]].to_numpy() if "column" in source else np.full(n, feat.get("default", 0.0))
                    parts.append(((x - feat.get("mean", 0.0)) / feat.get("std", 1.0)).astype(np.float32)[:, None])
                else:
                    if "column" in source:
                        flat = table[source["column"]].combine_chunks().flatten().to_numpy()
                        parts.append(flat.reshape(n, feat["dim"]).astype(np.float32))
                    else:
                        parts.append(np.zeros((n, feat["dim"]), dtype=np.float32))
            arrays[name] = np.concatenate(parts, axis=1)
        logits = [[] for _ in heads]
        for start in range(0, n, 2048):
            batch = {k: v[start:start + 2048] for k, v in arrays.items()}
            result = session.run(outputs, batch)
            for k, r in enumerate(result):
                logits[k].append(r.reshape(-1))
        out = {"example_id": table["example_id"]}
        for k, head in enumerate(heads):
            out[head] = pa.array(np.concatenate(logits[k]).astype(np.float32))
        pq.write_table(pa.table(out), os.path.join(out_dir, os.path.basename(path)), compression="zstd")
        rows_total += n
    seconds = time.perf_counter() - started
    print(f"rows={rows_total} seconds={seconds:.3f} rows_per_s={rows_total / seconds:.0f}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
