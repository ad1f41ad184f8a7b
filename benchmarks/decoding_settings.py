"""Decoding settings compared on one model and the same test lines: which should be the default?

For each setting: BLEU-1/2/4 of the first candidate (sacrebleu on characters, as `duilian evaluate`), its
form validity, and the variety of the 5 candidates a user sees (distinct-2 among them, mean over 上联).

    python benchmarks/decoding_settings.py                                    # the embedded default model
    python benchmarks/decoding_settings.py --model runs/mini-hf --limit 1000 --json out.json

Greedy writes one candidate, so its variety is not defined. Sampled settings are seeded (--seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "couplet" / "test"

SETTINGS = {  # name -> EvalConfig fields
    "greedy": dict(method="greedy", n=1),
    "beam 5": dict(method="beam", n=5),
    "beam 10": dict(method="beam", n=10),
    "sample T=1.0": dict(method="sample", n=5, temperature=1.0, top_p=1.0),
    "sample T=0.7, top-p 0.9": dict(method="sample", n=5, temperature=0.7, top_p=0.9),
    "sample T=0.5, top-p 0.8": dict(method="sample", n=5, temperature=0.5, top_p=0.8),
    "greedy + sample T=0.7, top-p 0.9": dict(method="sample", n=5, temperature=0.7, top_p=0.9, first="greedy"),
    "greedy + sample T=1.0": dict(method="sample", n=5, temperature=1.0, top_p=1.0, first="greedy"),
    "beam 5 + sample T=1.0": dict(method="sample", n=5, temperature=1.0, top_p=1.0, first="beam"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    ap.add_argument("--test", default=str(TEST))
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of the test split (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from duilian.evaluate import EvalConfig, evaluate

    rows = {}
    for name in args.settings:
        t = time.perf_counter()
        r = evaluate(args.model, args.test, EvalConfig(limit=args.limit, seed=args.seed, **SETTINGS[name]))
        rows[name] = {"bleu": r["bleu"], "valid": r["form"]["duilian"]["valid"], "pairs": r["pairs"],
                      "variety": r["candidates"]["distinct_2"] if SETTINGS[name]["n"] > 1 else None,
                      "candidates": r["candidates"]["per_upper"], "perplexity": r["perplexity"],
                      "uppers_per_s": r["throughput"]["uppers_per_s"], "examples": r["examples"][:3]}
        print(f"{name}: {json.dumps({k: v for k, v in rows[name].items() if k != 'examples'}, ensure_ascii=False)}"
              f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    pairs = next(iter(rows.values()))["pairs"]
    print(f"\n{pairs} pairs of {args.test}; model {args.model or 'default'}\n")
    print("| setting | BLEU-1 | BLEU-2 | BLEU-4 | first candidate valid | distinct-2 among the 5 | 上联/s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        b = r["bleu"]
        variety = "—" if r["variety"] is None else f"{r['variety']:.3f}"
        print(f"| {name} | {b['1']:.2f} | {b['2']:.2f} | {b['4']:.2f} | {100 * r['valid']:.1f}% | {variety} | "
              f"{r['uppers_per_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
