"""Minimum Bayes risk (MBR) ranking: does "the line the model's own samples agree with" make a better first 下联?

The pool per 上联 is the default decoding's: the 5 lines of the beam search and `--samples` samples at
temperature 1. Each pool line gets its usual score (log-prob, the tone rule, minus β × its anti-LM prior) plus
α × its expected overlap with the samples: the mean over the other samples of the character n-gram precision
(n = 1..4, punctuation left out) of the line against that sample. The samples stand in for what the model
expects, so a line that shares much with them is its consensus; α large is pure MBR. Per split, α and β:
BLEU-1/2/4 of the first candidate, distinct-2 over all first candidates and evaluate.genericness.

    python benchmarks/mbr_sweep.py --model src/duilian/models/default --split modern=data/mix-both/val.modern.tsv \
        --split classical=data/classical/dev.tsv --limit 800 --samples 12

Decoding runs once per split (seeded per line); every (α, β) only re-sorts the pool. The speed cost is the
decoding time with --samples against the default's 4 samples, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

PUNCT = set("，。、；：？！,.;:?!")


def grams(text: str, n: int) -> Counter:
    chars = [ch for ch in text if ch not in PUNCT]
    return Counter(tuple(chars[i:i + n]) for i in range(len(chars) - n + 1))


def overlap(hyp: str, ref: str, orders: int = 4) -> float:
    """Mean over n = 1..orders of the share of hyp's character n-grams found in ref (clipped counts)."""
    total = 0.0
    for n in range(1, orders + 1):
        h = grams(hyp, n)
        if h:
            total += sum((h & grams(ref, n)).values()) / sum(h.values())
    return total / orders


def decode_pools(c, uppers: list[str], samples: int, batch: int) -> tuple[list[list[tuple]], float]:
    """Per 上联: (text, score, prior, is_beam) for the 5 beams and the samples; and the seconds it took."""
    from duilian import decode
    from duilian.api import Options

    opts = Options(n=samples + 1)
    search = replace(opts.search(), leads=decode.LEAD_BEAM)  # the beam's 5 lines join the pool
    pools, start = [], time.perf_counter()
    for i in range(0, len(uppers), batch):
        lines = [c.read(u) for u in uppers[i:i + batch]]
        specs = [replace(c.lower_spec(line, opts), seed=i + j) for j, line in enumerate(lines)]
        hyps = decode.generate(c.net, c.vocab, specs, search)
        for hs, priors in zip(hyps, c._line_prior(hyps)):
            pools.append([(c.tokenizer.decode(h.tokens), h.score, p, h.beam) for h, p in zip(hs, priors)])
    return pools, time.perf_counter() - start


def first(pool: list[tuple], alpha: float, beta: float) -> str:
    if not pool:
        return ""
    samples = [p for p in pool if not p[3]]

    def value(p: tuple) -> float:
        refs = [s for s in samples if s is not p]
        agree = sum(overlap(p[0], s[0]) for s in refs) / len(refs) if refs else 0.0
        return p[1] - beta * p[2] + alpha * agree

    return max(pool, key=value)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--limit", type=int, default=800)
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0, 1, 4, 100])
    ap.add_argument("--lm-weights", type=float, nargs="+", default=[0, 0.2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from rerank_sweep import read_split  # benchmarks/rerank_sweep.py (scripts run from benchmarks/)

    from duilian import load
    from duilian.evaluate import bleu, distinct, genericness

    c = load(args.model)
    results = {}
    for spec in args.split:
        name, uppers, refs = read_split(spec, args.limit)
        _, t_default = decode_pools(c, uppers, 4, args.batch_size)
        pools, t_pool = decode_pools(c, uppers, args.samples, args.batch_size)
        rows = []
        for beta in args.lm_weights:
            for alpha in args.alphas:
                firsts = [first(p, alpha, beta) for p in pools]
                rows.append({"alpha": alpha, "lm_weight": beta, "bleu": {n: bleu(firsts, refs, n) for n in (1, 2, 4)},
                             "distinct_2": distinct(firsts, 2), **{k: genericness(firsts)[k]
                                                                    for k in ("top_share", "tail_share")}})
        results[name] = {"pairs": len(uppers), "seconds_4_samples": t_default, "seconds_pool": t_pool, "rows": rows}
        print(f"\n{name}: {len(uppers)} pairs; {args.samples} samples {t_pool:.0f} s against 4 samples "
              f"{t_default:.0f} s ({t_pool / t_default:.2f}x)")
        print("| α (MBR) | β (anti-LM) | BLEU-1 | BLEU-2 | BLEU-4 | distinct-2 (firsts) | firsts among the 1% most "
              "frequent | endings among the 1% most frequent |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['alpha']:g} | {r['lm_weight']:g} | {r['bleu'][1]:.2f} | {r['bleu'][2]:.2f} | "
                  f"{r['bleu'][4]:.2f} | {r['distinct_2']:.3f} | {r['top_share']:.1%} | {r['tail_share']:.1%} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
