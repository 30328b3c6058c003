"""What both Python peers encode as retort does: the manifest's inputs laid out, the bucket of a
categorical id (FNV-1a 64, `docs/model-package.md`) and the text an id value hashes as."""

import functools
from typing import Any, Optional

import numpy as np

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1


@functools.lru_cache(maxsize=1 << 20)
def bucket(text: str, buckets: int) -> int:
    h = FNV_OFFSET
    for b in text.encode():
        h = ((h ^ b) * FNV_PRIME) & MASK
    return 1 + h % (buckets - 1)


def id_text(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 9.0e15:
        return str(int(value))
    return None


def input_layout(features: list[dict]) -> dict[str, dict]:
    """Input name -> its side, element type, width, and features in manifest order with their
    column offsets."""
    inputs: dict[str, dict] = {}
    for f in features:
        spec = inputs.setdefault(f["input"], {"side": f["side"], "features": [], "width": 0})
        width = f.get("dim", 1) if f["kind"] == "vector" else 1
        spec["features"].append((f, spec["width"], width))
        spec["width"] += width
        spec["dtype"] = np.int64 if f["kind"] == "categorical" else np.float32
    return inputs
