"""`duilian pairs`: count the aligned character pairs of a prepared dataset's training couplets and store the table
beside a model (the work is duilian.pairs). The flags besides --data and --model are generated from
pairs.PairsConfig."""

from __future__ import annotations

import argparse
import sys

from . import add_config_flags, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    from ..pairs import PairsConfig

    parser.add_argument("--data", metavar="DIR", required=True,
                        help="a prepared dataset (`duilian prepare`): its training split is counted, so no "
                             "validation, test or held-out pair is in the table")
    parser.add_argument("--model", metavar="DIR", required=True,
                        help="the model directory (a `duilian export` trained on that dataset): it gets pairs.npz "
                             "and its config.json the weights")
    add_config_flags(parser, PairsConfig)
    parser.add_argument("--dry-run", action="store_true", help="count and print, write nothing")


def run(args: argparse.Namespace) -> int:
    from ..dataset import read_tokenizer
    from ..pairs import PairsConfig, PairTable, count_dataset, write
    from ..tokenizer import Tokenizer

    try:
        config = config_from_args(PairsConfig, args)
        data_vocab, model_vocab = read_tokenizer(args.data), Tokenizer.from_dir(args.model)
        if data_vocab.tokens != model_vocab.tokens:
            raise ValueError(f"{args.model} does not read {args.data}'s vocabulary: the table's ids would mean other "
                             f"characters (train the model on that dataset, or count the one it was trained on)")
        counts, skipped = count_dataset(args.data)
        table = PairTable.from_counts(counts, len(model_vocab), config)
    except (ValueError, OSError) as e:
        print(f"duilian pairs: {e}", file=sys.stderr)
        return 2
    print(f"{counts.couplets:,} couplets counted" + (f" ({', '.join(f'{n:,} {why}' for why, n in skipped.items())}"
                                                    f" skipped)" if skipped else ""))
    print(f"{len(table.keys):,} character pairs and {len(table.bigram_keys):,} bigram pairs seen at least "
          f"{config.min_count} times (of {len(counts.pairs):,} and {len(counts.bigram_pairs):,})")
    if args.dry_run:
        return 0
    path = write(args.model, table, config)
    print(f"wrote {path} and the weights {config.weight:g} / bigram {config.bigram:g} into its config.json")
    return 0
