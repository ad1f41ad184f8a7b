"""`duilian serve`: the HTTP API and web page (duilian.serve) on uvicorn.

The flags are generated from serve.ServeConfig (cli.add_config_flags): the help text is in each field's metadata and
argparse shows the field's default. --model, --device and --int8 are generate's (add_model_options)."""

from __future__ import annotations

import argparse

from . import add_config_flags, config_from_args
from .generate import add_model_options, model_kwargs

SET_BY_MODEL_OPTIONS = ("device", "quantize")  # ServeConfig's fields that --device and --int8 set


def register(parser: argparse.ArgumentParser) -> None:
    from ..serve import ServeConfig

    add_config_flags(parser, ServeConfig, skip=SET_BY_MODEL_OPTIONS)  # --host and --port first, then groups
    add_model_options(parser)  # which model: --model, --device, --int8


def server_config(args: argparse.Namespace):
    """The serve.ServeConfig the flags ask for (ValueError for values it refuses)."""
    from ..serve import ServeConfig

    return config_from_args(ServeConfig, args, **model_kwargs(args))


def run(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from ..serve import create_app, uvicorn_config

    try:
        config = server_config(args)
        app = create_app(args.model, config)
    except (ValueError, FileNotFoundError) as exc:  # bad flag values, no such model, no default model yet
        print(f"duilian serve: {exc}", file=sys.stderr)
        return 2
    print(f"duilian: serving on http://{config.host}:{config.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.Server(uvicorn_config(app)).run()  # exits with status 3 itself if it cannot start (port taken)
    return 0
