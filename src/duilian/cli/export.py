"""`duilian export`: a training checkpoint (or run directory) -> a HuggingFace model directory."""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

DTYPES = ("float32", "float16", "bfloat16")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a training checkpoint file, a run directory (its final/latest checkpoint is used) "
                             "or a HuggingFace model directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="the model directory to write (created)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="cast the weights; float16 halves the size (default: float32)")
    parser.add_argument("--max-shard-size", default=None, metavar="SIZE",
                        help='split the weights into safetensors files of at most SIZE, e.g. "50MB" '
                             "(default: one file)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import export_model, model_from_path
    from ..model import count_parameters

    try:
        model, tokenizer = model_from_path(args.checkpoint)
    except FileNotFoundError as err:
        print(f"duilian export: {err}", file=sys.stderr)
        return 2
    except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError) as err:
        # A file that is not a duilian checkpoint, or one that needs code to unpickle (refused).
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"duilian export: cannot read a model from {args.checkpoint}: {type(err).__name__}: {reason}",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = export_model(model, args.out, dtype=dtype, max_shard_size=args.max_shard_size, tokenizer=tokenizer)
    _keep_pair_table(Path(args.checkpoint), out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out} ({count_parameters(model):,} parameters, {size / 2**20:.1f} MiB of weights)")
    return 0


def _keep_pair_table(source: Path, out: Path) -> None:
    """A model directory re-exported (to fp16, in shards) keeps its aligned-pair table: config.json names it
    ("duilian" → "pairs"), and without the file the ranking would silently lose the term."""
    import json
    import shutil

    if not (source / "config.json").is_file():
        return
    name = ((json.loads((source / "config.json").read_text(encoding="utf-8")).get("duilian") or {}).get("pairs")
            or {}).get("file")
    if name and (source / name).is_file() and (source / name).resolve() != (out / name).resolve():
        shutil.copyfile(source / name, out / name)
