"""Does `compose` do what it says? Keyword use, form, variety, and lines for the blind judge.

    python benchmarks/bench_compose.py --model runs/x-hf --pairs data/mix-fwd/val.modern.tsv --n 50 \
        --out runs/judge/compose

1) Real 春联 of the corpus: the validation pairs (never trained on) holding a word of the 春节 occasion's seeds
   (themes / scripts/build_occasions.py), seeded sample of --n.
2) Their words: 1-2 keywords of each, taken as training takes them (duilian.keywords.candidates, the first
   two), so a composed couplet and a real one are about the same words.
3) Compose 5 couplets of the real one's length on those words (occasion 春节), and report:
   - keyword use: the share of composed couplets that carry each given word: the word itself, or a close
     relative (compose.carries: a character whose co-occurrence vector has cosine >= compose.RELATIVE with the
     word's); and the share that hold the word itself;
   - form: the share of composed couplets valid under every rule, and of 上联 ending 仄;
   - variety: distinct-2 among the 5 couplets of each request (both lines), the mean;
   - 横批: the share with 3, and the share repeating a 4-character run of their couplet (must be 0).
4) Writes OUT/lines.tsv (upper = the words; human = the real couplet; ours = the best composed couplet, each as
   上联／下联) for `benchmarks/judge.py make`, and OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--pairs", required=True, help="a TSV of 上联<TAB>下联 the model was not trained on")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from duilian import load, themes
    from duilian.compose import carries
    from duilian.evaluate import distinct
    from duilian.keywords import candidates
    from duilian.rules import OBLIQUE, tone_of

    seeds = json.loads(themes.DATA.read_text(encoding="utf-8"))["occasions"]["春节"]["seeds"]
    pairs = [line.split("\t") for line in Path(args.pairs).read_text(encoding="utf-8").splitlines() if "\t" in line]
    spring = [(u, l) for u, l in pairs if any(s in u + l for s in seeds) and "，" not in u and 5 <= len(u) <= 9]
    sample = random.Random(args.seed).sample(spring, min(args.n, len(spring)))
    c = load(args.model)
    rows, stats = [], {"requests": 0, "couplets": 0, "valid": 0, "upper_oblique": 0, "carried": 0, "exact": 0,
                       "words": 0, "three_hengpi": 0, "hengpi_copies": 0, "variety": []}
    for i, (u, l) in enumerate(sample):
        words = candidates(u, l)[:2] or [u[:2]]
        got = c.compose(words, length=len(u), n=5, occasion="春节", seed=args.seed + i)
        stats["requests"] += 1
        stats["variety"].append(distinct([x.upper + x.lower for x in got], 2) if got else 0.0)
        for x in got:
            stats["couplets"] += 1
            stats["valid"] += x.checks.valid
            stats["upper_oblique"] += tone_of(x.upper[-1]) == OBLIQUE
            stats["words"] += len(words)
            stats["carried"] += sum(carries(w, x.upper + x.lower) for w in words)
            stats["exact"] += sum(w in x.upper + x.lower for w in words)
            stats["three_hengpi"] += len(x.hengpi) == 3
            runs = {line[k:k + 4] for line in (x.upper, x.lower) for k in range(len(line) - 3)}
            stats["hengpi_copies"] += any(h.text in runs for h in x.hengpi)
        best = got[0] if got else None
        rows.append(("、".join(words), f"{u}／{l}", f"{best.upper}／{best.lower}" if best else ""))
    n = max(stats["couplets"], 1)
    report = {"requests": stats["requests"], "couplets": stats["couplets"],
              "keyword_use": stats["carried"] / max(stats["words"], 1),
              "keyword_exact": stats["exact"] / max(stats["words"], 1),
              "valid": stats["valid"] / n, "upper_ends_oblique": stats["upper_oblique"] / n,
              "distinct2_among_5": sum(stats["variety"]) / max(len(stats["variety"]), 1),
              "three_hengpi": stats["three_hengpi"] / n, "hengpi_repeating_the_couplet": stats["hengpi_copies"] / n,
              "examples": rows[:10]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "lines.tsv").write_text("upper\thuman\tours\n" + "".join("\t".join(r) + "\n" for r in rows),
                                   encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=1))


if __name__ == "__main__":
    main()
