"""The PyTorch baseline for `retort train`: the same two-tower student (stacked embedding table
per side, context and item towers, a joining layer, interaction layers, one tower and one logit
per task) on the same examples, batch size, optimiser (AdamW) and loss (BCE on logits, summed
over tasks), written the way a competent team would: features encoded once into tensors up
front, shuffled minibatches by index. Embedding gradients are dense (PyTorch's default) unless
`--sparse`: then the tables are `nn.Embedding(sparse=True)` stepped by `torch.optim.SparseAdam`
(PyTorch's optimiser for sparse gradients) and every other parameter by AdamW, the setup
PyTorch's documentation gives for large embedding tables.

    python3 train_pytorch.py DATA_DIR [--epochs N] [--batch-size B] [--lr LR] [--weight-decay WD]
                             [--threads T] [--embedding-dim E] [--hidden 64,32] [--task-hidden 16]
                             [--sparse] [--max-steps N]

DATA_DIR holds `features.toml` and the Parquet partitions (`retort demo-data`'s `target/`).
Only the training loop is timed. Prints one line:
`examples=N seconds=S examples_per_s=R loss=L`.
"""

import argparse
import glob
import os
import time
import tomllib

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a64(text):
    h = FNV_OFFSET
    for b in text.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def buckets_of(column, buckets):
    """Bucket per value as docs/model-package.md says (0 = missing), each distinct value once."""
    values = column.to_pylist()
    present = np.array([v is not None for v in values])
    text = np.array(["" if v is None else str(v) for v in values])
    uniques, inverse = np.unique(text, return_inverse=True)
    table = np.array([1 + fnv1a64(u) % (buckets - 1) for u in uniques], dtype=np.int64)
    return np.where(present, table[inverse], 0)


def load(data_dir):
    with open(os.path.join(data_dir, "features.toml"), "rb") as f:
        spec = tomllib.load(f)
    tables = [pq.read_table(p) for p in sorted(glob.glob(os.path.join(data_dir, "*.parquet")))]
    sides = {"context": {"ids": [], "dense": [], "buckets": []}, "item": {"ids": [], "dense": [], "buckets": []}}
    for feat in spec["features"]:
        side = sides[feat.get("side", "item")]
        column = [t[feat["name"]] for t in tables]
        if feat["kind"] == "categorical":
            side["ids"].append(np.concatenate([buckets_of(c, feat["buckets"]) for c in column]))
            side["buckets"].append(feat["buckets"])
        elif feat["kind"] == "number":
            x = np.concatenate([c.to_numpy(zero_copy_only=False) for c in column]).astype(np.float64)
            x = np.where(np.isnan(x), feat.get("default", 0.0), x)
            side["dense"].append(((x - feat.get("mean", 0.0)) / feat.get("std", 1.0))[:, None])
        else:
            flat = np.concatenate([c.combine_chunks().flatten().to_numpy() for c in column])
            side["dense"].append(flat.reshape(-1, feat["dim"]))
    tasks = [t["name"] for t in spec["tasks"]]
    labels = np.stack([np.concatenate([t[name].to_numpy() for t in tables]) for name in tasks], axis=1)
    out = {}
    for name, side in sides.items():
        offsets = np.cumsum([0] + side["buckets"][:-1])
        out[name] = {
            "ids": torch.from_numpy(np.stack(side["ids"], axis=1) + offsets),
            "dense": torch.from_numpy(np.concatenate(side["dense"], axis=1).astype(np.float32)),
            "rows": int(sum(side["buckets"])),
        }
    return out, torch.from_numpy(labels.astype(np.float32)), tasks


def mlp(width, hidden):
    layers = []
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU()]
        width = out
    return nn.Sequential(*layers), width


class Student(nn.Module):
    def __init__(self, data, tasks, embedding_dim, hidden, task_hidden, sparse=False):
        super().__init__()
        c, i = data["context"], data["item"]
        self.context_table = nn.Embedding(c["rows"], embedding_dim, sparse=sparse)
        self.item_table = nn.Embedding(i["rows"], embedding_dim, sparse=sparse)
        c_in = c["ids"].shape[1] * embedding_dim + c["dense"].shape[1]
        i_in = i["ids"].shape[1] * embedding_dim + i["dense"].shape[1]
        self.context_tower, c_out = mlp(c_in, hidden)
        self.item_tower, i_out = mlp(i_in, hidden)
        self.join_context = nn.Linear(c_out, hidden[0])
        self.join_item = nn.Linear(i_out, hidden[0], bias=False)
        self.interaction, width = mlp(hidden[0], hidden[1:])
        towers, heads = [], []
        for _ in tasks:
            tower, out = mlp(width, task_hidden)
            towers.append(tower)
            heads.append(nn.Linear(out, 1))
        self.task_towers = nn.ModuleList(towers)
        self.heads = nn.ModuleList(heads)

    def forward(self, c_ids, c_dense, i_ids, i_dense):
        n = c_ids.shape[0]
        c = torch.cat([self.context_table(c_ids).reshape(n, -1), c_dense], dim=1)
        i = torch.cat([self.item_table(i_ids).reshape(n, -1), i_dense], dim=1)
        h = torch.relu(self.join_context(self.context_tower(c)) + self.join_item(self.item_tower(i)))
        h = self.interaction(h)
        return torch.cat([head(tower(h)) for tower, head in zip(self.task_towers, self.heads)], dim=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--hidden", default="64,32")
    parser.add_argument("--task-hidden", default="16")
    parser.add_argument("--sparse", action="store_true", help="sparse tables stepped by SparseAdam")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: every epoch)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    data, labels, tasks = load(args.data_dir)
    hidden = [int(x) for x in args.hidden.split(",")]
    task_hidden = [int(x) for x in args.task_hidden.split(",") if x]
    model = Student(data, tasks, args.embedding_dim, hidden, task_hidden, sparse=args.sparse)
    if args.sparse:
        tables = [model.context_table.weight, model.item_table.weight]
        rest = [p for p in model.parameters() if all(p is not t for t in tables)]
        optimizers = [
            torch.optim.SparseAdam(tables, lr=args.lr),
            torch.optim.AdamW(rest, lr=args.lr, weight_decay=args.weight_decay),
        ]
    else:
        optimizers = [torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)]
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    c, i = data["context"], data["item"]
    n = labels.shape[0]
    examples, total, batches = 0, 0.0, 0
    started = time.perf_counter()
    for _ in range(args.epochs):
        if args.max_steps and batches == args.max_steps:
            break
        order = torch.randperm(n)
        for start in range(0, n, args.batch_size):
            if args.max_steps and batches == args.max_steps:
                break
            rows = order[start:start + args.batch_size]
            out = model(c["ids"][rows], c["dense"][rows], i["ids"][rows], i["dense"][rows])
            # Summed over tasks, averaged over rows: the loss retort trains with.
            loss = loss_fn(out, labels[rows]).mean(dim=0).sum()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total += loss.item()
            batches += 1
            examples += len(rows)
    seconds = time.perf_counter() - started
    print(f"examples={examples} seconds={seconds:.3f} examples_per_s={examples / seconds:.0f} "
          f"loss={total / batches:.4f} threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
