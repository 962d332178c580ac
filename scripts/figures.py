#!/usr/bin/python3
"""Figures from a sweep store (framework/runner/README.md): the ablation table (each metric's direction, the
best mean marked), a trade-off curve, a qualitative grid (the collage, then each run), per-layer noise demos
(when the sweep saved noise maps), the paired differences against a base run (one interval per run, metric
and claim of the config) and, for stores with editing rounds, the editing sequences, as PNGs (Debian
python3-h5py + python3-matplotlib; no pandas needed).

    python3 scripts/figures.py results/ablation.h5 --out results/figures/ablation
    python3 scripts/figures.py results/tradeoff.h5 --out results/figures/tradeoff --x-param strength \
        --fidelity mask_iou --alignment clip_score
"""
import argparse
import json
import math
import os
import textwrap
from collections import OrderedDict, defaultdict

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# Each metric's direction, as the metric registry (metrics/) defines it: True = higher is better.
HIGHER_IS_BETTER = {"mask_iou": True, "ciede2000": False, "ssim": True, "clip_score": True, "lpips": False,
                    "kid": False, "fid": False, "edit_outside_change": False}


def direction_mark(metric):
    if metric not in HIGHER_IS_BETTER:
        return ""
    return " (higher better)" if HIGHER_IS_BETTER[metric] else " (lower better)"


def strings(ds):
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[:]]


def load_table(f):
    t = f["scores_table"]
    cols = {k: (strings(t[k]) if t[k].dtype.kind in "OS" else t[k][:]) for k in t}
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def runs(f):
    out = OrderedDict()
    for rid in f["runs"]:
        g = f["runs"][rid]
        out[rid] = {"method": g.attrs["method"], "label": g.attrs["label"], "params": json.loads(g.attrs["params"]),
                    "editing_round": int(g.attrs.get("editing_round", 0))}
    return out


def summarise(rows):
    vals = defaultdict(list)
    for r in rows:
        if np.isfinite(r["value"]):
            vals[(r["run_id"], r["metric"])].append(r["value"])
    out = {}
    for k, v in vals.items():
        v = np.asarray(v, dtype=float)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        out[k] = (v.mean(), 1.96 * sd / math.sqrt(len(v)), len(v))
    return out


