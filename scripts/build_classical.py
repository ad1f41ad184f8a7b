"""Build a classical couplet corpus (律诗/排律 couplets, 声律启蒙 pairs) from a chinese-poetry checkout.

    OMP_NUM_THREADS=1 python scripts/build_classical.py --poetry /work/corpora/chinese-poetry \
        --heldout ../shared/data/heldout/lines.sha256 --test ../shared/data/couplet/test --out data/classical

Writes train.tsv, dev.tsv (上联<TAB>下联, simplified), dev.meta.tsv (source, form, poem of each dev pair),
summary.json and source.json; the same bytes on every run. duilian.classical says what is extracted and why.
"""

from __future__ import annotations

import argparse
import sys
import time

from duilian.classical import DROPS, ClassicalConfig, ClassicalError, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # what to read
    parser.add_argument("--poetry", required=True, help="a chinese-poetry checkout (全唐诗/ and 蒙学/)")
    parser.add_argument("--heldout", default=None,
                        help="the shared held-out list (lines.sha256); pairs with a listed line are dropped "
                        "(default: none, and summary.json says so)")
    parser.add_argument("--test", default=None,
                        help="the public test split (a directory with in.txt, or in.txt); pairs whose 上联 is "
                        "one of its 上联 are dropped (default: none)")
    # what to write
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--dev-fraction", type=float, default=ClassicalConfig.dev_fraction,
                        help="share of 全唐诗/全宋诗 poems, by seeded hash, whose couplets go to dev.tsv "
                        f"(default {ClassicalConfig.dev_fraction}: about 2,000 pairs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev split (default 0)")
    parser.add_argument("--min-regulation", type=float, default=ClassicalConfig.min_regulation,
                        help="share of the 近体 tone rules (平水韵) a poem must keep to give pairs; 0 takes 古体 "
                        f"too (default {ClassicalConfig.min_regulation})")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        result = build(ClassicalConfig(poetry=args.poetry, out_dir=args.out, heldout=args.heldout, test=args.test,
                                       dev_fraction=args.dev_fraction, seed=args.seed,
                                       min_regulation=args.min_regulation))
    except (ClassicalError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key, st in result.summary["sources"].items():
        drops = ", ".join(f"{k} {st['dropped'][k]:,}" for k in DROPS if st["dropped"][k])
        print(f"{st['name']} ({key}): {st['poems_read']:,} read, {st['pairs_extracted']:,} pairs extracted; "
              f"dropped: {drops or 'none'}; kept {st['kept']:,} (train {st['train']:,}, dev {st['dev']:,})")
    total = result.summary["total"]
    print(f"total: train {total['train']:,}, dev {total['dev']:,} -> {args.out} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
