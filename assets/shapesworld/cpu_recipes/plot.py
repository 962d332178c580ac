#!/usr/bin/env python3
"""Loss against scenes seen for the CPU-budget recipes and the stages of the shipped model:
/usr/bin/python3 assets/shapesworld/cpu_recipes/plot.py OUT.png (python3-matplotlib; run from the checkout)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = "assets/shapesworld/cpu_recipes/"
HIST = "assets/shapesworld/model_history/"


def curve(path, batch, offset=0, k=50):
    rows = list(csv.DictReader(open(path)))
    x = [offset + int(r["step"]) * batch for r in rows]
    loss = [float(r["loss"]) for r in rows]
    smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
    return x, smooth


plt.figure(figsize=(8, 4.5))
for name, batch, label in [
    ("a_clip_te_cosine", 32, "a: TE from sandbox CLIP, trained (9/100)"),
    ("b_scratch_cosine", 32, "b: TE from scratch (11/100)"),
    ("c_small_unet_cosine", 32, "c: smaller UNet (13/100)"),
    ("d_batch64_lr2e3_cosine", 64, "d: batch 64, lr 2e-3 (11/100)"),
]:
    plt.plot(*curve(HERE + name + ".loss.csv", batch), label=label)
s1 = 1380 * 32
plt.plot(*curve(HIST + "loss_stage1_cpu.csv", 32), "k:", label="shipped, stage 1 (CPU, CLIP TE frozen; 13/100)")
plt.plot(*curve(HIST + "loss_stage2.csv", 256, s1, 10), "k--", label="shipped, stage 2 (GPU; 47/100)")
s2 = s1 + 4773 * 256
plt.plot(*curve(HIST + "loss_stage3.csv", 256, s2, 10), "k-", label="shipped, stage 3 (GPU; 90/100)")
plt.axvspan(3000, 137000, color="tab:green", alpha=0.08, label="2 CPU-hours on 2 threads (up to 137k scenes)")
plt.xscale("log")
plt.yscale("log")
plt.ylim(0.04, 0.6)
plt.xlim(3000, 3e6)
plt.xlabel("scenes seen (steps x batch)")
plt.ylabel("v-prediction MSE (mean of 50 steps)")
plt.title("CPU-budget recipes vs the shipped model\n(in brackets: eval-shapesworld, every named object found)", fontsize=10)
plt.legend(fontsize=7)
plt.grid(alpha=0.3, which="both")
plt.tight_layout()
plt.savefig(sys.argv[1] if len(sys.argv) > 1 else "recipes.png", dpi=110)
