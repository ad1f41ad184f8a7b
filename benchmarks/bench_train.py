"""Training throughput on CPU: real (non-pad) tokens per second, per preset, in the same process:

    fixed          the seed's way: every row padded to 64 tokens, the 21,128-token BERT vocabulary
    batch+bucket   rows of similar length together, padded to the batch's longest (BERT vocabulary)
    corpus vocab   batch+bucket with the corpus's own vocabulary and the trained [UNK] (--unk-frac 0.005)
    corpus+auto    the same with --dtype auto (bf16 autocast where the CPU has native bf16 matmuls, else fp32):
                   what `duilian prepare` + `duilian train --bucket` do now
The first three run in fp32, so each ratio isolates one change.

    python benchmarks/bench_train.py                   # tiny and mini, 12 steps of 64 lines each
    python benchmarks/bench_train.py --presets mini --steps 20 --pairs 50000 --rounds 2

Lines come from the start of the shared training corpus (../shared/data/couplet/train) if it is
there, else from the test fixture. Each run's first half is warm-up; tokens/s is the second half's, the
best of --rounds runs (the modes take turns, so a busy spell on a shared machine hits them alike).
The ratios are the figures to quote: absolute numbers depend on the (shared) machine.
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
    ap.add_argument("--rounds", type=int, default=1, help="runs per mode, taking turns; the best counts (default 1)")
    args = ap.parse_args()

    from collections import Counter

    from duilian.dataset import write_dataset
    from duilian.text import PUNCTUATION
    from duilian.tokenizer import Tokenizer, default_tokenizer
    from duilian.train import TrainConfig, cpu_has_bf16, train

    pairs = read_pairs(args.pairs)
    lengths = [len(u) + len(l) + 3 for u, l in pairs]
    print(f"{len(pairs):,} lines, mean {sum(lengths) / len(lengths):.1f} tokens of 64")
    corpus_vocab = Tokenizer.for_corpus(Counter("".join(u + l for u, l in pairs)), 3, "".join(PUNCTUATION))
    # fp32 for the first three, so that each ratio isolates one change; the last adds --dtype auto.
    modes = {"fixed": ("bert", dict(pad="fixed", unk_frac=0, dtype="fp32")),
             "batch+bucket": ("bert", dict(pad="batch", bucket=True, unk_frac=0, dtype="fp32")),
             "corpus vocab": ("corpus", dict(pad="batch", bucket=True, dtype="fp32")),
             "corpus+auto": ("corpus", dict(pad="batch", bucket=True, dtype="auto"))}
    with tempfile.TemporaryDirectory() as tmp:
        data = {"bert": Path(tmp) / "data-bert", "corpus": Path(tmp) / "data-corpus"}
        write_dataset(data["bert"], {"train": pairs}, default_tokenizer(), seq_len=64)
        write_dataset(data["corpus"], {"train": pairs}, corpus_vocab, seq_len=64, unknown_as_unk=True)
        print(f"vocabularies: BERT {len(default_tokenizer()):,} tokens, corpus {len(corpus_vocab):,}")
        print(f"{'preset':<8}{'mode':<14}{'real tok/s':>12}{'s/step':>9}")
        for preset in args.presets:
            tps: dict[str, float] = {}
            for r in range(args.rounds):
                for name, (vocab, kw) in modes.items():
                    cfg = TrainConfig(data=str(data[vocab]), out=f"{tmp}/{preset}-{name}-{r}", preset=preset,
                                      steps=args.steps, batch_size=args.batch_size, report_every=args.steps // 2,
                                      eval_every=0, save_every=10**9, device="cpu", **kw)
                    t = time.perf_counter()
                    last = train(cfg)
                    tps[name] = max(tps.get(name, 0.0), last["tokens_per_s"])
                    print(f"{preset:<8}{name:<14}{last['tokens_per_s']:>12,.0f}{1 / last['steps_per_s']:>9.2f}"
                          f"   (run {time.perf_counter() - t:.0f} s)", flush=True)
            print(f"{preset:<8}{'bucket/fixed':<14}{tps['batch+bucket'] / tps['fixed']:>11.2f}x")
            print(f"{preset:<8}{'corpus/bert':<14}{tps['corpus vocab'] / tps['batch+bucket']:>11.2f}x   "
                  "(the vocabulary alone, both bucketed, fp32)")
            print(f"{preset:<8}{'auto/fp32':<14}{tps['corpus+auto'] / tps['corpus vocab']:>11.2f}x   "
                  f"(--dtype auto: {'bf16' if cpu_has_bf16() else 'fp32'} on this CPU)")
            print(f"{preset:<8}{'new/before':<14}{tps['corpus+auto'] / tps['batch+bucket']:>11.2f}x   "
                  "(prepare + train now against the bucketed BERT-vocabulary fp32 trainer before them)")


if __name__ == "__main__":
    main()
