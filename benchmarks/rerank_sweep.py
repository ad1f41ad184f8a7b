"""Choose the ranking's weights: rank 下联 by score + λ · log P(上联 | 下联) and the other terms; see what each does.

One decoding pass per split gives every candidate's forward score and its reverse score (the same model
reading the line backward, [CLS][REV]下联-上联[SEP]); each λ then only re-sorts them. Per split and λ: BLEU-1/2/4
of the first candidate, distinct-2 over all first candidates, the genericness of evaluate.genericness (share of
first candidates among the 1% most frequent), and how often the first candidate changed. The speed cost is
measured in the same run: the default decoding without reranking against the reranked one (a larger pool, the
beam's alternatives kept, plus one backward scoring pass).

    python benchmarks/rerank_sweep.py --model runs/x-hf --split modern=data/mix-both/val-modern.tsv \
        --split classical=data/classical/dev.tsv --limit 1000 --lambdas 0 0.25 0.5 1 1.5 2

A split is any test layout duilian reads (a directory of in.txt/out.txt, a TSV file). Writes --out as JSON
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def read_split(spec: str, limit: int) -> tuple[str, list[str], list[str]]:
    """NAME=PATH -> (name, its first `limit` 上联, their human 下联)."""
    from duilian.evaluate import read_pairs

    name, _, path = spec.partition("=")
    pairs, _ = read_pairs(path, limit)
    return name, [u for u, _ in pairs], [lower for _, lower in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0, 0.25, 0.5, 1.0, 1.5, 2.0])
    ap.add_argument("--pos-weights", type=float, nargs="+", default=[0.0],
                    help="weights μ of the part-of-speech parallelism (duilian.pos) added to the ranking")
    ap.add_argument("--lm-weights", type=float, nargs="+", default=[0.0],
                    help="weights β of the anti-LM term: minus β × the mean log-prob of the 下联 read as a line from "
                         "[CLS] (how likely the line is whatever the 上联: generic lines are likely)")
    ap.add_argument("--pair-weights", type=float, nargs="+", default=[0.0],
                    help="weights of the model's aligned-pair table (duilian.pairs): plus W × the 下联's pair score "
                         "(a model without a table has none: W does nothing)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from duilian import load, pos
    from duilian.evaluate import bleu, distinct, genericness

    c = load(args.model)
    results = {}
    for spec in args.split:
        name, uppers, refs = read_split(spec, args.limit)
        batches = [range(i, min(i + args.batch_size, len(uppers))) for i in range(0, len(uppers), args.batch_size)]

        def run(weight: float) -> tuple[list, float]:
            start, got = time.perf_counter(), []
            for b in batches:
                got += c.complete_batch([uppers[i] for i in b], n=5, seed=args.seed, reverse_weight=weight,
                                        lm_weight=weight, pair_weight=weight, whole_pool=weight > 0)
            return got, time.perf_counter() - start

        plain, t_plain = run(0.0)
        pool, t_pool = run(1.0)  # score = base + 1.0 * reverse - 1.0 * prior + 1.0 * pairs: base is recovered below
        par = (lambda u, t: pos.parallelism(u, t) or 0.0) if any(args.pos_weights) else (lambda u, t: 0.0)
        # the pool holds the beam's 5 lines and the samples; a forward-only model has no reverse score (None):
        # λ does nothing there
        base = [[(cand.text, cand.score - (cand.reverse or 0.0) + cand.prior - (cand.pairs or 0.0),
                  cand.reverse or 0.0, par(u, cand.text), cand.prior, cand.pairs or 0.0) for cand in cands]
                for u, cands in zip(uppers, pool)]
        rows = {}
        grid = [(lam, mu, beta, w) for w in args.pair_weights for beta in args.lm_weights for mu in args.pos_weights
                for lam in args.lambdas]
        for lam, mu, beta, w in grid:
            firsts = [max(cands, key=lambda x: x[1] + lam * x[2] + mu * x[3] - beta * x[4] + w * x[5])[0]
                      if cands else "" for cands in base]
            rows[(lam, mu, beta, w)] = {"bleu": {n: bleu(firsts, refs, n) for n in (1, 2, 4)},
                         "distinct_2": distinct(firsts, 2),
                         "generic_top_share": genericness(firsts)["top_share"],
                         "generic_tail_share": genericness(firsts)["tail_share"],
                         "changed": sum(f != (p[0].text if p else "") for f, p in zip(firsts, plain)) / len(firsts)}
        plain_firsts = [p[0].text if p else "" for p in plain]
        results[name] = {"pairs": len(uppers), "seconds_plain": t_plain, "seconds_reranked": t_pool,
                         "plain": {"bleu": {n: bleu(plain_firsts, refs, n) for n in (1, 2, 4)},
                                   "distinct_2": distinct(plain_firsts, 2),
                                   "generic_top_share": genericness(plain_firsts)["top_share"]},
                         "rankings": [{"lambda": lam, "pos_weight": mu, "lm_weight": beta, "pair_weight": w, **r}
                                      for (lam, mu, beta, w), r in rows.items()]}
        print(f"\n{name}: {len(uppers)} pairs; default decoding {t_plain:.0f} s, reranked pool {t_pool:.0f} s "
              f"({t_pool / t_plain:.2f}x)")
        print("| λ | μ (POS) | β (anti-LM) | W (pairs) | BLEU-1 | BLEU-2 | BLEU-4 | distinct-2 (firsts) | "
              "firsts among the 1% most frequent | endings among the 1% most frequent | first changed |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        p = results[name]["plain"]
        print(f"| no rerank | | | | {p['bleu'][1]:.2f} | {p['bleu'][2]:.2f} | {p['bleu'][4]:.2f} | "
              f"{p['distinct_2']:.3f} | {p['generic_top_share']:.1%} | | |")
        for (lam, mu, beta, w), r in rows.items():
            print(f"| {lam:g} | {mu:g} | {beta:g} | {w:g} | {r['bleu'][1]:.2f} | {r['bleu'][2]:.2f} | "
                  f"{r['bleu'][4]:.2f} | "
                  f"{r['distinct_2']:.3f} | {r['generic_top_share']:.1%} | {r['generic_tail_share']:.1%} | "
                  f"{r['changed']:.0%} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
