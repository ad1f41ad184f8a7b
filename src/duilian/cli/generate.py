"""`duilian generate`: 下联 for a 上联, or for a file of them; the work is duilian.api."""

from __future__ import annotations

import argparse
import json
import sys


def register(parser: argparse.ArgumentParser) -> None:
    # what to complete
    parser.add_argument("upper", nargs="?", help="the 上联, e.g. 丹枫江冷人初去 (or use --input)")
    parser.add_argument("--input", metavar="FILE", help="a file with one 上联 per line (spaces are ignored)")
    parser.add_argument("--output", metavar="FILE",
                        help="with --input: where to write the results (default: standard output)")
    parser.add_argument("--format", choices=("jsonl", "tsv"), default=None,
                        help="with --input: JSON lines, or TSV (上联 then the candidates); "
                             "default: tsv if --output ends in .tsv, else jsonl")
    parser.add_argument("--batch-size", type=int, default=256, metavar="B",
                        help="with --input: 上联 per decoding call; 上联 of equal length in a call are decoded "
                             "together (default: 256)")
    add_model_options(parser)
    add_json_option(parser)
    add_decode_options(parser)
    add_ranking_options(parser)
    parser.add_argument("--allow-upper-chars", action="store_true",
                        help="let the 下联 use the 上联's characters (never at the same position)")
    parser.add_argument("--free-ending", action="store_true",
                        help="do not require a 平 ending when the 上联 ends 仄")


