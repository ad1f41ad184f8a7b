"""The `duilian` command: one subcommand per stage. Each subcommand lives in its own module under
duilian/cli/ with `register(parser)` (its flags) and `run(args) -> int` (the exit code); the work
itself is done by the library modules, so everything the CLI does is also a Python call.

A command whose flags mirror a config dataclass generates them from it (`add_config_flags`): the help text is in
each field's metadata, so the flags and the config cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from collections.abc import Collection

# name -> (module under duilian.cli, one-line help). The test suite checks this map is complete.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "read a couplet corpus, clean it and write a tokenized dataset"),
    "train": ("train", "train a GPT-2 on a prepared dataset (CPU, one GPU, or torchrun)"),
    "export": ("export", "write a training checkpoint as a HuggingFace model directory"),
    "calibrate": ("calibrate", "measure the characters a model over-writes and store their penalties with it"),
    "pairs": ("pairs", "count the character pairs people put against each other and store the table with a model"),
    "convert": ("convert", "convert GPT-2 weights between UER-py and HuggingFace formats"),
    "generate": ("generate", "write 下联 for a 上联 (or a file of them)"),
    "acrostic": ("acrostic", "write a 嵌字 couplet holding two characters (藏头 by default)"),
    "compose": ("compose", "write whole couplets with 横批 about a few words, an occasion or a year"),
    "evaluate": ("evaluate", "score a model on a test split: BLEU, perplexity and form"),
    "serve": ("serve", "run the HTTP API and web page"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, with the flags of `command` only (None: of all of them), so that `duilian
    generate` imports neither the trainer nor the other commands' modules to read its own flags."""
    parser = argparse.ArgumentParser(prog="duilian", description="Chinese couplets (对联) with GPT-2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if command in (None, name):  # import lazily: `duilian generate` does not pay for the trainer's imports
            _module(module).register(p)
    return parser


def _module(name: str):
    return importlib.import_module(f"duilian.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level has no option but --help
    args = build_parser(command).parse_args(argv)
    return int(_module(args._module).run(args) or 0)


def add_config_flags(parser: argparse.ArgumentParser, config: type, skip: Collection[str] = ()) -> None:
    """One flag per field of the dataclass `config`: --name-with-dashes (or metadata["flag"], a name users already
    know), its type from the annotation (a Literal's values become the choices, a bool that is off by default is a
    bare --flag, `X | None` takes an X, `tuple[X, ...]` is a flag given once per X), required where the field has no
    default, the help text from field.metadata["help"] with the default appended by argparse (%(default)r: the true
    value, never a copy), the metavar from metadata["metavar"], and a group from metadata["group"], which the fields
    after it share. The fields in `skip` get no flag: the command sets them from other options (config_from_args)."""
    hints = typing.get_type_hints(config)
    group: argparse._ActionsContainer = parser
    for f in dataclasses.fields(config):
        meta, kind = f.metadata, hints[f.name]
        if "group" in meta:
            group = parser.add_argument_group(meta["group"])
        if f.name in skip:
            continue
        kw: dict = {"help": meta["help"], "dest": f.name}
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            kw["help"] += " (default: %(default)r)"
        kw |= _flag_type(kind, f.default)
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        group.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kw)


def _flag_type(kind, default) -> dict:
    """add_argument's keywords for a field annotated `kind`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return {"choices": args}
    if kind is bool:  # --flag for what is off by default (Python 3.10's --no-flag would add its own default)
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:  # X | None
        return {"type": next(a for a in args if a is not type(None))}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: repeat the flag
        return {"type": args[0], "action": _AppendToTuple}
    return {"type": kind}


class _AppendToTuple(argparse.Action):
    """Each use of the flag adds its value to the tuple (argparse's "append" would append to the default itself)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest, None) or ()), values))


def config_from_args(config: type, args: argparse.Namespace, **given):
    """The `config` dataclass that flags from add_config_flags ask for; `given` holds the fields they skipped."""
    return config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config) if f.name not in given}, **given)
