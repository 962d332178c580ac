#!/usr/bin/python3
"""How much of an object's colour is still readable in x_t = sqrt(ab) x0 + sqrt(1-ab) eps, per timestep and noise
schedule, on ShapesWorld renders: the text can only teach the model what the noisy image does not already show.

For single-object renders (`collage sandbox render --min-objects 1 --max-objects 1`), the latent is scaled
to unit standard deviation as the trainer does (scaling_factor 0); the estimator averages x_t over a disc at the
object's centre (radius 0.3 x size) and takes the nearest mean colour of the clean renders (the clean ceiling is
printed: tints and shading make some colours overlap).

    build/collage sandbox render --n 600 --seed 1000 --min-objects 1 --max-objects 1 --out /tmp/rs1
    /usr/bin/python3 scripts/schedule_snr.py /tmp/rs1
"""
import argparse
import json
import os

import matplotlib.image as mpimg
import numpy as np


def betas(kind, T=1000):
    if kind == "scaled_linear":  # Stable Diffusion's (and the embedded model's) schedule
        return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
    if kind == "linear":
        return np.linspace(1e-4, 0.02, T)
    if kind == "squaredcos_cap_v2":
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    raise ValueError(kind)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("renders", help="folder written by collage sandbox render (single-object scenes)")
    p.add_argument("--schedules", default="scaled_linear,linear,squaredcos_cap_v2")
    p.add_argument("--timesteps", default="0,500,700,800,900,950,999")
    a = p.parse_args()
    scenes = json.load(open(os.path.join(a.renders, "scenes.json")))
    imgs, cols, masks = [], [], []
    for s in scenes:
        im = mpimg.imread(os.path.join(a.renders, s["file"]))[..., :3].astype(np.float64)
        H, W = im.shape[:2]
        yy, xx = np.mgrid[0:H, 0:W] + 0.5
        o = s["scene"]["objects"][0]
        r = max(1.5, 0.3 * o["size"] * W)
        masks.append((xx - o["cx"] * W) ** 2 + (yy - o["cy"] * H) ** 2 <= r * r)
        imgs.append(im * 2 - 1)
        cols.append(o["colour"])
    x0 = np.array(imgs)
    x0 /= x0.std()
    masks = np.array(masks)
    names = sorted(set(cols))
    ci = np.array([names.index(c) for c in cols])
    clean = np.array([x0[i][masks[i]].mean(0) for i in range(len(x0))])
    centroids = np.array([clean[ci == k].mean(0) for k in range(len(names))])
    print(f"{len(x0)} renders, {len(names)} colours (chance {1 / len(names):.3f}), mean disc {masks.sum((1, 2)).mean():.1f} px")
    rng = np.random.default_rng(0)
    for kind in a.schedules.split(","):
        ab = np.cumprod(1 - betas(kind))
        cells = []
        for t in (int(v) for v in a.timesteps.split(",")):
            acc = []
            for i in range(len(x0)):
                xt = np.sqrt(ab[t]) * x0[i] + np.sqrt(1 - ab[t]) * rng.standard_normal(x0[i].shape)
                est = xt[masks[i]].mean(0) / np.sqrt(ab[t])
                acc.append(np.argmin(((centroids - est) ** 2).sum(1)) == ci[i])
            cells.append(f"t={t} (SNR {ab[t] / (1 - ab[t]):.1e}): {np.mean(acc):.2f}")
        print(f"{kind}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
