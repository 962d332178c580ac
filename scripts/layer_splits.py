#!/usr/bin/python3
"""Per-layer paired differences of a sweep store, split by a property of the layer.

The report (`collage report STORE --paired BASE --layers KEY`) averages each item's flagged layers; this script
keeps every object layer (layers whose meta has "object") as its own pair and groups the pairs, to ask where an
effect sits. Numbers in the README's CA and TI paragraphs come from it, e.g.

  python3 scripts/layer_splits.py results/claims.h5 --run "sdedit+ca strength=0.8" \
      --base "sdedit strength=0.8" --metric ciede2000 --by objects --by source_tint --by base:mask_iou:0.3,0.6

--by: a meta path (object.colour, object.shape, source_tint, unnamed_pattern, ...), `objects` (object layers
in the collage), or base:METRIC:EDGES (bins of the base run's per-layer METRIC at the comma-separated edges).
Optional --where KEY restricts to layers whose meta KEY is true.
"""
import argparse
import json
import math
import sys

import h5py


def meta_value(meta, path):
    v = meta
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--run", required=True, help="label or id of the run")
    ap.add_argument("--base", required=True, help="label or id of the run it is paired with")
    ap.add_argument("--metric", default="ciede2000")
    ap.add_argument("--by", action="append", default=[], help="grouping (repeatable)")
    ap.add_argument("--where", help="only layers whose meta KEY is true")
    a = ap.parse_args()

    f = h5py.File(a.store, "r")
    runs = {k: f["runs"][k].attrs["label"] for k in f["runs"]}

    def resolve(name):
        ids = [k for k, lab in runs.items() if name in (k, lab)]
        if len(ids) != 1:
            sys.exit(f"{a.store}: no single run '{name}' (runs: {', '.join(sorted(runs.values()))})")
        return ids[0]

    run, base = resolve(a.run), resolve(a.base)
    run_items = {}  # collage -> this run's item names (one per seed)
    for item in f["items"]:
        collage, run_id, _ = item.split("__")
        if run_id == run:
            run_items.setdefault(collage, []).append(item)
    key = f"scores/{a.metric}.per_layer"
    pairs = []  # (layer meta, object layers in the collage, base item, layer index, base value, run value)
    for cname in f["collages"]:
        g = f["collages"][cname]
        layers = json.loads(g.attrs["layers"])
        if not any("meta" in l for l in layers):
            sys.exit(f"{a.store}: collage {cname} has no layer meta; run its sweep command on the store again")
        n_objects = sum(1 for l in layers if "object" in l.get("meta", {}))
        for i, layer in enumerate(layers):
            meta = layer.get("meta", {})
            if "object" not in meta or (a.where and meta.get(a.where) is not True):
                continue
            for item in run_items.get(cname, []):
                other = item.replace(f"__{run}__", f"__{base}__")
                if other not in f["items"]:
                    continue
                rv, bv = f["items"][item][key][i], f["items"][other][key][i]
                if math.isnan(rv) or math.isnan(bv):
                    continue
                pairs.append((meta, n_objects, other, i, bv, rv))
    if not pairs:
        sys.exit(f"{a.store}: no object-layer pairs of '{a.run}' and '{a.base}' with {a.metric}.per_layer")

    def summary(name, diffs):
        n = len(diffs)
        mean = sum(diffs) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
        half = 1.96 * sd / math.sqrt(n) if n > 1 else float("nan")
        print(f"| {name} | {n} | {mean:+.3f} | {mean - half:+.3f} .. {mean + half:+.3f} |")

    print(f"{a.store}: {a.metric} per object layer, '{runs[run]}' - '{runs[base]}'"
          + (f", layers with {a.where}" if a.where else ""))
    print("\n| group | pairs | mean difference | 95 % interval |\n|---|---:|---:|---|")
    summary("all", [r - b for *_, b, r in pairs])
    for by in a.by:
        groups = {}
        for meta, n_objects, other, i, b, r in pairs:
            if by == "objects":
                k = f"objects={n_objects}"
            elif by.startswith("base:"):
                _, metric, edges = by.split(":")
                v = f["items"][other][f"scores/{metric}.per_layer"][i]
                cuts = [float(e) for e in edges.split(",")]
                lo = max([c for c in cuts if c <= v], default=None)
                hi = min([c for c in cuts if c > v], default=None)
                k = f"base {metric} " + (f"< {hi}" if lo is None else f">= {lo}" if hi is None else f"[{lo}, {hi})")
            else:
                k = f"{by}={meta_value(meta, by)}"
            groups.setdefault(k, []).append(r - b)
        for k in sorted(groups):
            summary(k, groups[k])


if __name__ == "__main__":
    main()
