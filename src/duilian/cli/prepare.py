"""`duilian prepare`: read a couplet corpus, clean it and write a tokenized dataset (duilian.corpus)."""

from __future__ import annotations

import argparse
import sys


def register(parser: argparse.ArgumentParser) -> None:
    # what to read
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="the corpora, one source each, optionally named NAME=PATH: a directory with in.txt and out.txt "
        "(plain, .xz or .gz) or one file of 上联<TAB>下联 (tsv) or 上联-下联 (uer) lines; two paths named in.* "
        "and out.* are one source",
    )
    parser.add_argument(
        "--licence", action="append", default=[], metavar="NAME=LICENCE",
        help="a source's licence, for the summary and the model card (default: the 'licence' of a source.json "
        "beside the source, else unknown); repeat per source",
    )
    parser.add_argument(
        "--heldout", metavar="FILE", default=None,
        help="a held-out list (one sha256 key a line, duilian.heldout): pairs whose 上联 or 下联 it lists are "
        "dropped and counted per source, e.g. ../shared/data/heldout/lines.sha256 (default: none)",
    )
    parser.add_argument(
        "--directions", choices=("forward", "both"), default="forward",
        help="both: every training pair also backward, [CLS][REV]下联-上联[SEP], so the model can score "
        "P(上联 | 下联) for reranking (default forward: the seed's lines only)",
    )
    parser.add_argument(
        "--keywords", type=float, default=0.0, metavar="SHARE",
        help="share of training pairs that also get a line with 1-3 keywords before the 上联 (jieba TF-IDF; "
        "some related words instead), which `duilian compose` needs (default 0)",
    )
    parser.add_argument(
        "--format", default="auto", choices=["auto", "parallel", "tsv", "uer"],
        help="layout of INPUT and --val (default auto: a directory or two files are parallel, "
        "one file is tsv or uer by its first line)",
    )
    parser.add_argument(
        "--val", nargs="+", metavar="VAL", default=None,
        help="a separate validation corpus, given like INPUT and after it (default: split one off INPUT, "
        "see --val-fraction); its 上联 are removed from the training pairs",
    )
    # what to write
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write (created if missing)")
    parser.add_argument(
        "--seq-len", type=int, default=64,
        help="longest training line in tokens, [CLS] 上联 - 下联 [SEP] = 2*chars+3; longer pairs are rejected "
        "(default 64)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.01,
        help="share of pairs split off for validation when --val is not given; 0 = none (default 0.01)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument(
        "--vocab", choices=("corpus", "bert"), default="corpus",
        help="corpus: a vocabulary of the training split's own characters, written as vocab.txt (a model "
        "with a quarter of BERT's rows for the public corpus); bert: the seed's 21,128-token vocabulary, "
        "pairs with other characters rejected (default corpus)",
    )
    parser.add_argument(
        "--min-count", type=int, default=3, metavar="N",
        help="with --vocab corpus, characters seen fewer than N times become [UNK] (default 3)",
    )
    # how
    parser.add_argument(
        "--processes", type=int, default=1,
        help="worker processes for cleaning; the output is the same for any number (default 1)",
    )


def _licences(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, licence = item.partition("=")
        if not sep or not name or not licence:
            raise SystemExit(f"duilian prepare: --licence takes NAME=LICENCE, not {item!r}")
        out[name] = licence
    return out


def run(args: argparse.Namespace) -> int:
    import lzma

    from duilian.corpus import PrepareConfig, prepare

    print(f"reading {' '.join(args.inputs)} ...", file=sys.stderr)
    try:
        config = PrepareConfig(
            inputs=args.inputs, out_dir=args.out, val=args.val, seq_len=args.seq_len,
            val_fraction=args.val_fraction, seed=args.seed, processes=args.processes, format=args.format,
            vocab=args.vocab, min_count=args.min_count, licences=_licences(args.licence), heldout=args.heldout,
            directions=args.directions, keywords=args.keywords,
        )
        summary = prepare(config)
    # CorpusError and bad settings are ValueErrors; a missing file is an OSError, a broken .gz an
    # OSError or EOFError, a broken .xz an LZMAError.
    except (ValueError, OSError, EOFError, lzma.LZMAError) as e:
        print(f"duilian prepare: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    print(f"wrote {args.out}")
    return 0
