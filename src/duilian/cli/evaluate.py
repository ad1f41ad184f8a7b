"""`duilian evaluate`: BLEU, perplexity and form of a model on a test split; the work is duilian.evaluate."""

from __future__ import annotations

import argparse
import sys

from .generate import add_model_options, add_ranking_options, model_kwargs


def register(parser: argparse.ArgumentParser) -> None:
    # what to evaluate
    parser.add_argument("--test", metavar="PATH", required=True,
                        help="test split, in any corpus layout `duilian prepare` reads: a directory with in.txt "
                             "and out.txt (plain, .xz or .gz; characters separated by spaces), a TSV file, or "
                             "UER lines; e.g. ../shared/data/couplet/test")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N pairs (default: all)")
    # decoding
    parser.add_argument("--n", type=int, default=1,
                        help="candidates decoded per 上联, the top one is scored; for beam also the beam width "
                             "(default: 1)")
    parser.add_argument("--method", choices=("beam", "sample", "greedy"), default="beam",
                        help="decoding method; greedy = temperature-0 sampling (default: beam)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B",
                        help="上联 per decoding pass and pairs per scoring pass (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --method sample (default: 0)")
    parser.add_argument("--temperature", type=float, default=1.0, help="for --method sample (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="nucleus mass for --method sample; 1 = off (default: 1.0)")
    parser.add_argument("--first", choices=("sample", "greedy", "beam"), default="sample",
                        help="--method sample: where the first (scored) candidate comes from; beam scores as a "
                             "width-5 beam search, like the API's default (default: sample)")
    parser.add_argument("--allow-upper-chars", action="store_true",
                        help="let the 下联 reuse 上联 characters at other positions (decoding and form checks)")
    add_ranking_options(parser)
    # which model: --model, --device, --int8
    add_model_options(parser)
    # output
    parser.add_argument("--out", metavar="REPORT_DIR", default=None,
                        help="where to write report.json, report.md and hypotheses.txt "
                             "(default: ./eval-<model folder name>/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import lzma

    from ..evaluate import EvalConfig, default_out_dir, evaluate, render_markdown, write_report

    try:
        config = EvalConfig(limit=args.limit, n=args.n, method=args.method, batch_size=args.batch_size,
                            seed=args.seed, temperature=args.temperature, top_p=args.top_p, first=args.first,
                            allow_upper_chars=args.allow_upper_chars, lm_weight=args.lm_weight,
                            reverse_weight=args.reverse_weight, **model_kwargs(args))
        report = evaluate(args.model, args.test, config, progress=not args.quiet)
    # Bad settings and corpus errors are ValueErrors; a missing file is an OSError, a broken .gz an
    # OSError or EOFError, a broken .xz an LZMAError (as in `duilian prepare`).
    except (ValueError, OSError, EOFError, lzma.LZMAError) as e:
        print(f"duilian evaluate: {e}", file=sys.stderr)
        return 2
    out_dir = write_report(report, args.out or default_out_dir(args.model))
    print(render_markdown(report))
    print(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.md'}")
    return 0