def add_ranking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lm-weight", type=float, default=None, metavar="BETA",
                        help="anti-LM weight β: rank by score - β x the 下联's log-prob read with no 上联, so a line "
                             "likely whatever the 上联 (万象新) counts less; 0 = off (default: the model's own, "
                             "config.json)")
    parser.add_argument("--pair-weight", type=float, default=None, metavar="W",
                        help="weight of the model's aligned-pair table: rank by score + W x what the 下联's pairs "
                             "against the 上联 are worth (天 against 地, as often as people write them); 0 = off "
                             "(default: the model's own, config.json; 0 without a table)")
    parser.add_argument("--calibration-weight", type=float, default=None, metavar="W",
                        help="weight of the model's calibration: each character the model writes far more often "
                             "than people do (宏, 谐) costs W x its penalty in the search; 0 = off (default: the "
                             "model's own, config.json; 0 without a table)")
    parser.add_argument("--reverse-weight", type=float, default=None, metavar="LAMBDA",
                        help="noisy-channel weight λ: rank by score + λ x log P(上联 | 下联), for a model trained "
                             "with --directions both; 0 = off (default: the model's own)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device and --int8: which model, where, with which weights (see `model_kwargs`). Shared by
    generate, acrostic, evaluate and serve."""
    parser.add_argument("--model", metavar="DIR_OR_HUB_ID", default=None,
                        help="a `duilian export` or HuggingFace GPT-2 directory, or a Hugging Face Hub id such as "
                             "uer/gpt2-chinese-couplet (downloaded into huggingface_hub's cache, read from it "
                             "offline); default: the embedded model")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)r)")
    parser.add_argument("--int8", action="store_true",
                        help="decode with int8 weights: several times faster on a CPU, log-probs slightly off "
                             "(CPU only; default: the model's own fp32 weights)")


def model_kwargs(args: argparse.Namespace) -> dict:
    """`duilian.load` keywords (and the matching config fields) for the flags of `add_model_options`."""
    return {"device": args.device, "quantize": "int8" if args.int8 else None}


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_decode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=5, help="distinct candidates wanted (default: 5)")
    parser.add_argument("--method", choices=("sample", "beam"), default="sample",
                        help="sampling or beam search (default: sample)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for sampling: the same seed gives the same output (default: none)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature; 0 = greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest characters; 0 = all")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default: 1.0)")
    parser.add_argument("--first", choices=("beam", "greedy", "sample"), default="beam",
                        help="with sampling, where the first candidate comes from: beam (the likeliest line a "
                             "width-5 beam search finds; the others are sampled), greedy (the greedy line is among "
                             "the candidates, ranked by score), or sample (default: beam)")
    parser.add_argument("--script", choices=("auto", "simplified", "traditional"), default="auto",
                        help="the answer's script; auto follows the input: a traditional 上联 gets a traditional "
                             "下联 (default: auto)")
    parser.add_argument("--hengpi", action="store_true",
                        help="also suggest 横批 (4-character banners) for each couplet, best first")
    parser.add_argument("--svg", metavar="FILE",
                        help="draw the best couplet as it hangs (上联 right, 下联 left, 横批 above with --hengpi) "
                             "into an SVG file")


def decode_options(args: argparse.Namespace) -> dict:
    from ..api import HENGPI_OFFERED

    return {"method": args.method, "seed": args.seed, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "first": args.first, "script": args.script,
            "hengpi": HENGPI_OFFERED if args.hengpi else 0}


def write_svg(path: str, upper: str, lower: str, hengpi) -> None:
    """The couplet as it hangs (duilian.hanging: the same picture as the web page's)."""
    from ..hanging import couplet_svg

    with open(path, "w", encoding="utf-8") as f:
        f.write(couplet_svg(upper, lower, hengpi[0].text if hengpi else None))


def fail(command: str, error: Exception) -> int:
    """One line on standard error and exit code 2, for anything the user can fix."""
    print(f"duilian {command}: {error}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..text import CoupletInputError

    if (args.upper is None) == (args.input is None):
        return fail("generate", ValueError("give either a 上联 or --input FILE"))
    if args.output and not args.input:
        return fail("generate", ValueError("--output goes with --input"))
    if args.svg and args.input:
        return fail("generate", ValueError("--svg draws one couplet: give a 上联, not --input"))
    try:
        c = load(args)
        options = {**decode_options(args), "allow_upper_chars": args.allow_upper_chars,
                   "lm_weight": args.lm_weight, "reverse_weight": args.reverse_weight,
                   "calibration_weight": args.calibration_weight, "pair_weight": args.pair_weight,
                   "require_level_ending": not args.free_ending}
        if args.input:
            return _run_file(c, args, options)
        line = c.read(args.upper, args.script)
        candidates = c.complete(args.upper, n=args.n, **options)
        if args.svg and candidates:
            write_svg(args.svg, line.shown, candidates[0].text, candidates[0].hengpi)
    except (CoupletInputError, FileNotFoundError, ValueError, OSError) as e:
        return fail("generate", e)
    if args.json:
        print(json.dumps({"upper": line.shown, "script": line.script, "unknown": list(line.unknown),
                          "candidates": [x.to_dict() for x in candidates]}, ensure_ascii=False, indent=2))
    else:
        if line.unknown:
            print(f"(the model does not know {''.join(line.unknown)}: read as [UNK])", file=sys.stderr)
        for x in candidates:
            mark = "" if x.checks.valid else "  (form relaxed)"
            banners = f"\t横批 {' / '.join(h.text for h in x.hengpi)}" if x.hengpi else ""
            print(f"{x.text}\t{x.score:.3f}{mark}{banners}")
    return 0


def load(args):
    """The model for --model/--device (read without transformers: no progress bar, a fast start)."""
    from .. import api

    return api.load(args.model, **model_kwargs(args))


def _run_file(c, args, options) -> int:
    from tqdm import tqdm

    from ..text import CoupletInputError

    fmt = args.format or ("tsv" if (args.output or "").endswith(".tsv") else "jsonl")
    with open(args.input, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    # Check every line first: a bad line is reported and skipped, the rest are still written.
    good, skipped = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            good.append((number, c.clean(line)))
        except CoupletInputError as e:
            skipped += 1
            print(f"duilian generate: {args.input}:{number}: skipped: {e}", file=sys.stderr)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        with tqdm(total=len(good), unit="上联", disable=args.output is None, file=sys.stderr) as bar:
            for i in range(0, len(good), args.batch_size):
                batch = good[i:i + args.batch_size]
                results = c.complete_batch([u for _, u in batch], n=args.n, **options)
                for (number, upper), cands in zip(batch, results):
                    if fmt == "tsv":
                        out.write("\t".join([upper, *(x.text for x in cands)]) + "\n")
                    else:
                        record = {"line": number, "upper": upper, "candidates": [x.to_dict() for x in cands]}
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(len(batch))
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"duilian generate: wrote {len(good)} 上联" + (f" to {args.output}" if args.output else "")
          + (f"; skipped {skipped} bad line(s)" if skipped else ""), file=sys.stderr)
    return 0
