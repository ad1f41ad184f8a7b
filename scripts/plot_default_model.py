"""The default model's loss curve across its runs (warm start -> mini-a -> mini-b -> mini-c), validation loss against
couplets seen; written to src/duilian/models/default/loss.png."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

stages = [("warm start (BERT vocabulary)", "../shared/warmstart/metrics.jsonl", 0),
          ("mini-a (BERT vocabulary)", "runs/mini-a/metrics.jsonl", 5500),
          ("mini-b (corpus vocabulary)", "runs/mini-b/metrics.jsonl", 7000),
          ("mini-c (corpus vocabulary, lr 3e-4)", "runs/mini-c2/metrics.jsonl", 17659)]
fig, ax = plt.subplots(figsize=(7.5, 4.2))
for label, path, offset in stages:
    recs = [json.loads(l) for l in open(path) if l.strip()]
    val = [((offset + r["step"]) * 64 / 1e3, r["val_loss"]) for r in recs if r.get("event") == "val"]
    train = [((offset + r["step"]) * 64 / 1e3, r["loss"]) for r in recs if r.get("event") == "train"]
    line, = ax.plot(*zip(*val), "o-", label=f"{label}: validation")
    ax.plot(*zip(*train), "-", alpha=0.35, color=line.get_color())
ax.set_xlabel("thousand couplets seen (64 per step)")
ax.set_ylabel("loss (nats / token)")
ax.set_ylim(3.8, 6.0)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
ax.set_title("duilian default model: mini (4 x 256), trained on a 2-core CPU")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
