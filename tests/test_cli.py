"""The subcommand map: every command is registered, importable, documented and reachable."""

import subprocess
import sys
from pathlib import Path

import pytest

from duilian.cli import COMMANDS, _module, build_parser, main

CLI_DIR = Path(__file__).parents[1] / "src" / "duilian" / "cli"


def test_every_cli_module_is_in_the_map_and_every_entry_has_a_module():
    modules = {p.stem for p in CLI_DIR.glob("*.py")} - {"__init__"}
    assert modules == {module for module, _ in COMMANDS.values()}
    for name, (module, help_text) in COMMANDS.items():
        m = _module(module)
        assert callable(m.register) and callable(m.run), name
        assert help_text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"duilian {name}" in capsys.readouterr().out


def test_top_level_help_lists_every_command():
    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text


def test_python_dash_m_duilian_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "duilian", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "prepare" in out.stdout and "serve" in out.stdout


# --- flags generated from a config dataclass (add_config_flags) -------------------------------------------------
def _config_commands():
    from duilian.evaluate import EvalConfig
    from duilian.serve import ServeConfig

    return {"serve": ServeConfig, "evaluate": EvalConfig}


@pytest.mark.parametrize("name", ["serve", "evaluate"])
def test_help_shows_every_config_field_with_its_true_default(name, capsys):
    """`duilian serve --help` and `duilian evaluate --help` are generated from their configs: every field's flag,
    its help text and its default as the dataclass holds it (argparse's %(default)r, never a copy in prose);
    device and quantize are --device and --int8 (add_model_options)."""
    import dataclasses

    config = _config_commands()[name]
    with pytest.raises(SystemExit):
        main([name, "--help"])
    squeeze = lambda s: "".join(s.split())  # noqa: E731  (argparse wraps lines, at spaces and after hyphens)
    text = squeeze(capsys.readouterr().out)
    for f in dataclasses.fields(config):
        if f.name in ("device", "quantize"):
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert squeeze(f"{flag} ") in text and squeeze(f"{f.metadata['help']} (default: {f.default!r})") in text, flag
    assert squeeze(f"(default: {config().device!r})") in text and "--int8" in text
    if name == "evaluate":
        assert "--method{beam,sample,greedy}" in text and "--first{sample,greedy,beam}" in text


def test_serve_flags_make_the_config():
    from duilian.cli.serve import server_config
    from duilian.serve import ServeConfig

    def config(*flags):
        return server_config(build_parser("serve").parse_args(["serve", *flags]))

    assert config() == ServeConfig()
    assert config("--max-batch", "4", "--trusted-proxy", "10.0.0.1", "--timeout-s", "3") == ServeConfig(
        max_batch=4, trusted_proxies=("10.0.0.1",), request_timeout_s=3.0)
    assert config("--trusted-proxy", "10.0.0.1", "--trusted-proxy", "fd00::/64", "--max-queue", "9", "--int8",
                  "--device", "cpu") == ServeConfig(trusted_proxies=("10.0.0.1", "fd00::/64"), max_queue=9,
                                                    quantize="int8")
    assert config() == ServeConfig()  # the repeated flag left the default alone


def test_evaluate_flags_make_the_config(monkeypatch):
    from duilian.cli import evaluate as evaluate_cli
    from duilian.evaluate import EvalConfig

    seen = []

    def stand_in(model, test, config, progress):
        seen.append(config)
        raise ValueError("stop here")  # run's error path: exit code 2, nothing written

    monkeypatch.setattr("duilian.evaluate.evaluate", stand_in)
    parser = build_parser("evaluate")
    assert evaluate_cli.run(parser.parse_args(["evaluate", "--test", "t", "--out", "o"])) == 2
    args = parser.parse_args(["evaluate", "--test", "t", "--out", "o", "--n", "3", "--limit", "5", "--method", "sample",
                              "--first", "beam", "--batch-size", "8", "--lm-weight", "0.5", "--allow-upper-chars",
                              "--int8"])
    assert evaluate_cli.run(args) == 2
    assert seen == [EvalConfig(), EvalConfig(n=3, limit=5, method="sample", first="beam", batch_size=8, lm_weight=0.5,
                                             allow_upper_chars=True, quantize="int8")]


@pytest.mark.parametrize("argv, message", [
    (["serve", "--max-batch", "x"], "--max-batch: invalid int value: 'x'"),
    (["serve", "--timeout-s", "soon"], "--timeout-s: invalid float value: 'soon'"),
    (["evaluate", "--test", "t", "--method", "nucleus"], "--method: invalid choice: 'nucleus'"),
    (["evaluate", "--test", "t", "--limit", "all"], "--limit: invalid int value: 'all'"),
])
def test_a_bad_flag_value_is_a_clear_error_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_value_the_config_refuses_is_a_clear_error_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--test", str(tmp_path), "--n", "0"]) == 2
    assert capsys.readouterr().err == "duilian evaluate: n must be at least 1, not 0\n"
    assert main(["serve", "--timeout-s", "0"]) == 2
    assert capsys.readouterr().err == "duilian serve: request_timeout_s must be > 0, got 0.0\n"


def test_add_config_flags_names_types_repeats_and_skips():
    """The generic parts: metadata["flag"], `X | None`, `tuple[X, ...]` (one X per use, the default untouched), and
    fields skipped for config_from_args to take from elsewhere."""
    import argparse
    import dataclasses

    from duilian.cli import add_config_flags, config_from_args
    from duilian.knobs import knob

    @dataclasses.dataclass
    class Config:
        limit: int | None = knob("at most this many", None)
        names: tuple[str, ...] = knob("a name; repeat for several", (), flag="--name", metavar="NAME")
        device: str = knob("set by another flag", "cpu")

    p = argparse.ArgumentParser()
    add_config_flags(p, Config, skip=("device",))
    assert {a.dest for a in p._actions} == {"help", "limit", "names"}
    assert config_from_args(Config, p.parse_args([]), device="cuda") == Config(device="cuda")
    args = p.parse_args(["--limit", "3", "--name", "a", "--name", "b"])
    assert config_from_args(Config, args, device="cpu") == Config(limit=3, names=("a", "b"))
    assert p.parse_args([]).names == () and "(default: ())" in p.format_help()
