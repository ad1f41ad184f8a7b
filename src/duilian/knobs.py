"""`knob`: a config dataclass field that carries its command-line help, so that a command's flags can be generated
from the dataclass (duilian.cli.add_config_flags) and cannot drift from it. Light on purpose (no torch): the
library's configs (train.TrainConfig, serve.ServeConfig, evaluate.EvalConfig) import it."""

from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Literal, get_args, get_type_hints


def knob(help: str, default=MISSING, group: str | None = None, metavar: str | None = None,
         flag: str | None = None):
    """A config field with its help text (the flag's, in `duilian <command> --help`, which adds the default), the
    flag group it starts (the fields after it belong to it too), its metavar, and its flag's name where that is not
    --field-name (a name users already know)."""
    meta = {"help": help} | ({"group": group} if group else {}) | ({"metavar": metavar} if metavar else {})
    return field(default=default, metadata=meta | ({"flag": flag} if flag else {}))


def check_literals(config) -> None:
    """ValueError naming the field when a Literal-typed field of the dataclass `config` holds another value (the
    flags' choices come from the same types, so Python callers get the same check)."""
    hints = get_type_hints(type(config))
    for f in fields(config):
        if getattr(hints[f.name], "__origin__", None) is Literal:
            choices, value = get_args(hints[f.name]), getattr(config, f.name)
            if value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
