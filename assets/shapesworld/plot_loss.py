#!/usr/bin/env python3
"""Draws the loss curve of a `collage train-model` or `collage train-clip` run:
plot_loss.py RUN/loss.csv OUT.png (python3-matplotlib)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
steps = [int(r["step"]) for r in rows]
loss = [float(r["loss"]) for r in rows]
k = 50
smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
plt.figure(figsize=(7, 4))
plt.plot(steps, loss, alpha=0.3, label="loss")
plt.plot(steps, smooth, label=f"mean of {k}")
plt.xlabel("step")
plt.ylabel("contrastive loss (InfoNCE)" if "accuracy" in rows[0] else "MSE of the prediction target (epsilon or v)")
plt.yscale("log")
plt.legend()
plt.grid(alpha=0.3)
plt.tight_layout()
plt.savefig(sys.argv[2] if len(sys.argv) > 2 else "loss.png", dpi=120)
