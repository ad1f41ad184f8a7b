"""Training throughput on CPU: real (non-pad) tokens per second, per preset, in the same process:

    fixed          the seed's way: every row padded to 64 tokens, the 21,128-token BERT vocabulary
    batch+bucket   rows of similar length together, padded to the batch's longest (BERT vocabulary)
    corpus vocab   batch+bucket with the corpus's own vocabulary and the trained [UNK] (--unk-frac 0.005)
    corpus+auto    the same with --dtype auto (bf16 autocast where the CPU has native bf16 matmuls, else fp32):
                   what `duilian prepare` + `duilian train --bucket` do now
The first three run in fp32, so each ratio isolates one change.

With --baseline-rev REV, every mode also runs on the trainer of revision REV, imported beside this one in the same
process (its src/duilian extracted with `git archive`, as the package `duilian_baseline`), the two taking turns:
the ratio now/REV per mode is this trainer's speed against that one's on the same data, machine and minute.

    python benchmarks/bench_train.py                   # tiny and mini, 12 steps of 64 lines each
    python benchmarks/bench_train.py --presets mini --steps 20 --pairs 50000 --rounds 2
    python benchmarks/bench_train.py --presets mini --steps 20 --rounds 3 --baseline-rev d27acda

Lines come from the start of the shared training corpus (../shared/data/couplet/train) if it is
there, else from the test fixture. Each run's first half is warm-up; tokens/s is the second half's, the
best of --rounds runs (the modes take turns, so a busy spell on a shared machine hits them alike).
The ratios are the figures to quote: absolute numbers depend on the (shared) machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import lzma
import sys
import tempfile
import time
from pathlib import Path

from revision import export_revision  # benchmarks/revision.py (scripts run from benchmarks/)

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


def baseline_trainer(rev: str, into: Path):
    """duilian.train as it was at revision `rev`: its src/duilian extracted into `into` and imported as the package
    duilian_baseline (its modules import one another relatively, so they find their own)."""
    package = export_revision(rev, into, "src/duilian") / "duilian"
    spec = importlib.util.spec_from_file_location("duilian_baseline", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    sys.modules["duilian_baseline"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["duilian_baseline"])
    return importlib.import_module("duilian_baseline.train")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "mini"])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    ap.add_argument("--batch-size", type=int, default=64, help="lines per step (default 64, the seed's)")
    ap.add_argument("--pairs", type=int, default=20_000, help="corpus lines to read (default 20000)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per mode, taking turns; the best counts (default 1)")
    ap.add_argument("--baseline-rev", help="also run every mode on the trainer of this git revision, in turn")
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
        trainers = {"now": (TrainConfig, train)}
        if args.baseline_rev:
            before = baseline_trainer(args.baseline_rev, Path(tmp))
            trainers[args.baseline_rev] = (before.TrainConfig, before.train)
        data = {"bert": Path(tmp) / "data-bert", "corpus": Path(tmp) / "data-corpus"}
        write_dataset(data["bert"], {"train": pairs}, default_tokenizer(), seq_len=64)
        write_dataset(data["corpus"], {"train": pairs}, corpus_vocab, seq_len=64, unknown_as_unk=True)
        print(f"vocabularies: BERT {len(default_tokenizer()):,} tokens, corpus {len(corpus_vocab):,}")
        print(f"{'preset':<8}{'mode':<14}{'trainer':<10}{'real tok/s':>12}{'s/step':>9}")
        for preset in args.presets:
            tps: dict[tuple[str, str], float] = {}
            for r in range(args.rounds):
                for name, (vocab, kw) in modes.items():
                    for who, (config, run) in trainers.items():
                        cfg = config(data=str(data[vocab]), out=f"{tmp}/{preset}-{name}-{who}-{r}", preset=preset,
                                     steps=args.steps, batch_size=args.batch_size, report_every=args.steps // 2,
                                     eval_every=0, save_every=10**9, device="cpu", **kw)
                        t = time.perf_counter()
                        last = run(cfg)
                        tps[name, who] = max(tps.get((name, who), 0.0), last["tokens_per_s"])
                        print(f"{preset:<8}{name:<14}{who:<10}{last['tokens_per_s']:>12,.0f}"
                              f"{1 / last['steps_per_s']:>9.2f}   (run {time.perf_counter() - t:.0f} s)", flush=True)
            now = {name: tps[name, "now"] for name in modes}
            print(f"{preset:<8}{'bucket/fixed':<14}{now['batch+bucket'] / now['fixed']:>11.2f}x")
            print(f"{preset:<8}{'corpus/bert':<14}{now['corpus vocab'] / now['batch+bucket']:>11.2f}x   "
                  "(the vocabulary alone, both bucketed, fp32)")
            print(f"{preset:<8}{'auto/fp32':<14}{now['corpus+auto'] / now['corpus vocab']:>11.2f}x   "
                  f"(--dtype auto: {'bf16' if cpu_has_bf16() else 'fp32'} on this CPU)")
            print(f"{preset:<8}{'new/before':<14}{now['corpus+auto'] / now['batch+bucket']:>11.2f}x   "
                  "(prepare + train now against the bucketed BERT-vocabulary fp32 trainer before them)")
            for name in modes if args.baseline_rev else ():
                print(f"{preset:<8}{name:<14}{now[name] / tps[name, args.baseline_rev]:>11.2f}x   "
                      f"(this trainer against {args.baseline_rev}'s, same mode, in turn)")

if __name__ == "__main__":
    main()
