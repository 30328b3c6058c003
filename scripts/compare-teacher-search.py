#!/usr/bin/env python3
"""Judges a teacher search against a brute-force sweep of the same space.

    scripts/compare-teacher-search.py SEARCH/report.json SWEEP/report.json

Finds the search's winner among the sweep's points (by configuration), and prints where its
full-run holdout gain ranks, how far it is from the sweep's best in standard errors, and what
each cost. Both reports come from `retort teacher-search` (the sweep with `--sweep`).
"""

import json
import math
import sys

KEYS = ("embedding_dim", "towers", "interaction", "mask_probability", "left_out_features",
        "source_tasks", "epochs", "distilled_heads")


def key(candidate):
    return json.dumps([candidate[k] for k in KEYS])


def main(search_path, sweep_path):
    search = json.load(open(search_path))
    sweep = json.load(open(sweep_path))
    winner = search["winner"]
    if winner is None:
        sys.exit("the search has no winner")
    points = {key(c): i for i, c in enumerate(sweep["candidates"])}
    at = points.get(key(search["candidates"][winner]))
    if at is None:
        sys.exit("the search's winner is not a point of the sweep's space")
    gains = sorted(sweep["holdout"], key=lambda h: -h["gain"])
    best = gains[0]
    picked = next(h for h in gains if h["candidate"] == at)
    rank = 1 + sum(1 for h in gains if h["gain"] > picked["gain"])
    gap = best["gain"] - picked["gain"]
    se = math.hypot(best["gain_se"], picked["gain_se"])
    search_s = search["control_s"] + search["schedule"]["spent_s"]
    sweep_s = sweep["control_s"] + sweep["schedule"]["spent_s"]
    print(f"search winner: sweep point {at}, holdout gain {picked['gain']:+.4f} ± {picked['gain_se']:.4f}, "
          f"rank {rank} of {len(gains)}")
    print(f"sweep best: point {best['candidate']}, holdout gain {best['gain']:+.4f} ± {best['gain_se']:.4f}")
    print(f"gap {gap:.4f} = {gap / se if se else float('inf'):.2f} standard errors of the difference "
          f"({'within' if gap <= 2 * se else 'beyond'} noise at two)")
    print(f"cost: search {search_s:.0f} s, sweep {sweep_s:.0f} s ({search_s / sweep_s:.2f} of it); "
          f"holdout measurements: search {search['holdout_s']:.0f} s, sweep {sweep['holdout_s']:.0f} s")
    within = sum(1 for h in gains if best["gain"] - h["gain"] <= 2 * math.hypot(best["gain_se"], h["gain_se"]))
    print(f"{within} of {len(gains)} sweep points are within two standard errors of the best")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
