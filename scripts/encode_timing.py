#!/usr/bin/env python3
"""Median stage times (`timing_us`) of rank requests by id against a running retort server.

    scripts/encode_timing.py PORT LABEL [IDS]

Sends 60 requests of 500 candidates as ids: first the same 500 (`t0`..`t499`, cache-warm), then
500 drawn at random from `t0`..`t{IDS-1}` (default 1,000,000), and prints the medians of the
encode, infer and total times the answers report. Loopback only; the standard library only.
"""

import json
import random
import sys
import urllib.request


def ask(port: str, ids: list[str]) -> dict:
    body = json.dumps({"context": {"user_id": "u1", "country": "SE", "hour": 3}, "candidates": ids}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/rank", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["timing_us"]


def main() -> None:
    port, label = sys.argv[1], sys.argv[2]
    items = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    rng = random.Random(1)
    shapes = [
        ("hot", lambda: [f"t{i}" for i in range(500)]),
        ("random", lambda: [f"t{rng.randrange(items)}" for _ in range(500)]),
    ]
    for name, ids in shapes:
        times = [ask(port, ids()) for _ in range(60)]
        median = {k: sorted(t[k] for t in times)[len(times) // 2] for k in ("encode", "infer", "total")}
        print(label, name, median)


if __name__ == "__main__":
    main()
