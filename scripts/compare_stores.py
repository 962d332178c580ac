#!/usr/bin/python3
"""Compares two sweep stores item by item: the same items, identical images (and latents, noise maps, attention
maps where stored) and identical scores. Used to show that a refactor preserves behaviour:
    scripts/compare_stores.py BEFORE.h5 AFTER.h5 [--atol 0]
Exit 0 when everything matches, 1 otherwise (each difference is listed)."""
import argparse
import sys

import h5py
import numpy as np


def datasets(group, prefix=""):
    out = {}
    for key, value in group.items():
        name = f"{prefix}{key}"
        if isinstance(value, h5py.Dataset):
            out[name] = value[()]
        else:
            out.update(datasets(value, name + "/"))
    return out


SKIPPED_ATTRS = {"timings", "complete", "git_revision", "framework_version"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--atol", type=float, default=0.0, help="tolerance for float arrays and scores")
    args = ap.parse_args()
    problems = []
    with h5py.File(args.before, "r") as a, h5py.File(args.after, "r") as b:
        items_a, items_b = set(a["items"].keys()), set(b["items"].keys())
        for name in sorted(items_a ^ items_b):
            problems.append(f"{name}: only in {'before' if name in items_a else 'after'}")
        compared = 0
        for name in sorted(items_a & items_b):
            ga, gb = a["items"][name], b["items"][name]
            da, db = datasets(ga), datasets(gb)
            for key in sorted(set(da) | set(db)):
                if key not in da or key not in db:
                    problems.append(f"{name}/{key}: only in {'before' if key in da else 'after'}")
                    continue
                x, y = np.asarray(da[key]), np.asarray(db[key])
                if x.shape != y.shape:
                    problems.append(f"{name}/{key}: shape {x.shape} vs {y.shape}")
                elif x.dtype.kind in "fc":
                    same_nan = np.array_equal(np.isnan(x), np.isnan(y))
                    both = ~(np.isnan(x) | np.isnan(y))
                    diff = float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0
                    if not same_nan or diff > args.atol:
                        problems.append(f"{name}/{key}: max difference {diff}{'' if same_nan else ', NaNs differ'}")
                elif not np.array_equal(x, y):
                    problems.append(f"{name}/{key}: differs ({np.count_nonzero(x != y)} of {x.size} values)")
            for key in sorted(set(ga.attrs) | set(gb.attrs)):
                if key in SKIPPED_ATTRS:
                    continue
                va, vb = ga.attrs.get(key), gb.attrs.get(key)
                if str(va) != str(vb):
                    problems.append(f"{name}@{key}: {va!r} vs {vb!r}")
            compared += 1
    for p in problems:
        print(p)
    print(f"{compared} common items compared, {len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
