"""`duilian evaluate`: BLEU, perplexity and form of a model on a test split; the work is duilian.evaluate.

The decoding flags are generated from evaluate.EvalConfig (cli.add_config_flags): the help text is in each field's
metadata and argparse shows the field's default. --model, --device and --int8 are generate's (add_model_options)."""

from __future__ import annotations

import argparse
import sys

from . import add_config_flags, config_from_args
from .generate import add_model_options, model_kwargs

SET_BY_MODEL_OPTIONS = ("device", "quantize")  # EvalConfig's fields that --device and --int8 set


def register(parser: argparse.ArgumentParser) -> None:
    from ..evaluate import EvalConfig

    # what to evaluate
    parser.add_argument("--test", metavar="PATH", required=True,
                        help="test split, in any corpus layout `duilian prepare` reads: a directory with in.txt "
                             "and out.txt (plain, .xz or .gz; characters separated by spaces), a TSV file, or "
                             "UER lines; e.g. ../shared/data/couplet/test")
    # what to decode and how: one flag per EvalConfig field (its help in the field's metadata)
    add_config_flags(parser, EvalConfig, skip=SET_BY_MODEL_OPTIONS)
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
        config = config_from_args(EvalConfig, args, **model_kwargs(args))
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
