"""What the loop did between two dumps of ``sitecustomize.py`` (one phase of a run)::

    python bench/step_census/diff.py before.json after.json
"""

from __future__ import annotations

import json
import sys


def main(before_path: str, after_path: str) -> None:
    with open(before_path) as fh:
        before = json.load(fh)
    with open(after_path) as fh:
        after = json.load(fh)
    steps = after["all"][0] - before["all"][0]
    busy = after["all"][1] - before["all"][1]
    was = {int(k): v for k, v in before["lengths_ms"]}
    lengths = {int(k): v - was.get(int(k), 0) for k, v in after["lengths_ms"]}
    print(f"{steps:,} steps, {busy:.1f} s busy")
    for floor in (5, 10, 20, 50):
        print(f"  steps of {floor} ms or more: {sum(v for k, v in lengths.items() if k >= floor):,}")
    earlier = {name: entry for name, entry in before["slow"]}
    rows = []
    for name, (count, seconds, _) in after["slow"]:
        count0, seconds0, _ = earlier.get(name, (0, 0.0, 0.0))
        if count > count0:
            rows.append((seconds - seconds0, int(count - count0), name))
    print("steps over 3 ms: count, seconds, mean ms, where")
    for seconds, count, name in sorted(rows, reverse=True)[:15]:
        print(f"  {count:>6} {seconds:7.2f} {seconds / count * 1000:6.1f}  {name[:150]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
