"""`duilian train`: flags -> duilian.train.TrainConfig -> duilian.train.train.

One flag per TrainConfig field (dashes for underscores). Flags left out keep TrainConfig's defaults,
which are the seed's (uer/gpt2-chinese-couplet) settings. The same command runs on a CPU, on one GPU
and under `torchrun --nproc_per_node N -m duilian.cli.train ...`.
"""

from __future__ import annotations

import argparse

S = argparse.SUPPRESS  # an absent flag keeps the TrainConfig default (stated in each help text)


def register(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and output")
    g.add_argument("--data", required=True, metavar="DIR", help="dataset directory written by `duilian prepare`")
    g.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory: checkpoints/, metrics.jsonl, loss.png, final.pt")

    g = p.add_argument_group("model")
    g.add_argument("--preset", default=S,
                   help="model shape: tiny, mini, small or base (default base, the seed's GPT-2, or the --init-from model's)")
    g.add_argument("--init-from", default=S, metavar="MODEL_DIR",
                   help="start from a HuggingFace GPT-2 directory's weights (a duilian export, the default model, the "
                        "seed's converted model); embedding rows matched by token; fresh optimizer and schedule")
    g.add_argument("--dropout", type=float, default=S, help="dropout probability (default 0.1)")
    g.add_argument("--seed", type=int, default=S, help="seeds init, data order and dropout (default 7)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=S, help="optimizer steps (default 25000)")
    g.add_argument("--batch-size", type=int, default=S, help="lines per micro-batch per process (default 64)")
    g.add_argument("--grad-accum", type=int, default=S, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate (default 5e-4)")
    g.add_argument("--warmup", type=float, default=S,
                   help="fraction of steps of linear warm-up, then linear decay to 0 (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay on matrices (default 0.01)")
    g.add_argument("--grad-clip", type=float, default=S, help="max global gradient norm, 0 = off (default 1.0)")

    g = p.add_argument_group("batches")
    g.add_argument("--seq-len", type=int, default=S, help="longest line in tokens; --pad fixed pads to it (default 64)")
    g.add_argument("--pad", choices=("fixed", "batch"), default=S,
                   help="fixed: every row padded to --seq-len like the seed; batch: to the batch's longest (default batch)")
    g.add_argument("--pad-multiple", type=int, default=S,
                   help="with --pad batch, round the padded length up to a multiple of this (default 8)")
    g.add_argument("--bucket", action="store_true", default=S,
                   help="put lines of similar length in the same batch (less padding; default off)")
    g.add_argument("--bucket-chunk", type=int, default=S, help="global batches per length-sorting chunk (default 64)")
    g.add_argument("--v5-prompt-frac", type=float, default=S,
                   help="fraction of lines shown as [CLS][CLS]上联-[SEP]下联[SEP], transformers 5's prompt "
                        "form, with no loss on the inserted tokens (default 0.05)")
    g.add_argument("--unk-frac", type=float, default=S,
                   help="share of 上联 characters shown as [UNK], with no loss on predicting [UNK], so the model "
                        "answers 上联 with characters it does not know (default 0.005)")

    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval-every", type=int, default=S, help="steps between validation passes, 0 = only at the end (default 1000)")
    g.add_argument("--eval-batches", type=int, default=S, help="validation micro-batches per process (default 20)")
    g.add_argument("--report-every", type=int, default=S, help="steps between loss reports (default 1000)")
    g.add_argument("--save-every", type=int, default=S, help="steps between checkpoints (default 5000)")
    g.add_argument("--keep-checkpoints", type=int, default=S, help="keep the N newest checkpoints, 0 = all (default 0)")
    g.add_argument("--max-minutes", type=float, default=S,
                   help="wall-clock budget in minutes: stop cleanly and save when spent, 0 = none (default 0)")
    g.add_argument("--resume", action="store_true", default=S,
                   help="continue from the newest checkpoint in --out (same data order, optimizer, RNG)")

    g = p.add_argument_group("hardware")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=S, help="default auto (CUDA when present)")
    g.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default=S,
                   help="autocast dtype; auto = bf16 where matmuls run natively in it (CUDA, CPUs with AVX-512 BF16 "
                        "or AMX), else fp32 (default auto)")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the transformer body")
    g.add_argument("--peak-flops", type=float, default=S,
                   help="peak bf16 FLOP/s of one GPU, for MFU (default 989e12, H100/H200 SXM dense)")

    g = p.add_argument_group("testing aid")
    g.add_argument("--fault-at-step", type=int, default=S,
                   help="SIGKILL this process right after step N, to test --resume (default 0 = never)")


def run(args: argparse.Namespace) -> int:
    from duilian.train import TrainConfig, config_fields, train

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in config_fields()})
    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m duilian.cli.train ...`: the same command without the other subcommands' imports
    (handy as torchrun's target: `torchrun --nproc_per_node 8 -m duilian.cli.train --data ...`)."""
    parser = argparse.ArgumentParser(prog="duilian train", description=__doc__.splitlines()[0])
    register(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
