"""`duilian compose`: whole couplets (上联, 下联 and 3 横批) about a few words; the work is duilian.compose."""

from __future__ import annotations

import argparse
import json

from .generate import add_decode_options, add_json_option, add_model_options, decode_options, fail, load, write_svg


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="+", help="theme words: a theme, a name, what should be in it (春 福, 平安)")
    parser.add_argument("--length", type=int, default=7, help="characters per line (default: 7)")
    parser.add_argument("--occasion", default=None,
                        help="春节, 婚庆, 寿诞, 开业, 乔迁 or 升学: adds the occasion's words and 横批 (default: none)")
    parser.add_argument("--year", type=int, default=None,
                        help="a year, e.g. 2027: adds its animal (羊) as a theme and favours its 横批 (三羊开泰)")
    add_model_options(parser)
    add_json_option(parser)
    add_decode_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..text import CoupletInputError

    try:
        c = load(args)
        options = {k: v for k, v in decode_options(args).items() if k not in ("hengpi", "first")}
        couplets = c.compose(args.words, length=args.length, n=args.n, occasion=args.occasion, year=args.year,
                             **options)
        if args.svg and couplets:
            write_svg(args.svg, couplets[0].upper, couplets[0].lower, couplets[0].hengpi)
    except (CoupletInputError, FileNotFoundError, ValueError, OSError) as e:
        return fail("compose", e)
    if args.json:
        print(json.dumps({"words": args.words, "occasion": args.occasion, "year": args.year,
                          "couplets": [x.to_dict() for x in couplets]}, ensure_ascii=False, indent=2))
    else:
        for x in couplets:
            print(f"{x.upper}\t{x.lower}\t横批 {' / '.join(h.text for h in x.hengpi)}\t{x.score:.3f}")
    return 0
