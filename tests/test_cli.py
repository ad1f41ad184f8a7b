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
