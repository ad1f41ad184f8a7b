"""`duilian train`: flags -> duilian.train.TrainConfig -> duilian.train.train.

The flags are generated from TrainConfig (cli.add_config_flags): one per field, dashes for underscores, the help
text from the field's metadata, choices from its Literal type, and the default as argparse shows it, so the help
cannot drift from the config. The defaults are the seed's (uer/gpt2-chinese-couplet) settings. The same command
runs on a CPU, on one GPU and under `torchrun --nproc_per_node N -m duilian.cli.train ...`.
"""

from __future__ import annotations

import argparse

from . import add_config_flags, config_from_args


def register(p: argparse.ArgumentParser) -> None:
    from ..train import TrainConfig

    add_config_flags(p, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train

    train(config_from_args(TrainConfig, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m duilian.cli.train ...`: the same command without the other subcommands' imports
    (handy as torchrun's target: `torchrun --nproc_per_node 8 -m duilian.cli.train --data ...`)."""
    parser = argparse.ArgumentParser(prog="duilian train", description=__doc__.splitlines()[0])
    register(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
