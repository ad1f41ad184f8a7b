"""`duilian convert`: GPT-2 weights between UER-py checkpoints (.bin/.pt) and HuggingFace directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, choices=("hf", "uer"),
                        help="hf: a UER checkpoint file -> a HuggingFace directory; "
                             "uer: a HuggingFace directory -> a UER .bin state dict")
    parser.add_argument("--input", required=True, metavar="PATH", help="the UER file or HuggingFace directory")
    parser.add_argument("--output", required=True, metavar="PATH", help="the HuggingFace directory or UER file")
    parser.add_argument("--layout", choices=("old", "new"), default=None,
                        help="UER tensor names: old = the seed's era (embedding.word_embedding...), "
                             "new = UER-py 2023 on (embedding.word.embedding...). "
                             "Default: detected with --to hf, new with --to uer")
    parser.add_argument("--layers", type=int, default=None, metavar="N",
                        help="transformer layers; checked against the file (default: counted from the names)")
    parser.add_argument("--heads", type=int, default=None, metavar="N",
                        help="attention heads, --to hf only; UER files do not record them. Needed unless "
                             "--config gives them or the model is 768 wide (the seed's: 12 heads)")
    parser.add_argument("--config", default=None, metavar="JSON",
                        help="--to hf only: the UER-py model config the checkpoint was trained with "
                             "(e.g. UER-py's models/gpt2/config.json); its heads_num gives the heads, and "
                             "its hidden_size and layers_num are checked against the checkpoint")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="--to hf only: cast the exported weights (default: float32)")
    parser.add_argument("--vocab", default=None, metavar="FILE",
                        help="--to hf only: the vocab.txt the UER model was trained with (UER files hold none; "
                             "default: the 21,128-token BERT vocabulary, the seed's)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..convert import ConversionError, convert_hf_to_uer, convert_uer_to_hf

    try:
        if args.to == "hf":
            dtype = getattr(torch, args.dtype) if args.dtype else None
            out = convert_uer_to_hf(args.input, args.output, layout=args.layout, layers=args.layers,
                                    heads=args.heads, dtype=dtype, uer_config=args.config, vocab_path=args.vocab)
        else:
            if any(v is not None for v in (args.heads, args.dtype, args.config, args.vocab)):
                raise ConversionError("--heads, --config, --dtype and --vocab apply to --to hf only")
            out = convert_hf_to_uer(args.input, args.output, layout=args.layout or "new", layers=args.layers)
    except (ConversionError, FileNotFoundError, ValueError) as err:
        print(f"duilian convert: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    if args.to == "uer":  # a UER file holds no vocabulary: UER-py needs the model's own
        print(f"UER-py reads it with --vocab_path {Path(args.input) / 'vocab.txt'}")
    return 0
