"""Training throughput on CPU: real (non-pad) tokens per second with the seed's fixed padding
(`--pad fixed`, every row 64 tokens) against `--pad batch --bucket`, in the same process, per preset.

    python benchmarks/bench_train.py                   # tiny and mini, 12 steps of 64 lines each
    python benchmarks/bench_train.py --presets mini --steps 20 --pairs 50000

Lines come from the start of the shared training corpus (../shared/data/couplet/train) if it is
there, else from the test fixture. Each run's first half is warm-up; tokens/s is the second half's.
The ratio is the figure to quote: absolute numbers depend on the (shared) machine.
"""

from __future__ import annotations

import argparse
import itertools
import lzma
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "couplet" / "train"
FIXTURE = ROOT / "tests" / "fixtures" / "couplets"


def read_pairs(n: int) -> list[tuple[str, str]]:
    if (CORPUS / "in.txt.xz").exists():
        opener, base, names = lzma.open, CORPUS, ("in.txt.xz", "out.txt.xz")
    else:
        opener, base, names = open, FIXTURE, ("in.txt", "out.txt")
    with opener(base / names[0], "rt", encoding="utf-8") as fu, opener(base / names[1], "rt", encoding="utf-8") as fl:
        pairs = [(u.replace(" ", "").strip(), l.replace(" ", "").strip()) for u, l in itertools.islice(zip(fu, fl), n)]
    return [(u, l) for u, l in pairs if u and l and len(u) + len(l) + 3 <= 64]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "mini"])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    ap.add_argument("--batch-size", type=int, default=64, help="lines per step (default 64, the seed's)")
    ap.add_argument("--pairs", type=int, default=20_000, help="corpus lines to read (default 20000)")
    args = ap.parse_args()

    from duilian.dataset import write_dataset
    from duilian.tokenizer import default_tokenizer
    from duilian.train import TrainConfig, train

    pairs = read_pairs(args.pairs)
    lengths = [len(u) + len(l) + 3 for u, l in pairs]
    print(f"{len(pairs):,} lines, mean {sum(lengths) / len(lengths):.1f} tokens of 64")
    modes = {"fixed": dict(pad="fixed"), "batch+bucket": dict(pad="batch", bucket=True)}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, {"train": pairs}, default_tokenizer(), seq_len=64)
        print(f"{'preset':<8}{'padding':<14}{'real tok/s':>12}{'s/step':>9}")
        for preset in args.presets:
            tps = {}
            for name, kw in modes.items():
                cfg = TrainConfig(data=str(data), out=f"{tmp}/{preset}-{name}", preset=preset, steps=args.steps,
                                  batch_size=args.batch_size, report_every=args.steps // 2, eval_every=0,
                                  save_every=10**9, device="cpu", **kw)
                t = time.perf_counter()
                last = train(cfg)
                tps[name] = last["tokens_per_s"]
                print(f"{preset:<8}{name:<14}{tps[name]:>12,.0f}{1 / last['steps_per_s']:>9.2f}"
                      f"   (run {time.perf_counter() - t:.0f} s)", flush=True)
            print(f"{preset:<8}{'ratio':<14}{tps['batch+bucket'] / tps['fixed']:>11.2f}x")


if __name__ == "__main__":
    main()
