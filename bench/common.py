"""Shared bits of the benchmarks: percentiles and the one result line run_all.py reads."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def emit(name, figures, target):
    """Print the figures for people, then one machine-readable line."""
    for key, value in figures.items():
        print(f"  {key:<28} {value}")
    print(f"  {'target':<28} {target}")
    print("RESULT " + json.dumps({"bench": name, "figures": figures, "target": target}, ensure_ascii=False))