def table_figure(f, rows, path):
    rs = runs(f)
    summ = summarise(rows)
    metrics = list(OrderedDict.fromkeys(r["metric"] for r in rows))
    ids = sorted({r["run_id"] for r in rows}, key=lambda i: rs[i]["label"] if i in rs else i)
    best = {}
    for m in metrics:
        means = [summ[(i, m)][0] for i in ids if (i, m) in summ]
        if means and m in HIGHER_IS_BETTER:
            best[m] = max(means) if HIGHER_IS_BETTER[m] else min(means)
    cells = [[f"{summ[(i, m)][0]:.3f} ± {summ[(i, m)][1]:.3f}" if (i, m) in summ else "-" for m in metrics] for i in ids]
    labels = [rs[i]["label"] if i in rs else i for i in ids]
    cols = [m + ("\n↑ higher better" if HIGHER_IS_BETTER.get(m) else "\n↓ lower better" if m in HIGHER_IS_BETTER else "")
            for m in metrics]
    fig, ax = plt.subplots(figsize=(2.2 + 1.9 * len(metrics), 0.9 + 0.4 * len(ids)))
    ax.axis("off")
    tab = ax.table(cellText=cells, rowLabels=labels, colLabels=cols, loc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.scale(1, 1.3)
    for (r, c), cell in tab.get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 1.6)
        elif c >= 0 and metrics[c] in best and (ids[r - 1], metrics[c]) in summ and \
                summ[(ids[r - 1], metrics[c])][0] == best[metrics[c]]:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#e3f4e3")
    ax.set_title("mean ± 95 % interval over items; best mean in bold", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def layer_rows(f, key):
    """Per item and metric, the mean of the per-layer values over the layers whose meta has `key` true (as
    `collage report --layers KEY`)."""
    selected = {}
    for c in f["collages"]:
        layers = json.loads(f["collages"][c].attrs.get("layers", "[]"))
        selected[c] = [i for i, l in enumerate(layers) if (l.get("meta") or {}).get(key)]
    out = []
    for n, g in f["items"].items():
        if "complete" not in g.attrs or "scores" not in g:
            continue
        sel = selected.get(g.attrs["collage"], [])
        if not sel:
            continue
        for d in g["scores"]:
            if not d.endswith(".per_layer"):
                continue
            vals = [v for v in np.asarray(g["scores"][d][:])[sel] if np.isfinite(v)]
            out.append({"item": n, "collage": g.attrs["collage"], "run_id": g.attrs["run_id"],
                        "seed": int(g.attrs["seed"]), "metric": d[: -len(".per_layer")],
                        "value": float(np.mean(vals)) if vals else float("nan")})
    return out


def paired(rows, base_id, run_id, metric):
    """Differences run - base over items matched on collage and seed: (mean, half-width of the 95 % interval, n)."""
    base = {(r["collage"], int(r["seed"])): r["value"] for r in rows if r["run_id"] == base_id and r["metric"] == metric}
    d = [r["value"] - base[(r["collage"], int(r["seed"]))] for r in rows
         if r["run_id"] == run_id and r["metric"] == metric and (r["collage"], int(r["seed"])) in base
         and np.isfinite(r["value"]) and np.isfinite(base[(r["collage"], int(r["seed"]))])]
    if len(d) < 2:
        return None
    d = np.asarray(d)
    return d.mean(), 1.96 * d.std(ddof=1) / math.sqrt(len(d)), len(d)


def resolve(rs, name):
    for rid, r in rs.items():
        if name in (rid, r["label"]):
            return rid
    return None


def paired_figure(f, rows, path, base):
    """One panel per metric: every run's paired difference against `base` (whole images), and the config's claims
    (with the layers they score), each with its 95 % interval; green when the interval lies on the better side
    of zero, red on the worse side."""
    rs = runs(f)
    config = json.loads(f.attrs.get("config", "{}"))
    claims = config.get("claims", [])
    base = base or (claims[0]["base"] if claims else None)
    base_id = resolve(rs, base) if base else None
    if base_id is None:
        return False
    metrics = list(OrderedDict.fromkeys(r["metric"] for r in rows))
    others = sorted((i for i in rs if i != base_id and not rs[i]["editing_round"]), key=lambda i: rs[i]["label"])
    entries = defaultdict(list)  # metric -> [(label, (mean, half, n))]
    for m in metrics:
        for rid in others:
            p = paired(rows, base_id, rid, m)
            if p:
                entries[m].append((rs[rid]["label"], p))
    layer_cache = {}
    for c in claims:
        if not c.get("layers"):
            continue
        key = c["layers"]
        if key not in layer_cache:
            layer_cache[key] = layer_rows(f, key)
        p = paired(layer_cache[key], resolve(rs, c["base"]), resolve(rs, c["run"]), c["metric"])
        if p:
            entries[c["metric"]].append((f"{c['run']} ('{key}' layers)", p))
    metrics = [m for m in metrics if entries[m]]
    if not metrics:
        return False
    height = max(len(entries[m]) for m in metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 1.2 + 0.45 * height), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        higher = HIGHER_IS_BETTER.get(m, True)
        for y, (label, (mean, half, n)) in enumerate(entries[m]):
            lo, hi = mean - half, mean + half
            good = lo > 0 if higher else hi < 0
            bad = hi < 0 if higher else lo > 0
            colour = "#2e7d32" if good else "#c62828" if bad else "#777777"
            ax.errorbar([mean], [y], xerr=[[half], [half]], fmt="o", color=colour, capsize=3)
            ax.annotate(f"{mean:+.3f} (n={n})", (mean, y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=6, color=colour)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(entries[m])))
        ax.set_yticklabels(["\n".join(textwrap.wrap(e[0], 28)) for e in entries[m]], fontsize=6)
        ax.set_ylim(-0.7, len(entries[m]) - 0.3)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(f"{m}: run − base\n({'higher' if higher else 'lower'} is better)", fontsize=7)
    fig.suptitle(f"paired differences against {rs[base_id]['label']} (same collage and seed), 95 % intervals",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def tradeoff_figure(f, rows, path, x_param, fidelity, alignment):
    rs = runs(f)
    summ = summarise(rows)
    by_method = defaultdict(list)
    for rid, r in rs.items():
        if x_param in r["params"]:
            by_method[r["method"]].append((r["params"][x_param], rid))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, pts in sorted(by_method.items()):
        if len({p[0] for p in pts}) < 2:
            continue  # the parameter does not vary for this method (a default): no curve
        pts.sort()
        xs = [p[0] for p in pts]
        for ax, metric in zip(axes, (fidelity, alignment)):
            ys = [summ.get((rid, metric), (np.nan, 0, 0)) for _, rid in pts]
            ax.errorbar(xs, [y[0] for y in ys], yerr=[y[1] for y in ys], marker="o", capsize=3, label=method)
            ax.set_xlabel(x_param)
            ax.set_ylabel(metric)
    axes[0].set_title(f"fidelity ({fidelity}) vs {x_param}")
    axes[1].set_title(f"alignment ({alignment}) vs {x_param}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def grid_figure(f, path, max_collages, seed):
    rs = runs(f)
    items = f["items"]
    names = [n for n in items if "complete" in items[n].attrs]
    collages = sorted({items[n].attrs["collage"] for n in names})[:max_collages]
    ids = sorted((i for i in rs if not rs[i]["editing_round"]), key=lambda i: rs[i]["label"])
    seeds = sorted({int(items[n].attrs["seed"]) for n in names})
    if seed is None and seeds:
        seed = seeds[0]
    cols = [None] + ids  # the collage itself, then one column per run
    fig, axes = plt.subplots(len(collages), len(cols), figsize=(1.8 * len(cols), 1.8 * len(collages)), squeeze=False)
    for r, c in enumerate(collages):
        for k, rid in enumerate(cols):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if rid is None:
                if "composite" in f["collages"][c]:
                    ax.imshow(f["collages"][c]["composite"][:], interpolation="nearest")
                if r == 0:
                    ax.set_title("collage", fontsize=6)
                ax.set_ylabel(c, fontsize=6)
                continue
            name = f"{c}__{rid}__seed{seed}"
            if name in items:
                ax.imshow(items[name]["image"][:], interpolation="nearest")
            if r == 0:
                # Long labels (many parameters) wrap instead of running into the next column's title.
                ax.set_title("\n".join(textwrap.wrap(rs[rid]["label"] + f" (seed {seed})", 30)), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def noise_figure(f, path, max_collages, seed):
    """Per-layer noise: per collage, the collage, the noise map of the first run that stored one (the strength
    each pixel starts denoising at; white = 1) and that run's output."""
    rs = runs(f)
    items = f["items"]
    done = [n for n in items if "complete" in items[n].attrs and "noise_map" in items[n]]
    rids = sorted({items[n].attrs["run_id"] for n in done if not rs[items[n].attrs["run_id"]]["editing_round"]},
                  key=lambda i: rs[i]["label"])
    if not rids:
        return False
    rid = rids[0]
    collages = sorted({items[n].attrs["collage"] for n in done if items[n].attrs["run_id"] == rid})[:max_collages]
    seeds = sorted({int(items[n].attrs["seed"]) for n in done if items[n].attrs["run_id"] == rid})
    if seed is None or seed not in seeds:
        seed = seeds[0]
    fig, axes = plt.subplots(len(collages), 3, figsize=(5.4, 1.8 * len(collages)), squeeze=False)
    for r, c in enumerate(collages):
        g = items[f"{c}__{rid}__seed{seed}"]
        panels = [(f["collages"][c]["composite"][:] if "composite" in f["collages"][c] else None, "collage", None),
                  (g["noise_map"][:], "noise map (start strength)", "gray"),
                  (g["image"][:], f"{rs[rid]['label']} (seed {seed})", None)]
        for k, (img, title, cmap) in enumerate(panels):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img, interpolation="nearest", cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            if r == 0:
                ax.set_title(title, fontsize=6)
            if k == 0:
                ax.set_ylabel(c, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def editing_figure(f, path, max_collages):
    """One row per collage: the start run's pick, then each editing round's pick (the image the next round
    edits), titled with the regenerated layer, the seed and the pick metric's value."""
    rs = runs(f)
    rounds = sorted((rs[i]["editing_round"], i) for i in rs if rs[i]["editing_round"])
    items = f["items"]
    done = [n for n in items if "complete" in items[n].attrs]
    collages = sorted({items[n].attrs["collage"] for n in done if "round" in items[n].attrs})[:max_collages]
    pick_metric = json.loads(f.attrs["config"]).get("editing", {}).get("pick", "")
    fig, axes = plt.subplots(len(collages), len(rounds) + 1, figsize=(1.9 * (len(rounds) + 1), 2.0 * len(collages)),
                             squeeze=False)
    for r, c in enumerate(collages):
        chain = []  # (item, title)
        for k, (rnd, rid) in enumerate(rounds):
            mine = [n for n in done if n.startswith(f"{c}__{rid}__seed")]
            if not mine:
                break
            if k == 0:
                chain.append((items[mine[0]].attrs["edit_from_item"], "start"))
            picked = [n for n in mine if int(items[n].attrs["picked"])]
            if picked:
                layer = int(items[picked[0]].attrs["regenerated_layer"])
                chain.append((picked[0], f"round {rnd}: layer {layer}"))
        for k in range(len(rounds) + 1):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(chain) and chain[k][0] in items:
                g = items[chain[k][0]]
                ax.imshow(g["image"][:], interpolation="nearest")
                value = g["scores"][pick_metric][()] if pick_metric in g["scores"] else float("nan")
                ax.set_title(f"{chain[k][1]}\nseed {int(g.attrs['seed'])}, {pick_metric} {value:.2f}", fontsize=6)
            if k == 0:
                ax.set_ylabel(c, fontsize=6)
    fig.suptitle(f"editing sequences: each round regenerates one layer of the previous pick (best {pick_metric})",
                 fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--out", default=None, help="output prefix (default: the store without .h5)")
    p.add_argument("--x-param", default="strength", help="the run parameter of the trade-off curve")
    p.add_argument("--fidelity", default="mask_iou")
    p.add_argument("--alignment", default="clip_score")
    p.add_argument("--max-collages", type=int, default=6)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--paired", default=None,
                   help="base run (label or id) of the paired-difference plot (default: the base of the config's first claim)")
    a = p.parse_args()
    prefix = a.out or os.path.splitext(a.store)[0]
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with h5py.File(a.store, "r") as f:
        rows = load_table(f)
        written = []
        table_figure(f, rows, prefix + "_table.png")
        written.append(prefix + "_table.png")
        xs = defaultdict(set)
        for r in runs(f).values():
            if a.x_param in r["params"]:
                xs[r["method"]].add(r["params"][a.x_param])
        if any(len(v) > 1 for v in xs.values()):
            tradeoff_figure(f, rows, prefix + "_tradeoff.png", a.x_param, a.fidelity, a.alignment)
            written.append(prefix + "_tradeoff.png")
        if paired_figure(f, rows, prefix + "_paired.png", a.paired):
            written.append(prefix + "_paired.png")
        grid_figure(f, prefix + "_grid.png", a.max_collages, a.seed)
        written.append(prefix + "_grid.png")
        if noise_figure(f, prefix + "_noise.png", a.max_collages, a.seed):
            written.append(prefix + "_noise.png")
        if any(r["editing_round"] for r in runs(f).values()):
            editing_figure(f, prefix + "_editing.png", a.max_collages)
            written.append(prefix + "_editing.png")
    for w in written:
        print(w)


if __name__ == "__main__":
    main()
