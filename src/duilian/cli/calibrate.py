"""`duilian calibrate`: measure which characters a model over-writes against a corpus, and store the penalties in
its config.json (the work is duilian.calibrate). The flags besides --model and the corpora are generated from
calibrate.CalibrationConfig."""

from __future__ import annotations

import argparse
import sys

from . import add_config_flags, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    from ..calibrate import CalibrationConfig

    parser.add_argument("corpus", nargs="+", metavar="CORPUS",
                        help="the corpora the model was trained on, in any layout `duilian prepare` reads (a "
                             "directory with in.txt and out.txt, a TSV file, UER lines); their 上联 are decoded "
                             "and their 下联 are what people write")
    parser.add_argument("--model", metavar="DIR", required=True,
                        help="the model directory (a `duilian export`): its config.json gets the table")
    add_config_flags(parser, CalibrationConfig)
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")


def run(args: argparse.Namespace) -> int:
    import lzma

    from .. import load
    from ..calibrate import CalibrationConfig, calibrate, write_calibration
    from ..evaluate import read_pairs

    try:
        config = config_from_args(CalibrationConfig, args)
        pairs = []
        for corpus in args.corpus:
            found, skipped = read_pairs(corpus)
            pairs += found
            print(f"{corpus}: {len(found):,} pairs" + (f" ({', '.join(f'{n:,} {why}' for why, n in skipped.items())}"
                                                      f" skipped)" if skipped else ""))
        section = calibrate(load(args.model), pairs, config)
    except (ValueError, OSError, EOFError, lzma.LZMAError) as e:
        print(f"duilian calibrate: {e}", file=sys.stderr)
        return 2
    table = section["penalty"]
    top = ", ".join(f"{ch} {v:.2f}" for ch, v in list(table.items())[:20])
    print(f"{len(table):,} characters over-written in {section['lines']:,} first candidates; most: {top}")
    if args.dry_run:
        return 0
    path = write_calibration(args.model, section)
    print(f"wrote the table and weight {section['weight']:g} into {path}")
    return 0
