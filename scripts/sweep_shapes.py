"""Model shapes (or datasets) at equal CPU time: which learns most in a fixed budget on this machine?

Each arm trains on its dataset for the same wall-clock budget on one CPU core of its own (two arms at a
time, pinned with taskset, one thread each), with its learning-rate schedule sized to end with the budget: a
short calibration run measures the arm's seconds per step first. The table gives the validation losses at
the end (every validation split of the dataset: `val`, and `val.NAME` per source), the minutes each run took
and the steps it made. The calibration runs while the machine may be busier or quieter than during the runs,
so the minutes can differ from the budget: read the losses beside them.

    python scripts/sweep_shapes.py --data data/couplet-cv --out runs/sweep --minutes 15
    python scripts/sweep_shapes.py --data data/couplet-cv --out runs/sweep --minutes 15 --shapes 4x256 6x256
    # arms that differ in data, from a trained model (a deeper shape grows from it: model.init_from_model_dir)
    python scripts/sweep_shapes.py --out runs/sweep-dir --minutes 50 --init-from src/duilian/models/default \
        --lr 3e-4 --arm fwd=4x256@data/mix-fwd --arm both=4x256@data/mix-both

A shape is LAYERSxWIDTH (heads = width / 64, feed-forward 4 x width, 128 positions); an arm is
NAME=SHAPE@DATA. Results are written to OUT/sweep.json and printed as a Markdown table.
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
    ap.add_argument("--data", help="the dataset of every --shapes arm")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per arm (default 15)")
    ap.add_argument("--shapes", nargs="+", default=None, help="default 4x256 6x256 3x384 6x384 (with --data)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=SHAPE@DATA",
                    help="an arm of its own shape and dataset (instead of --shapes)")
    ap.add_argument("--init-from", default="", help="a model directory every arm starts from (default: scratch)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--eval-batches", type=int, default=100)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(bucket=True, lr=args.lr, warmup=args.warmup, dropout=0.0, seed=7, dtype=args.dtype,
                  eval_every=0, save_every=0, report_every=0, init_from=args.init_from, batch_size=32, grad_accum=2)
    arms = [tuple(a.replace("=", "@", 1).split("@")) for a in args.arm] or \
        [(s, s, args.data) for s in (args.shapes or ["4x256", "6x256", "3x384", "6x384"])]
    if any(len(a) != 3 or not a[2] for a in arms):
        raise SystemExit("an arm is NAME=SHAPE@DATA, or give --data with --shapes")
    shapes = [(name, *map(int, shape.split("x")), data) for name, shape, data in arms]

    # 1) calibration: seconds per step of each shape, two at a time, 30 steps (the first 10 are warm-up)
    speed = {}
    for i in range(0, len(shapes), 2):
        procs = [(s, run_shape(s, l, w, {**common, "data": data, "out": str(out / f"calib-{s}"), "steps": 30,
                                         "report_every": 10, "eval_batches": 1}, core))
                 for core, (s, l, w, data) in enumerate(shapes[i:i + 2])]
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
        for core, (s, l, w, data) in enumerate(shapes[i:i + 2]):
            steps = max(20, int(speed[s] * 60 * args.minutes * 0.97))
            cfg = {**common, "data": data, "out": str(out / s), "steps": steps, "eval_batches": args.eval_batches,
                   "max_minutes": args.minutes * 1.1, "save_every": max(1, steps // 5), "keep_checkpoints": 1}
            procs.append((s, steps, run_shape(s, l, w, cfg, core), time.perf_counter()))
        for s, steps, p, t0 in procs:
            last = finish(p)
            results[s] = {"steps_planned": steps, "steps": last["step"], "val_loss": last.get("val_loss"),
                          "val": {k: v for k, v in last.items() if k.startswith("val_loss")},
                          "minutes": (time.perf_counter() - t0) / 60, "tokens_per_s": last.get("tokens_per_s")}
            params = json.loads((out / s / "config.json").read_text())["parameters"]
            results[s]["parameters"] = params
            print(s, results[s], flush=True)
    (out / "sweep.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    splits = sorted({k for r in results.values() for k in r["val"]}, key=lambda k: (k != "val_loss", k))
    print("\n| arm | parameters | minutes | steps (x 64 couplets) | real tokens/s, 1 core | "
          + " | ".join(k.replace("val_loss", "validation loss") for k in splits) + " |\n"
          + "|---" * (5 + len(splits)) + "|")
    for s, r in results.items():
        print(f"| {s} | {r['parameters'] / 1e6:.1f}M | {r['minutes']:.1f} | {r['steps']:,} | "
              f"{r['tokens_per_s']:,.0f} | "
              + " | ".join(f"{r['val'].get(k, float('nan')):.4f}" for k in splits) + " |")


if __name__ == "__main__":
    main()
