#!/usr/bin/python3
"""Compares two sweep stores item by item: the same complete items, byte-identical images and equal scores
(NaN equals NaN). Prints one summary line; exit 1 on any difference. Usage: compare_stores.py A.h5 B.h5"""
import math
import sys

import h5py
import numpy as np


def items(f):
    return {k: g for k, g in f["items"].items() if "complete" in g.attrs}


def main(a_path, b_path):
    with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
        a, b = items(fa), items(fb)
        problems = []
        if set(a) != set(b):
            problems.append(f"items differ: only in A {sorted(set(a) - set(b))}, only in B {sorted(set(b) - set(a))}")
        scores = 0
        for name in sorted(set(a) & set(b)):
            if not np.array_equal(a[name]["image"][()], b[name]["image"][()]):
                problems.append(f"{name}: images differ")
            sa, sb = a[name]["scores"], b[name]["scores"]
            if set(sa) != set(sb):
                problems.append(f"{name}: score names differ")
                continue
            for m in sa:
                va, vb = np.atleast_1d(sa[m][()]), np.atleast_1d(sb[m][()])
                same = va.shape == vb.shape and all(
                    (math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(va.tolist(), vb.tolist()))
                if not same:
                    problems.append(f"{name}: {m} differs ({va} vs {vb})")
                scores += 1
        for p in problems[:10]:
            print("  " + p)
        print(f"{len(a)} vs {len(b)} items; {scores} scores compared; "
              f"{'equal' if not problems else f'{len(problems)} difference(s)'}")
        return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
