"""The `duilian` command: one subcommand per stage. Each subcommand lives in its own module under
duilian/cli/ with `register(parser)` (its flags) and `run(args) -> int` (the exit code); the work
itself is done by the library modules, so everything the CLI does is also a Python call.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module under duilian.cli, one-line help). The test suite checks this map is complete.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "read a couplet corpus, clean it and write a tokenized dataset"),
    "train": ("train", "train a GPT-2 on a prepared dataset (CPU, one GPU, or torchrun)"),
    "export": ("export", "write a training checkpoint as a HuggingFace model directory"),
    "convert": ("convert", "convert GPT-2 weights between UER-py and HuggingFace formats"),
    "generate": ("generate", "write 下联 for a 上联 (or a file of them)"),
    "acrostic": ("acrostic", "write a 嵌字 couplet holding two characters (藏头 by default)"),
    "compose": ("compose", "write whole couplets with 横批 about a few words, an occasion or a year"),
    "evaluate": ("evaluate", "score a model on a test split: BLEU, perplexity and form"),
    "serve": ("serve", "run the HTTP API and web page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duilian", description="Chinese couplets (对联) with GPT-2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Import lazily so `duilian generate` does not pay for the trainer's imports.
        p.set_defaults(_module=module)
        _module(module).register(p)
    return parser


def _module(name: str):
    return importlib.import_module(f"duilian.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(_module(args._module).run(args) or 0)

