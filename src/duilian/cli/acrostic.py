"""`duilian acrostic`: a 嵌字 couplet holding two given characters at one place of its lines (the start by
default: 藏头); the work is duilian.api."""

from __future__ import annotations

import argparse
import json

from .generate import add_decode_options, add_json_option, add_model_options, decode_options, fail, load, write_svg


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("heads", help="two Chinese characters: the first goes in the 上联, the second in the 下联")
    parser.add_argument("--length", type=int, default=7, help="characters per line (default: 7)")
    parser.add_argument("--position", default="1", metavar="K",
                        help="where both characters stand: 1 (鹤顶格, 藏头) to the length, or last (雁足格); "
                             "2 燕颔格, 3 鸢肩格, 4 蜂腰格, 5 鹤膝格, 6 凫胫格 (default: 1)")
    add_model_options(parser)
    add_json_option(parser)
    add_decode_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..text import CoupletInputError

    try:
        c = load(args)
        couplets = c.acrostic(args.heads, length=args.length, n=args.n, position=args.position,
                              **decode_options(args))
        if args.svg and couplets:
            write_svg(args.svg, couplets[0].upper, couplets[0].lower, couplets[0].hengpi)
    except (CoupletInputError, FileNotFoundError, ValueError, OSError) as e:
        return fail("acrostic", e)
    if args.json:
        print(json.dumps({"heads": args.heads, "position": args.position, "couplets": [x.to_dict() for x in couplets]},
                         ensure_ascii=False, indent=2))
    else:
        for x in couplets:
            banners = f"\t横批 {' / '.join(h.text for h in x.hengpi)}" if x.hengpi else ""
            print(f"{x.upper}\t{x.lower}\t{x.score:.3f}{banners}")
    return 0
