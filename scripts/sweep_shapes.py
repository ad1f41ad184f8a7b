"""Model shapes at equal CPU time: which GPT-2 shape learns most in a fixed budget on this machine?

Each shape trains from scratch on the prepared dataset for the same wall-clock budget on one CPU core of its
own (two shapes at a time, pinned with taskset, one thread each), with its learning-rate schedule sized to
end with the budget: a short calibration run measures the shape's seconds per step first. The table gives
the validation loss at the end (all validation lines the evaluation takes), the minutes each run took and the
steps it made. The calibration runs while the machine may be busier or quieter than during the runs, so the
minutes can differ from the budget: read the losses beside them.

    python scripts/sweep_shapes.py --data data/couplet-cv --out runs/sweep --minutes 15
    python scripts/sweep_shapes.py --data data/couplet-cv --out runs/sweep --minutes 15 --shapes 4x256 6x256

A shape is LAYERSxWIDTH (heads = width / 64, feed-forward 4 x width, 128 positions). Results are written to
OUT/sweep.json and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys
from duilian import model
from duilian.train import TrainConfig, train
name, layers, width, kw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
model.PRESETS[name] = model.Preset(n_layer=layers, n_embd=width, n_head=max(1, width // 64), n_positions=128)
print(json.dumps(train(TrainConfig(preset=name, **kw))))
"""


def run_shape(name: str, layers: int, width: int, cfg: dict, core: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = ["taskset", "-c", str(core), sys.executable, "-c", CHILD, name, str(layers), str(width), json.dumps(cfg)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit(out[-3000:])
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per shape (default 15)")
    ap.add_argument("--shapes", nargs="+", default=["4x256", "6x256", "3x384", "6x384"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(data=args.data, bucket=True, lr=args.lr, warmup=0.05, dropout=0.0, seed=7, dtype=args.dtype,
                  eval_every=0, save_every=0, report_every=0)
    shapes = [(s, *map(int, s.split("x"))) for s in args.shapes]

    # 1) calibration: seconds per step of each shape, two at a time, 30 steps (the first 10 are warm-up)
    speed = {}
    for i in range(0, len(shapes), 2):
        procs = [(s, run_shape(s, l, w, {**common, "out": str(out / f"calib-{s}"), "steps": 30, "report_every": 10,
                                         "eval_batches": 1}, core)) for core, (s, l, w) in enumerate(shapes[i:i + 2])]
        for s, p in procs:
            finish(p)
            recs = [json.loads(x) for x in (out / f"calib-{s}" / "metrics.jsonl").read_text().splitlines()]
            rates = [r["steps_per_s"] for r in recs if r.get("event") == "train"][1:]
            speed[s] = sum(rates) / len(rates)
            print(f"{s}: {speed[s]:.2f} steps/s", flush=True)

    # 2) the runs: a schedule that ends with the budget, a safety stop just after it
    results = {}
    for i in range(0, len(shapes), 2):
        procs = []
        for core, (s, l, w) in enumerate(shapes[i:i + 2]):
            steps = max(20, int(speed[s] * 60 * args.minutes * 0.97))
            cfg = {**common, "out": str(out / s), "steps": steps, "eval_batches": 100,
                   "max_minutes": args.minutes * 1.1}
            procs.append((s, steps, run_shape(s, l, w, cfg, core), time.perf_counter()))
        for s, steps, p, t0 in procs:
            last = finish(p)
            results[s] = {"steps_planned": steps, "steps": last["step"], "val_loss": last.get("val_loss"),
                          "minutes": (time.perf_counter() - t0) / 60, "tokens_per_s": last.get("tokens_per_s")}
            params = json.loads((out / s / "config.json").read_text())["parameters"]
            results[s]["parameters"] = params
            print(s, results[s], flush=True)
    (out / "sweep.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print("\n| shape | parameters | minutes | steps (x 64 couplets) | real tokens/s, 1 core | validation loss |\n"
          "|---|---|---|---|---|---|")
    for s, r in results.items():
        print(f"| {s} | {r['parameters'] / 1e6:.1f}M | {r['minutes']:.1f} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | "
              f"{r['val_loss']:.4f} |")


if __name__ == "__main__":
    main()
