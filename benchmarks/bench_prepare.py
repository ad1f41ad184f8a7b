"""How fast `duilian prepare` turns the full training corpus into a dataset, with 1 and N processes.

    python benchmarks/bench_prepare.py                       # ../shared/data/couplet/train, processes 1 and 2
    python benchmarks/bench_prepare.py --processes 1 2 4 --data DIR

Prints, for each process count, the wall seconds and pairs read per second, next to the time it
takes only to decompress and iterate the corpus lines (the floor any reader pays, measured in the
same run, so the ratio means something on a busy machine). Also checks that every process count
wrote the same bytes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from duilian.corpus import PrepareConfig, open_text, prepare, resolve_source

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "couplet" / "train"


def read_only_seconds(data: str) -> tuple[float, int]:
    """Decompress and iterate both files, doing nothing with the lines."""
    start = time.perf_counter()
    n = 0
    for path in resolve_source([data]).paths:
        with open_text(path) as f:
            n = sum(1 for _ in f)
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="corpus directory or file (default: the shared training corpus)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to time (default 1 2)")
    args = parser.parse_args()

    floor, lines = read_only_seconds(args.data)
    print(f"corpus {args.data}: {lines:,} lines; decompress + iterate only: {floor:.1f} s")
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            out = Path(tmp) / f"p{n}"
            start = time.perf_counter()
            summary = prepare(PrepareConfig([args.data], str(out), processes=n))
            wall = time.perf_counter() - start
            rate = summary.sources[0].lines / wall
            print(
                f"processes {n}: {wall:6.1f} s wall, {rate:,.0f} pairs/s, {wall / floor:.1f}x the read-only time; "
                f"{summary.train_pairs:,} train + {summary.val_pairs:,} val pairs"
            )
            outputs[n] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    same = all(o == outputs[args.processes[0]] for o in outputs.values())
    print(f"identical output for processes {args.processes}: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
